"""Convert official FDT checkpoints (yuxiaochen1103/FDT) into vlalign folders that the Auto classes load.

Reads the official solver container `{'last_iter', 'model', 'optimizer'}` with `torch.load(weights_only=True)` and the
official YAML (`config.yaml`, or the `config.json` a run dumps — it is YAML too), strips DDP's `module.` prefix, splits
each fused attention `in_proj` into query/key/value, renames keys to the CLIP-layer layout, checks the result strictly
against the config (the official evaluators load with `strict=False`, which hides bad conversions), sets the FDT
temperature from `last_iter` as the official evaluators do, and writes safetensors + config (+ remote code and, when a
BPE file is found, the tokenizer and processor).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..files import normalize_permissions
from ..models.configuration_fdt import FdtConfig
from ..models.modeling_fdt import FdtForPreTraining, FdtModel
from .albef import CheckpointError, _check_fit, load_pretrained_tokenizer, read_config_file

logger = logging.getLogger(__name__)

#: architecture defaults of the official builders, per `model.type`
_OFFICIAL_VISION = {
    "clip_fdt_vitb32": {"input_resolution": 224, "patch_size": 32, "width": 768, "layers": 12, "heads": 12},
    "clip_fdt_vitb16": {"input_resolution": 224, "patch_size": 16, "width": 768, "layers": 12, "heads": 12},
}
_OFFICIAL_TEXT = {"context_length": 77, "transformer_width": 512, "transformer_heads": 8, "transformer_layers": 12}
_OFFICIAL_VOCAB_SIZE = 49409

_BLOCK_RENAMES = [
    (r"^attn\.out_proj\.", "self_attn.out_proj."),
    (r"^ln_1\.", "layer_norm1."),
    (r"^ln_2\.", "layer_norm2."),
    (r"^mlp\.c_fc\.", "mlp.fc1."),
    (r"^mlp\.c_proj\.", "mlp.fc2."),
]
_QUERY_MAP_LAYERS = {"0": "ln_in", "1": "fc1", "3": "ln_mid", "4": "fc2"}
#: official keys that have no place in the model unless the (untrained) global heads are kept
_GLOBAL_HEAD_KEYS = ("visual.proj", "visual.ln_post.", "encode_text.text_projection.")
_ALWAYS_DROPPED = ("logit_scale_sd",)


def build_config(yaml_config: dict, image_size: int | None = None, with_global_heads: bool = False) -> FdtConfig:
    """Translate the official YAML (model/fdt/t_decay/grad_clip sections) into an `FdtConfig`."""
    model = yaml_config.get("model") or {}
    model_type = model.get("type", "clip_fdt_vitb32")
    if model_type not in _OFFICIAL_VISION:
        raise CheckpointError(
            f"model.type={model_type!r} is not supported; the FDT converter handles {sorted(_OFFICIAL_VISION)} "
            "(the Swin-V2 builder has no released config)."
        )
    kwargs = model.get("kwargs") or {}
    image = {**_OFFICIAL_VISION[model_type], **(kwargs.get("image_encode") or {})}
    text = {**_OFFICIAL_TEXT, **(kwargs.get("text_encode") or {})}
    fdt = kwargs.get("fdt") or {}
    decay = yaml_config.get("t_decay") or {}
    clip = yaml_config.get("grad_clip") or {}
    if text.get("text_encode_type", "Transformer") != "Transformer":
        raise CheckpointError(f"text_encode_type={text['text_encode_type']!r} is not supported (only 'Transformer').")
    for raw_key, width in (("raw_img_ft_dim", image["width"]), ("raw_txt_ft_dim", text["transformer_width"])):
        if raw_key in fdt and fdt[raw_key] != width:
            raise CheckpointError(f"fdt.{raw_key}={fdt[raw_key]} differs from the encoder width {width}.")
    range_ = (3.0, 6.0)
    if clip.get("type") == "logit_scale_param_value":
        range_ = (float(clip.get("value", 3.0)), float(clip.get("max_value", 6.0)))
    temperature = float(decay.get("org_t", fdt.get("sd_temperature", 1000.0)))
    return FdtConfig(
        vision_config={
            "hidden_size": image["width"],
            "intermediate_size": 4 * image["width"],
            "num_hidden_layers": image["layers"],
            "num_attention_heads": image["heads"],
            "image_size": image_size or image["input_resolution"],
            "patch_size": image["patch_size"],
        },
        text_config={
            "vocab_size": text.get("vocab_size", _OFFICIAL_VOCAB_SIZE),
            "hidden_size": text["transformer_width"],
            "intermediate_size": 4 * text["transformer_width"],
            "num_hidden_layers": text["transformer_layers"],
            "num_attention_heads": text["transformer_heads"],
            "max_position_embeddings": text["context_length"],
        },
        fdt_num_tokens=fdt.get("sd_num", 16384),
        fdt_dim=fdt.get("sd_dim", 512),
        fdt_attention=fdt.get("att_func_type", "sparsemax"),
        fdt_pooling=fdt.get("pool_type", "max"),
        fdt_temperature=temperature,
        fdt_temperature_decay_weight=float(decay.get("sd_T_decay_w", 1.0)),
        fdt_temperature_decay_every=int(decay.get("sd_T_decay_iter", 2700)),
        fdt_temperature_min=float(decay.get("sd_T_min", 0.01)),
        logit_scale_param_range=range_,
        with_global_heads=with_global_heads,
        projection_dim=int(image.get("embed_dim", 512)),
    )


def convert_state_dict(
    original: dict[str, torch.Tensor], with_global_heads: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map official keys (with or without `module.`) to `FdtModel` keys; returns (state dict, unknown keys).
    Known keys that the target model does not keep (the unused heads without `with_global_heads`) are dropped."""
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in original.items():
        key = key.removeprefix("module.")
        new = _convert_key(key, tensor, with_global_heads)
        if new is None:
            unknown.append(key)
        converted.update(new or {})
    return converted, unknown


