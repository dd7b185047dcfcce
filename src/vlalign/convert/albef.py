"""Convert official ALBEF checkpoints (salesforce/ALBEF) into vlalign folders that the Auto classes load.

Reads the official container (`{"model": state_dict, ...}` for pretraining, a flat state dict for the fine-tuned
retrieval files, which also lack the momentum encoders and queues: ALBEF#7, #23, #79) with
`torch.load(weights_only=True)`, the official YAML config and BERT json, and a WordPiece vocabulary. It renames keys
to vlalign's layout, splits the ViT's fused qkv, interpolates position embeddings when the target resolution differs,
and writes safetensors + config + processor (+ the remote code).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml

from ..auto import model_family
from ..files import normalize_permissions
from ..models import AlbefConfig, AlbefPreTrainedModel, AlbefTokenizer
from ..models.modeling_albef import interpolate_pos_embed
from ..recipes.albef import albef_processor
from ..sources import SourceError, check_vocabulary, resolve_pretrained

logger = logging.getLogger(__name__)

#: the ViT shape the official code hard-codes; fixture YAMLs override it with vision_width/depth/heads
OFFICIAL_VISION = {"vision_width": 768, "vision_depth": 12, "vision_heads": 12}

_VIT_RENAMES = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.self_attn.out_proj."),
    (r"^blocks\.(\d+)\.mlp\.", r"layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]

_BERT_LAYER_RENAMES = [
    (r"^attention\.self\.", "self_attn."),
    (r"^attention\.output\.dense\.", "self_attn.out_proj."),
    (r"^attention\.output\.LayerNorm\.", "self_attn_layer_norm."),
    (r"^crossattention\.self\.", "cross_attn."),
    (r"^crossattention\.output\.dense\.", "cross_attn.out_proj."),
    (r"^crossattention\.output\.LayerNorm\.", "cross_attn_layer_norm."),
    (r"^intermediate\.dense\.", "mlp.fc1."),
    (r"^output\.dense\.", "mlp.fc2."),
    (r"^output\.LayerNorm\.", "output_layer_norm."),
]

_MLM_HEAD_RENAMES = [
    (r"^predictions\.transform\.dense\.", "dense."),
    (r"^predictions\.transform\.LayerNorm\.", "layer_norm."),
    (r"^predictions\.bias$", "bias"),
]


#: BERT json settings that carry over into the text config
BERT_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "fusion_layer",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
    "initializer_range",
)


class CheckpointError(ValueError):
    """The checkpoint file cannot be read as, or does not fit, an ALBEF checkpoint."""


def _rename(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        if re.search(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely (`weights_only=True`) and return its model state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}). Pass the "
            ".pth file released with ALBEF; checkpoints that pickle objects beyond tensors and plain containers "
            "are refused for safety."
        ) from error
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (neither at the top level nor under 'model').")
    return {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}


def build_config(
    yaml_config: dict,
    bert_config: dict,
    tokenizer: AlbefTokenizer | None = None,
    image_size: int | None = None,
    config_class: type[AlbefConfig] = AlbefConfig,
) -> AlbefConfig:
    """Translate the official YAML + BERT json into an `AlbefConfig` (or the config of a family built on ALBEF)."""
    vision = {key: yaml_config.get(key, default) for key, default in OFFICIAL_VISION.items()}
    text_config = {key: bert_config[key] for key in BERT_CONFIG_KEYS if key in bert_config}
    if tokenizer is not None:
        text_config.update(
            cls_token_id=tokenizer.cls_token_id,
            mask_token_id=tokenizer.mask_token_id,
            sep_token_id=tokenizer.sep_token_id,
        )
    optional = {
        key: yaml_config[key]
        for key in ("embed_dim", "temp", "queue_size", "momentum", "alpha", "mlm_probability", "k_test", "distill")
        if key in yaml_config
    }
    return config_class(
        vision_config={
            "hidden_size": vision["vision_width"],
            "num_hidden_layers": vision["vision_depth"],
            "num_attention_heads": vision["vision_heads"],
            "intermediate_size": 4 * vision["vision_width"],
            "image_size": image_size or yaml_config.get("image_res", 256),
        },
        text_config=text_config,
        **optional,
    )


def check_image_size(vision_config, flag: str = "image_size") -> None:
    """Refuse a resolution the patch size does not divide: the patch embedding would silently drop the remainder."""
    size, patch = vision_config.image_size, vision_config.patch_size
    if size % patch:
        raise ValueError(
            f"{flag} {size} is not a multiple of the patch size {patch}; the last {size % patch} pixel rows and columns "
            f"would be ignored. Use e.g. {size - size % patch} or {size - size % patch + patch}."
        )


def convert_state_dict(
    original: dict[str, torch.Tensor], config: AlbefConfig, with_mlm_head: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map official keys to vlalign's and return (state dict, dropped keys).

    Online weights go under `albef.`; momentum copies keep their `_m` modules; the qkv of each ViT block is split
    into query/key/value; BERT layers below `fusion_layer` go to the text model, the rest to the fusion model; the
    tied MLM decoder is dropped after checking it equals the word embeddings. `bert.` is optional (fine-tuned
    checkpoints store `text_encoder.X` directly).
    """
    fusion_layer = config.text_config.fusion_layer
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in original.items():
        new_keys = _convert_key(key, tensor, fusion_layer, with_mlm_head)
        if new_keys is None:
            dropped.append(key)
        converted.update(new_keys or {})
    for suffix in ("", "_m"):
        decoder = original.get(f"text_encoder{suffix}.cls.predictions.decoder.weight")
        embeddings = original.get(f"text_encoder{suffix}.bert.embeddings.word_embeddings.weight")
        if decoder is not None and embeddings is not None and not torch.equal(decoder, embeddings):
            raise CheckpointError(
                f"text_encoder{suffix}.cls.predictions.decoder.weight differs from the word embeddings; ALBEF ties "
                "them, so this checkpoint is not an ALBEF pretraining checkpoint."
            )
    return converted, dropped


