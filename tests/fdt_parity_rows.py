"""The FDT parity table: vlalign's FDT against the official code's golden outputs (tests/fixtures/fdt).

Converts the fixture checkpoint with `vlalign convert --method fdt`, loads it with the Auto classes, runs the recorded
inputs and measures the max |difference| of every deterministic quantity the official code recorded: encoder
features, FDT queries/scores/pooled logits/weights, embeddings, logits and loss at T=1000 and T=1, gradients, the
parameters after one optimizer step, zero-shot classification and retrieval. `test_fdt_parity.py` asserts each row
against its tolerance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from conftest import FIXTURES, run_cli
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

import vlalign  # noqa: F401  (importing vlalign registers the Auto classes)
from vlalign.convert.fdt import convert_fdt_checkpoint, convert_state_dict
from vlalign.evaluation import zero_shot_class_embeddings
from vlalign.evaluation.retrieval import recall_metrics
from vlalign.models.modeling_fdt import fdt_parameter_groups, l2_normalize

FDT_FIXTURES = FIXTURES / "fdt"
BPE_FILE = FIXTURES / "fdt_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
ATOL = 1e-5
#: tolerances of rows that are not plain fp32 forward values (see tests/fixtures/fdt/README.md)
#: The logit-scale gradient (-4.8e-5 here) is a sum of nearly cancelling terms at T=1000 (all embeddings are close),
#: so it is compared in absolute terms: its ~4e-7 difference is 1e-2 relative.
TOLERANCES = {"after one AdamW step": 1e-4}


def convert(output: Path, with_global_heads: bool = False) -> None:
    """The fixture checkpoint through the CLI (the Python converter for the optional global heads, which the CLI
    does not offer)."""
    checkpoint, config = FDT_FIXTURES / "original" / "checkpoint.pth", FDT_FIXTURES / "original" / "config.yaml"
    if with_global_heads:
        convert_fdt_checkpoint(checkpoint, [config], output, tokenizer=_tokenizer_arg(), with_global_heads=True)
        return
    arguments = ["convert", "--method", "fdt", "--checkpoint", str(checkpoint), "--config", str(config)]
    if _tokenizer_arg():
        arguments += ["--tokenizer", _tokenizer_arg()]
    run_cli(*arguments, "--output", str(output))


def _tokenizer_arg() -> str | None:
    return str(BPE_FILE) if BPE_FILE.is_file() else None


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    if a.shape != b.shape:
        if a.numel() != b.numel():
            raise ValueError(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
        a = a.reshape(b.shape)
    return (a - b).abs().max().item()


def official_pad_validity(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return (inputs["pad_mask"] == 0).long()


@torch.no_grad()
def forward_rows(folder: Path) -> list[tuple[str, float]]:
    inputs, expected = load_file(FDT_FIXTURES / "inputs.safetensors"), load_file(FDT_FIXTURES / "outputs.safetensors")
    model = AutoModel.from_pretrained(folder).eval()
    pixels, ids, mask = inputs["pixel_values"], inputs["input_ids"], official_pad_validity(inputs)
    patches = model.vision_model(pixels).last_hidden_state[:, 1:]
    tokens = model.text_model(ids).last_hidden_state
    codebook, dim = model.grounding.tokens, model.config.fdt_dim
    image_queries = model.grounding.image_query(patches)
    text_queries = model.grounding.text_query(tokens)
    text_scores = (text_queries @ codebook.t() / math.sqrt(dim)) * mask[..., None]
    rows = [
        ("vision patch features", max_diff(patches, expected["vision_patch_features"])),
        ("text token features", max_diff(tokens, expected["text_token_features"])),
        ("image FDT queries", max_diff(image_queries, expected["image_fdt_queries"])),
        ("text FDT queries", max_diff(text_queries, expected["text_fdt_queries"])),
        ("image token scores (q·C)", max_diff(image_queries @ codebook.t(), expected["image_fdt_token_scores_unscaled"])),
        ("text token scores (masked, /sqrt d)", max_diff(text_scores, expected["text_fdt_token_scores_scaled_masked"])),
        ("logit scale", max_diff(model.scale(), expected["logit_scale"])),
    ]  # fmt: skip
    for prefix, temperature in (("", None), ("T1_", 1.0)):
        tag = "T=1000" if temperature is None else "T=1"
        out = model(
            input_ids=ids, pixel_values=pixels, attention_mask=mask, return_loss=True, fdt_temperature=temperature
        )
        image_raw = model.get_image_features(pixels, fdt_temperature=temperature).pooler_output
        text_raw = model.get_text_features(ids, mask, fdt_temperature=temperature).pooler_output
        rows += [
            (f"{tag} image pooled logits", max_diff(out.image_fdt_pooled_logits, expected[f"{prefix}image_fdt_pooled_logits"])),
            (f"{tag} text pooled logits", max_diff(out.text_fdt_pooled_logits, expected[f"{prefix}text_fdt_pooled_logits"])),
            (f"{tag} image FDT weights", max_diff(out.image_fdt_weights, expected[f"{prefix}image_fdt_weights"])),
            (f"{tag} text FDT weights", max_diff(out.text_fdt_weights, expected[f"{prefix}text_fdt_weights"])),
            (f"{tag} image embeds (unnormalised)", max_diff(image_raw, expected[f"{prefix}image_embeds_unnormalized"])),
            (f"{tag} text embeds (unnormalised)", max_diff(text_raw, expected[f"{prefix}text_embeds_unnormalized"])),
            (f"{tag} image embeds", max_diff(out.image_embeds, expected[f"{prefix}image_embeds"])),
            (f"{tag} text embeds", max_diff(out.text_embeds, expected[f"{prefix}text_embeds"])),
            (f"{tag} logits_per_image", max_diff(out.logits_per_image, expected[f"{prefix}logits_per_image"])),
            (f"{tag} logits_per_text", max_diff(out.logits_per_text, expected[f"{prefix}logits_per_text"])),
            (f"{tag} loss", max_diff(out.loss, expected[f"{prefix}loss"])),
        ]  # fmt: skip
    # Without an attention mask the validity comes from the first end-of-text token (the official pad mask).
    out = model(input_ids=ids, pixel_values=pixels)
    rows.append(("text FDT weights, mask from EOT", max_diff(out.text_fdt_weights, expected["text_fdt_weights"])))
    return rows


@torch.no_grad()
def global_head_rows(folder: Path) -> list[tuple[str, float]]:
    """The untrained CLIP heads kept with `with_global_heads=True` (not used by FDT; conversion completeness)."""
    inputs, expected = load_file(FDT_FIXTURES / "inputs.safetensors"), load_file(FDT_FIXTURES / "outputs.safetensors")
    model = AutoModel.from_pretrained(folder).eval()
    cls = model.vision_model(inputs["pixel_values"]).last_hidden_state[:, 0]
    eot = model.text_model(inputs["input_ids"]).pooler_output
    return [
        ("global head: ln_post(CLS)", max_diff(model.vision_post_layernorm(cls), expected["vision_cls_feature_post_ln"])),
        ("global head: image projection", max_diff(model.get_global_image_features(inputs["pixel_values"]),
                                                   expected["vision_cls_projected"])),
        ("global head: text EOT feature", max_diff(eot, expected["text_eot_feature"])),
        ("global head: text projection", max_diff(model.get_global_text_features(inputs["input_ids"]),
                                                  expected["text_eot_projected"])),
    ]  # fmt: skip


def official_to_vlalign_grads(model) -> dict[str, torch.Tensor]:
    """Our gradients under the official parameter names (fused q/k/v re-concatenated)."""
    ours = {name.removeprefix("fdt."): p.grad for name, p in model.named_parameters() if p.grad is not None}
    result = {}
    for name, grad in ours.items():
        result[name] = grad
    fused: dict[str, torch.Tensor] = {}
    for key in load_file(FDT_FIXTURES / "grads.safetensors"):
        official = key.removeprefix("grad.").split("[")[0]
        if official.endswith(("in_proj_weight", "in_proj_bias")):
            kind = "weight" if official.endswith("weight") else "bias"
            tower = "vision_model" if official.startswith("visual.") else "text_model"
            layer = official.split("resblocks.")[1].split(".")[0]
            base = f"{tower}.encoder.layers.{layer}.self_attn."
            fused[official] = torch.cat([result[f"{base}{p}_proj.{kind}"] for p in "qkv"])
    return {**result, **fused}


def train_step_model(folder: Path):
    """Load the training model, run the official step: forward, backward, clamp, AdamW step, clamp."""
    inputs = load_file(FDT_FIXTURES / "inputs.safetensors")
    meta = json.loads((FDT_FIXTURES / "run_meta.json").read_text())
    model = AutoModelForPreTraining.from_pretrained(folder).train()
    kwargs = meta["optimizer_kwargs"]
    groups = fdt_parameter_groups(model, kwargs["weight_decay"])
    optimizer = torch.optim.AdamW(
        groups, lr=kwargs["lr"], betas=tuple(kwargs["betas"]), eps=kwargs["eps"], amsgrad=kwargs["amsgrad"]
    )
    out = model(inputs["pixel_values"], inputs["input_ids"], official_pad_validity(inputs))
    optimizer.zero_grad()
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.before_optimizer_step(0)
    optimizer.step()
    model.after_optimizer_step(0)
    return model, out, grads, groups


def gradient_and_step_rows(folder: Path) -> list[tuple[str, float]]:
    expected_grads = load_file(FDT_FIXTURES / "grads.safetensors")
    after = torch.load(FDT_FIXTURES / "after_step.pth", weights_only=True)
    original = torch.load(FDT_FIXTURES / "original" / "checkpoint.pth", weights_only=True)["model"]
    model, out, grads, _ = train_step_model(folder)
    grads = {name.removeprefix("fdt."): grad for name, grad in grads.items()}
    # Expected gradients in our layout (the converter's mapping; token-embedding rows compared separately)
    rows_ids = after["token_embedding_row_ids"]
    expected = {}
    for key, value in expected_grads.items():
        name = key.removeprefix("grad.")
        if "[" in name:
            continue
        expected.update(convert_state_dict({name: value})[0])
    diffs, scale_diff = [], None
    for name, value in expected.items():
        if name == "logit_scale":
            scale_diff = abs(grads[name].item() - value.item())
            continue
        diffs.append(max_diff(grads[name], value))
    token_grad = grads["text_model.embeddings.token_embedding.weight"][rows_ids]
    token_expected = expected_grads["grad.encode_text.token_embedding.weight[token_embedding_row_ids]"]
    missing = sorted(set(expected) - set(grads))
    extra = sorted(set(grads) - set(expected) - {"text_model.embeddings.token_embedding.weight"})
    if missing or extra:
        raise AssertionError(f"gradient sets differ: missing {missing}, unexpected {extra}")
    # State after the step, in our layout; untouched token rows only got AdamW's decoupled decay.
    expected_after = convert_state_dict(after["model_except_token_embedding"])[0]
    lr, wd = after["lr"].item(), after["token_embedding_weight_decay"].item()
    token_table = original["module.encode_text.token_embedding.weight"] * (1 - lr * wd)
    token_table[rows_ids] = after["token_embedding_rows"]
    expected_after["text_model.embeddings.token_embedding.weight"] = token_table
    state = {name.removeprefix("fdt."): value for name, value in model.state_dict().items()}
    step_diff = max(max_diff(state[name], value) for name, value in expected_after.items())
    return [
        ("training loss (before the step)", max_diff(out.loss, after["loss_before_step"])),
        ("gradients", max(diffs)),
        ("gradient token-embedding rows", max_diff(token_grad, token_expected)),
        ("grad logit_scale", scale_diff),
        ("after one AdamW step", step_diff),
    ]


@torch.no_grad()
def evaluator_rows(folder: Path) -> list[tuple[str, float]]:
    from vlalign.models.tokenization_fdt import FdtTokenizer

    inputs, expected = load_file(FDT_FIXTURES / "inputs.safetensors"), load_file(FDT_FIXTURES / "outputs.safetensors")
    zeroshot = json.loads((FDT_FIXTURES / "zeroshot.json").read_text())
    retrieval = json.loads((FDT_FIXTURES / "retrieval_metrics.json").read_text())
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = FdtTokenizer.from_pretrained(folder)
    class_embeds, class_weights = zero_shot_class_embeddings(
        model, tokenizer, zeroshot["class_names"], zeroshot["templates"], return_token_weights=True
    )
    image, _ = model.ground_image(inputs["pixel_values"])
    image_embeds, image_weights = l2_normalize(image.embeds), image.weights
    probs = (image_embeds @ class_embeds.t() * model.scale()).softmax(dim=-1)
    att_probs = (image_weights @ class_weights.t()).softmax(dim=-1)
    preds_equal = float(not torch.equal(probs.argmax(-1), expected["zeroshot_preds"]))
    att_preds_equal = float(not torch.equal(att_probs.argmax(-1), expected["zeroshot_att_preds"]))
    # Retrieval: the COCO evaluator normalises without eps
    captions = tokenizer(retrieval["captions"], return_tensors="pt")
    text_embeds = model.get_text_features(captions["input_ids"], captions["attention_mask"]).pooler_output
    image_raw = image.embeds
    sim = (image_raw / image_raw.norm(dim=-1, keepdim=True)) @ (
        text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    ).t()
    per_image = retrieval["captions_per_image"]
    img2txt = [list(range(i * per_image, (i + 1) * per_image)) for i in range(sim.shape[0])]
    txt2img = [c // per_image for c in range(sim.shape[1])]
    metrics = recall_metrics(sim, sim.t(), img2txt, txt2img)
    ours = [round(metrics[f"txt_r{k}"], 1) for k in (1, 5, 10)] + [round(metrics[f"img_r{k}"], 1) for k in (1, 5, 10)]
    official = retrieval["i2t_R@1,5,10"] + retrieval["t2i_R@1,5,10"]
    return [
        ("zero-shot class embeddings", max_diff(class_embeds, expected["zeroshot_weights"])),
        ("zero-shot attention-view class vectors", max_diff(class_weights, expected["zeroshot_att_weights"])),
        ("zero-shot probs", max_diff(probs, expected["zeroshot_probs"])),
        ("zero-shot attention-view probs", max_diff(att_probs, expected["zeroshot_att_probs"])),
        ("zero-shot preds (1 = differ)", preds_equal),
        ("zero-shot attention-view preds (1 = differ)", att_preds_equal),
        ("retrieval similarity matrix", max_diff(sim, expected["retrieval_sim_matrix"])),
        (
            "retrieval recalls R@1/5/10 both ways (points)",
            max(abs(a - b) for a, b in zip(ours, official, strict=True)),
        ),
        ("retrieval rsum (points)", abs(sum(ours) - retrieval["rsum"])),
    ]


def parity_rows(workdir: Path) -> list[tuple[str, float, float]]:
    """(quantity, max |diff|, tolerance) for every row; converts into `workdir`."""
    folder, heads_folder = workdir / "fdt", workdir / "fdt_global_heads"
    convert(folder)
    convert(heads_folder, with_global_heads=True)
    rows = forward_rows(folder) + global_head_rows(heads_folder) + gradient_and_step_rows(folder)
    if _tokenizer_arg():
        rows += evaluator_rows(folder)
    return [(name, diff, TOLERANCES.get(name, ATOL)) for name, diff in rows]