def _convert_key(key: str, tensor: torch.Tensor, with_global_heads: bool) -> dict[str, torch.Tensor] | None:
    if key in _ALWAYS_DROPPED:
        return {}
    if key.startswith(_GLOBAL_HEAD_KEYS):
        if not with_global_heads:
            return {}
        if key == "visual.proj":
            return {"visual_projection.weight": tensor.t().contiguous()}
        if key.startswith("visual.ln_post."):
            return {"vision_post_layernorm." + key.rsplit(".", 1)[1]: tensor}
        return {"text_projection." + key.rsplit(".", 1)[1]: tensor}
    if key == "space_dict":
        return {"grounding.tokens": tensor}
    if key == "logit_scale":
        return {"logit_scale": tensor.reshape(())}
    match = re.match(r"^(img|txt)_query_model\.q_map\.(\d)\.(weight|bias)$", key)
    if match:
        modality, layer, kind = match.groups()
        if layer not in _QUERY_MAP_LAYERS:
            return None
        prefix = "grounding.image_query." if modality == "img" else "grounding.text_query."
        return {f"{prefix}{_QUERY_MAP_LAYERS[layer]}.{kind}": tensor}
    match = re.match(r"^(visual|encode_text)\.(.+)$", key)
    if match is None:
        return None
    tower, rest = match.groups()
    prefix = "vision_model." if tower == "visual" else "text_model."
    simple = {
        "visual": {
            "class_embedding": "embeddings.class_embedding",
            "positional_embedding": "embeddings.position_embedding.weight",
            "conv1.weight": "embeddings.patch_embedding.weight",
            "ln_pre.weight": "pre_layrnorm.weight",
            "ln_pre.bias": "pre_layrnorm.bias",
        },
        "encode_text": {
            "positional_embedding": "embeddings.position_embedding.weight",
            "token_embedding.weight": "embeddings.token_embedding.weight",
            "ln_final.weight": "final_layer_norm.weight",
            "ln_final.bias": "final_layer_norm.bias",
        },
    }[tower]
    if rest in simple:
        return {prefix + simple[rest]: tensor}
    match = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", rest)
    if match is None:
        return None
    layer, block_key = match.groups()
    base = f"{prefix}encoder.layers.{layer}."
    match = re.match(r"^attn\.in_proj_(weight|bias)$", block_key)
    if match:
        kind = match.group(1)
        query, key_, value = tensor.chunk(3, dim=0)
        attn = base + "self_attn."
        return {f"{attn}q_proj.{kind}": query, f"{attn}k_proj.{kind}": key_, f"{attn}v_proj.{kind}": value}
    for pattern, replacement in _BLOCK_RENAMES:
        if re.match(pattern, block_key):
            return {base + re.sub(pattern, replacement, block_key): tensor}
    return None