def _convert_task_encoder_key(key: str, tensor: torch.Tensor, fusion_layer: int) -> dict[str, torch.Tensor] | None:
    """An official fine-tuned task checkpoint's encoder key (`visual_encoder*`, `text_encoder*`, online or momentum)
    under vlalign's task-model names: the pretraining model's, without the online model's prefix; None to drop it."""
    new_keys = _convert_key(key, tensor, fusion_layer, with_mlm_head=False)
    return {k.removeprefix("albef."): v for k, v in (new_keys or {}).items()} or None


def _convert_key(
    key: str, tensor: torch.Tensor, fusion_layer: int, with_mlm_head: bool
) -> dict[str, torch.Tensor] | None:
    """The vlalign key(s) for one official key, or None for a key that has no place in the target model."""
    if key in ("image_queue", "text_queue", "queue_ptr", "idx_queue"):
        return {key: tensor}
    if key == "temp":
        return {"albef.temp": tensor}
    match = re.match(r"^(vision_proj|text_proj|itm_head)(_m)?\.(.+)$", key)
    if match:
        name, momentum, rest = match.groups()
        if name == "itm_head" and momentum:
            return None
        return {f"{name}_m.{rest}" if momentum else f"albef.{name}.{rest}": tensor}
    match = re.match(r"^visual_encoder(_m)?\.(.+)$", key)
    if match:
        prefix = "vision_model_m." if match.group(1) else "albef.vision_model."
        return _convert_vit_key(match.group(2), tensor, prefix)
    match = re.match(r"^text_encoder(_m)?\.(?:bert\.)?(.+)$", key)
    if match:
        momentum = match.group(1) or ""
        return _convert_bert_key(match.group(2), tensor, momentum, fusion_layer, with_mlm_head)
    return None


def _convert_vit_key(key: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor] | None:
    match = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
    if match:
        layer, kind = match.groups()
        query, key_, value = tensor.chunk(3, dim=0)
        base = f"{prefix}layers.{layer}.self_attn."
        return {f"{base}query.{kind}": query, f"{base}key.{kind}": key_, f"{base}value.{kind}": value}
    renamed = _rename(key, _VIT_RENAMES)
    return None if renamed is None else {prefix + renamed: tensor}


def _convert_bert_key(
    key: str, tensor: torch.Tensor, momentum: str, fusion_layer: int, with_mlm_head: bool
) -> dict[str, torch.Tensor] | None:
    online = not momentum
    if key.startswith("cls."):
        renamed = _rename(key[len("cls.") :], _MLM_HEAD_RENAMES)
        if renamed is None or not with_mlm_head:  # decoder.weight/bias: the tied copies of embeddings and bias
            return None
        return {f"mlm_head{momentum}.{renamed}": tensor}
    if key.startswith("embeddings."):
        if key == "embeddings.position_ids":
            return None
        name = key[len("embeddings.") :].replace("LayerNorm.", "layer_norm.")
        prefix = "albef.text_model." if online else "text_model_m."
        return {f"{prefix}embeddings.{name}": tensor}
    match = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key)
    if match is None:
        return None
    layer, rest = int(match.group(1)), match.group(2)
    renamed = _rename(rest, _BERT_LAYER_RENAMES)
    if renamed is None:
        return None
    if layer < fusion_layer:
        prefix = "albef.text_model." if online else "text_model_m."
    else:
        prefix, layer = ("albef.fusion_model." if online else "fusion_model_m."), layer - fusion_layer
    return {f"{prefix}layers.{layer}.{renamed}": tensor}


def _fit_position_embeddings(state_dict: dict[str, torch.Tensor], num_patches: int) -> None:
    """Interpolate every ViT position table (online and momentum) to the target grid, as Retrieval.py does."""
    for key in [k for k in state_dict if k.endswith("embeddings.position_embeddings") and "vision" in k]:
        if state_dict[key].shape[1] != num_patches + 1:
            logger.info("Interpolating %s from %d to %d positions", key, state_dict[key].shape[1], num_patches + 1)
            state_dict[key] = interpolate_pos_embed(state_dict[key], num_patches)