def _fit_position_embeddings(state_dict: dict[str, torch.Tensor], config: FdtConfig) -> None:
    """Interpolate the ViT position table to `image_size` when it differs from the checkpoint's (bicubic, CLS kept)."""
    from ..models.modeling_albef import interpolate_pos_embed

    key = "vision_model.embeddings.position_embedding.weight"
    num_patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    if key in state_dict and state_dict[key].shape[0] != num_patches + 1:
        logger.info("Interpolating %s from %d to %d positions", key, state_dict[key].shape[0], num_patches + 1)
        state_dict[key] = interpolate_pos_embed(state_dict[key][None], num_patches)[0]


def _read_yaml(config_files: list[str | Path]) -> dict:
    yaml_config = None
    for file in map(Path, config_files):
        if not file.is_file():
            raise FileNotFoundError(f"Config file {file} does not exist.")
        if file.suffix not in (".yaml", ".yml", ".json"):
            raise ValueError(f"{file}: expected the official FDT config (config.yaml, or the run's config.json).")
        yaml_config = read_config_file(file)
    if not isinstance(yaml_config, dict) or "model" not in yaml_config:
        raise ValueError(
            "Pass the official FDT config with --config (e.g. example/clip_fdt/config_cc3m.yaml, or the config.json a "
            "training run writes); it needs a `model` section."
        )
    return yaml_config


def find_bpe_file(search_dirs: list[Path]) -> Path | None:
    """The official BPE merges file beside the inputs, or the copy bundled with `open_clip_torch`, if any."""
    name = "bpe_simple_vocab_16e6.txt.gz"
    for directory in search_dirs:
        for candidate in (directory / name, directory / "text_info" / name):
            if candidate.is_file():
                return candidate
    try:
        from importlib.resources import files

        bundled = files("open_clip") / name
        if bundled.is_file():
            return Path(str(bundled))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    return None


def load_tokenizer(tokenizer: str | Path | None, search_dirs: list[Path], context_length: int):
    """An `FdtTokenizer`: from a folder/Hub id, a BPE `.txt(.gz)` file, or the official BPE file found beside the
    inputs / in `open_clip`; None when none is available (the folder is then written without a processor)."""
    from ..models.tokenization_fdt import FdtTokenizer

    if tokenizer is not None:
        path = Path(tokenizer)
        if path.is_file():
            return FdtTokenizer.from_bpe_file(str(path), context_length=context_length)
        return load_pretrained_tokenizer(FdtTokenizer, tokenizer)
    bpe = find_bpe_file(search_dirs)
    if bpe is None:
        return None
    return FdtTokenizer.from_bpe_file(str(bpe), context_length=context_length)


def _save_processor(tokenizer, config: FdtConfig, output_dir: Path) -> None:
    """Save `FdtProcessor` (official eval preprocessing) when the processing module is available, else the
    tokenizer alone."""
    try:
        from ..models.processing_fdt import FdtImageProcessor, FdtProcessor
    except ImportError:
        tokenizer.save_pretrained(output_dir)
        return
    image_processor = FdtImageProcessor.from_image_size(config.vision_config.image_size)
    FdtProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)


def convert_fdt_checkpoint(
    checkpoint: str | Path,
    config_files: list[str | Path],
    output_dir: str | Path,
    tokenizer: str | Path | None = None,
    task: str = "auto",
    image_size: int | None = None,
    with_global_heads: bool = False,
) -> FdtForPreTraining | FdtModel:
    """Convert an official FDT checkpoint and save it (weights, config, remote code, tokenizer/processor) to
    `output_dir`.

    Args:
        checkpoint: the solver file (`ckpt_<iter>.pth.tar`: `{'last_iter', 'model', 'optimizer'}`) or a bare state dict.
        config_files: the official YAML (`config_cc3m.yaml` or the run's `config.json`).
        output_dir: where to write the converted folder.
        tokenizer: a tokenizer folder/Hub id or the BPE merges file; default: `bpe_simple_vocab_16e6.txt.gz` beside
            the checkpoint/config (or in `text_info/`), else the copy in `open_clip`. Without one no processor is
            written.
        task: `"pretraining"` / `"auto"` (an `FdtForPreTraining` folder) or `"retrieval"` (an `FdtModel` folder); both
            load with `AutoModel` and `AutoModelForPreTraining`.
        image_size: target resolution (default: the YAML's); position embeddings are interpolated.
        with_global_heads: keep the untrained CLIP heads (`visual.proj`, `ln_post`, `text_projection`) as frozen
            parameters instead of dropping them.
    """
    if task not in ("auto", "pretraining", "retrieval"):
        raise ValueError(f"Unknown task {task!r}; choose 'pretraining', 'retrieval' or 'auto'.")
    yaml_config = _read_yaml(config_files)
    config = build_config(yaml_config, image_size, with_global_heads)
    original, last_iter = load_fdt_checkpoint(checkpoint)
    state_dict, unknown = convert_state_dict(original, with_global_heads)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} checkpoint keys are not CLIP+FDT keys (first: {', '.join(unknown[:5])}). Is this a "
            "clip_fdt checkpoint? The CLIP baseline and DeCLIP+FDT are not supported."
        )
    _fit_position_embeddings(state_dict, config)
    temperature = config.fdt_temperature_at(last_iter, stepwise=False)
    state_dict["fdt_temperature"] = torch.tensor(temperature)

    model = FdtModel(config)
    _check_fit(model, state_dict, allowed_missing=[])
    model.load_state_dict(state_dict, strict=True)
    logger.info("Converted FDT checkpoint at step %d (FDT temperature %s)", last_iter, temperature)
    if task != "retrieval":
        wrapper = FdtForPreTraining(config)
        wrapper.fdt.load_state_dict(model.state_dict(), strict=True)
        model = wrapper

    search_dirs = [Path(checkpoint).parent, *(Path(file).parent for file in config_files)]
    processor_tokenizer = load_tokenizer(tokenizer, search_dirs, config.text_config.max_position_embeddings)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    if processor_tokenizer is None:
        logger.warning(
            "No tokenizer written: pass --tokenizer with the official bpe_simple_vocab_16e6.txt.gz (or place it beside "
            "the checkpoint, or install open_clip_torch, which bundles it)."
        )
    else:
        _save_processor(processor_tokenizer, config, output_dir)
    normalize_permissions(output_dir)
    return model


def load_fdt_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """(model state dict, `last_iter`) of an official solver checkpoint, read once with `weights_only=True`
    (a bare state dict has step 0)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        container = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}). Pass the ckpt_<iter>.pth.tar file "
            "an FDT run saves; files that pickle objects beyond tensors and plain containers are refused for safety."
        ) from error
    state_dict = container.get("model", container) if isinstance(container, dict) else None
    if not isinstance(state_dict, dict) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (neither at the top level nor under 'model').")
    state_dict = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    last_iter = container.get("last_iter", 0) if isinstance(container, dict) else 0
    if isinstance(last_iter, torch.Tensor):
        last_iter = int(last_iter.item())
    if not isinstance(last_iter, int) or last_iter < 0:
        raise CheckpointError(f"{checkpoint}: last_iter={last_iter!r} is not a step count.")
    return state_dict, last_iter


__all__ = ["build_config", "convert_fdt_checkpoint", "convert_state_dict", "find_bpe_file", "load_fdt_checkpoint"]