def _check_fit(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], allowed_missing: list[str]) -> None:
    """Refuse a checkpoint that does not fit the config, naming the first offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not any(re.search(p, k) for p in allowed_missing)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {', '.join(mismatched[:3])})")
    if problems:
        raise CheckpointError(
            "The checkpoint does not fit the config: "
            + "; ".join(problems)
            + ". Check that --config gives the YAML and BERT json the checkpoint was trained with."
        )


def load_tokenizer(
    tokenizer: str | Path | None, search_dirs: Iterable[Path], tokenizer_class: type[AlbefTokenizer] = AlbefTokenizer
) -> AlbefTokenizer:
    """An `AlbefTokenizer` (or `tokenizer_class`) from a folder/Hub id, else from a `vocab.txt` beside the inputs,
    else bert-base-uncased."""
    flag = "--tokenizer"
    if tokenizer is None:
        for directory in search_dirs:
            if (directory / "vocab.txt").is_file():
                tokenizer = directory
                break
        else:
            tokenizer, flag = (
                "bert-base-uncased",
                "the default tokenizer (no vocab.txt beside the checkpoint or configs)",
            )
    return load_pretrained_tokenizer(tokenizer_class, tokenizer, flag)


def load_pretrained_tokenizer(tokenizer_class: type, name: str | Path, flag: str = "--tokenizer"):
    """`tokenizer_class.from_pretrained(name)` that fails fast and clearly: `name` must be a folder holding a vocab
    file, a cached Hub id, or a Hub id while the Hub is reachable, and the loaded vocabulary must have words."""
    source = resolve_pretrained(name, flag)
    files = tuple(tokenizer_class.vocab_files_names.values())
    if Path(source).is_dir() and not any((Path(source) / file).is_file() for file in files):
        raise SourceError(
            f"{flag} {name} holds no vocabulary file ({' or '.join(files)}); pass the folder of the tokenizer the "
            "checkpoint was trained with (e.g. a saved bert-base-uncased)."
        )
    loaded = tokenizer_class.from_pretrained(source)
    check_vocabulary(loaded, f"{flag} {name}")
    return loaded


def convert_albef_checkpoint(
    checkpoint: str | Path,
    config_files: list[str | Path],
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    task: str = "auto",
    image_size: int | None = None,
    target: str = "albef",
    new_modules: Iterable[str] = (),
) -> AlbefPreTrainedModel:
    """Convert an official ALBEF checkpoint and save it (weights, config, processor, remote code) to `output_dir`.

    Args:
        checkpoint: the official `.pth` file.
        config_files: the official YAML (e.g. `Pretrain.yaml`, `Retrieval_coco.yaml`) and BERT json
            (`config_bert.json`); the json may be omitted when the YAML's `bert_config` path resolves.
        output_dir: where to write the converted folder.
        tokenizer: a folder with `vocab.txt`/tokenizer files or a Hub id; default: a `vocab.txt` beside the
            checkpoint or configs, else `bert-base-uncased`.
        task: `"pretraining"`, `"retrieval"`, `"vqa"` (a VQA model: initialised from a pretraining checkpoint as the
            official VQA script does, or a fine-tuned VQA checkpoint; see `convert.albef_vqa`), `"ve"` (a visual
            entailment model, from a pretraining or fine-tuned VE checkpoint; see `convert.ve`), or `"auto"` (VQA for
            a checkpoint with an answer decoder, VE for one with `cls_head`, else retrieval when the YAML has `k_test`,
            else pretraining).
        image_size: target resolution; default the YAML's `image_res`. Position embeddings are interpolated.
        target: the registered method to convert into: `"albef"`, or a family with ALBEF's weight layout plus its
            own modules (`"codis"`), which keep their fresh initialisation.
        new_modules: regular expressions matching the target's weight names that ALBEF checkpoints lack.
    """
    if task not in ("auto", "pretraining", "retrieval", "vqa", "ve", "nlvr2", "text-assignment"):
        raise ValueError(
            f"Unknown task {task!r}; choose 'pretraining', 'retrieval', 'vqa', 've', 'nlvr2', 'text-assignment' or "
            "'auto'."
        )
    family = model_family(target)
    yaml_config, bert_config, config_dirs = _read_configs(config_files)
    original = load_original_checkpoint(checkpoint)
    processor_tokenizer = load_tokenizer(tokenizer, [Path(checkpoint).parent, *config_dirs], family.tokenizer_class)
    config = build_config(yaml_config, bert_config, processor_tokenizer, image_size, family.config_class)
    check_image_size(config.vision_config, "--image-size" if image_size else "image_res")
    processor = albef_processor(
        processor_tokenizer, config.vision_config.image_size, family.processor_class, family.image_processor_class
    )
    from .nlvr import convert_to_two_image_task, two_image_task

    # NLVR2 or its text-assignment pretraining (checked before VE: NLVR checkpoints have cls_head too)
    two_image = two_image_task(original, task, bert_config.get("num_hidden_layers"))
    if two_image is not None:
        reasoning, assignment = family.visual_reasoning_class, family.text_assignment_class
        model = convert_to_two_image_task(original, config, two_image, reasoning, assignment)
        save_converted(model, processor, output_dir)
        return model
    if task == "vqa" or (task == "auto" and any(key.startswith("text_decoder.") for key in original)):
        from .albef_vqa import convert_to_vqa

        model = convert_to_vqa(original, config, family.question_answering_class, new_modules)
        save_converted(model, processor, output_dir)
        return model
    if task == "ve" or (task == "auto" and any(key.startswith("cls_head.") for key in original)):
        from .ve import convert_to_ve

        model = convert_to_ve(original, config, family.visual_entailment_class, yaml_config, tuple(new_modules))
        save_converted(model, processor, output_dir)
        return model
    if task == "auto":
        task = "retrieval" if "k_test" in yaml_config else "pretraining"
    model_class = family.pretraining_class if task == "pretraining" else family.retrieval_class

    state_dict, dropped = convert_state_dict(original, config, with_mlm_head=task == "pretraining")
    unknown = [k for k in dropped if not re.search(r"(cls\.predictions\.|position_ids$|itm_head_m)", k)]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not ALBEF keys (first: {', '.join(unknown[:5])}). Is this an ALBEF "
            "checkpoint? NLVR checkpoints convert with --task nlvr2."
        )
    # Fine-tuned checkpoints have neither momentum encoders nor queues: the momentum encoders start as copies of the
    # online ones (as the official code's copy_params) and the queues keep their random unit-vector init. A family
    # built on ALBEF keeps its own modules as initialised.
    has_momentum = any("_m." in key for key in state_dict)
    allowed_missing = [r"_queue$", r"^queue_ptr$", *new_modules, *([] if has_momentum else [r"_m\."])]
    model = load_converted_weights(model_class, config, state_dict, allowed_missing, has_momentum)
    save_converted(model, processor, output_dir)
    return model


def load_converted_weights(
    model_class: type,
    config: AlbefConfig,
    state_dict: dict[str, torch.Tensor],
    allowed_missing: list[str],
    has_momentum: bool,
):
    """Build `model_class(config)` and load a converted state dict into it: ViT position tables interpolated to the
    config's grid, the key set checked (`allowed_missing`: patterns of weights the checkpoint may lack), and momentum
    encoders copied from the online ones when the checkpoint has none."""
    vision = config.vision_config
    _fit_position_embeddings(state_dict, (vision.image_size // vision.patch_size) ** 2)
    model = model_class(config)
    # the key functions write ALBEF's layout, the online model under `albef.`: a family names it after itself
    prefix = f"{model.base_model_prefix}."
    state_dict = {re.sub(r"^albef\.", prefix, key): value for key, value in state_dict.items()}
    _check_fit(model, state_dict, allowed_missing)
    model.load_state_dict(state_dict, strict=False)
    if not has_momentum:
        model.copy_params_to_momentum()
        logger.info("The checkpoint has no momentum encoders; initialised them from the online weights.")
    return model


def save_converted(model, processor, output_dir: str | Path) -> None:
    """Write a converted model and its processor (weights, config, remote code) to `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    normalize_permissions(output_dir)


def read_config_file(file: Path) -> dict:
    """A YAML or JSON config file as a dict; a syntax error names the file and the line."""
    try:
        content = yaml.safe_load(file.read_text()) if file.suffix != ".json" else json.loads(file.read_text())
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Config file {file} cannot be parsed: {' '.join(str(error).split())}. Fix or re-download it."
        ) from None
    if not isinstance(content, dict):
        raise ValueError(f"Config file {file} holds a {type(content).__name__}, not a mapping of settings.")
    return content


def _read_configs(config_files: list[str | Path]) -> tuple[dict, dict, list[Path]]:
    """Split `--config` files into the YAML and the BERT json (resolving the YAML's `bert_config` if needed)."""
    yaml_config: dict | None = None
    bert_config: dict | None = None
    config_dirs: list[Path] = []
    for file in map(Path, config_files):
        if not file.is_file():
            raise FileNotFoundError(f"Config file {file} does not exist.")
        config_dirs.append(file.parent)
        if file.suffix == ".json":
            bert_config = read_config_file(file)
        elif file.suffix in (".yaml", ".yml"):
            yaml_config = read_config_file(file)
        else:
            raise ValueError(f"{file}: expected the official YAML config or the BERT .json config.")
    if yaml_config is None:
        raise ValueError("Pass the official YAML config (e.g. configs/Pretrain.yaml) with --config.")
    if bert_config is None:
        relative = yaml_config.get("bert_config")
        candidates = [d / relative for d in config_dirs] if relative else []
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(
                f"The YAML names bert_config={relative!r}, which was not found beside it; pass the BERT json "
                "(configs/config_bert.json) with another --config."
            )
        bert_config = read_config_file(found)
        config_dirs.append(found.parent)
    return yaml_config, bert_config, config_dirs


__all__ = ["CheckpointError", "build_config", "check_image_size", "convert_albef_checkpoint", "convert_state_dict"]
