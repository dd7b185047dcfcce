"""SIMLA's side of `vs_official.py --method simla`: `write_spec` (the driver's: configs and one batch) and a
worker process holding either the official SIMLA pretraining model (`models/simla/pretrain.py`, imported from a local
checkout of codezakh/SIMLA, `--official-src`, in a Python environment with the transformers/timm it was written for)
or vlalign's `SimlaForPreTraining` converted from the official model's initial weights, answering the commands of
`step_protocol.py`.

Nothing of the official repository is copied: its modules are imported from `--official-src` at run time, with
environment shims only (`official_albef.py`: the ViT's shape from the spec, BERT built from its config;
`step_protocol.py`: a one-process gloo group for the queues' gather). The batch carries what the official
`Pretrain.py` feeds the model besides the images and captions: masked patch positions and the dVAE token ids of the
patches (random ids here: the dVAE only labels the masked patches, and the step's cost does not depend on the labels).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.albef_step_worker import TinyTokenizer
from against_official.official_albef import import_official, size_official_model
from against_official.step_protocol import join_single_process_group, serve, training_duties
from common.albef_sizes import VOCAB_SIZE, official_bert_config

IMAGE_SIZE = 256  # Pretrain.yaml's image_res
PATCH_SIZE = 16  # the official ViT's (hard-coded)
TEXT_TOKENS = 25  # Pretrain.py tokenises captions with max_length=25
TEXT_LAYERS = 12  # PSL reads the self-attention of BERT layer 11 (hard-coded): fewer layers raise IndexError
MASKED_PATCHES = 75  # the official dataset's MaskingGenerator(num_masking_patches=75) at 256 px (16x16 patches)
MIM_VOCAB_SIZE = 8192  # DALL-E's dVAE codebook, hard-coded in the official model (vlalign's default too)
ALPHA = 0.4  # Pretrain.yaml's distillation weight (after the first epoch's warm-up)


@dataclass(frozen=True)
class SimlaSize:
    width: int  # ViT and BERT alike: the MIM pass feeds the ViT's tokens through BERT
    vision_depth: int
    heads: int  # ViT and BERT alike (64-wide heads)


#: albef_sizes' ViTs, each with a 12-layer BERT of its width: SIMLA ties BERT's width to the ViT's and needs 12 layers
SIZES = {
    "tiny": SimlaSize(192, 4, 3),  # albef_sizes' tiny ViT (ViT-Ti width, 4 layers), for quick loss curves
    "small": SimlaSize(384, 12, 6),  # ViT-S/16 and a 384-wide 12-layer BERT
    "base": SimlaSize(768, 12, 12),  # SIMLA: ViT-B/16, BERT-base
}


def official_med_config(shape: SimlaSize) -> dict:
    """The official `configs/shared_bert.json` at this size: ALBEF's BERT json without the text/fusion split, with
    cross-attention in every layer."""
    bert = official_bert_config("base") | {
        "hidden_size": shape.width,
        "intermediate_size": 4 * shape.width,
        "num_attention_heads": shape.heads,
        "num_hidden_layers": TEXT_LAYERS,
        "encoder_width": shape.width,
        "add_cross_attention": True,
    }
    del bert["fusion_layer"]
    return bert


def official_yaml(shape: SimlaSize) -> dict:
    """configs/Pretrain.yaml's model settings, plus `from_scratch` (an official key: no DeiT download) and the ViT's
    shape as `vit_*` keys (the official constructor hard-codes ViT-B/16; vlalign's converter reads these keys)."""
    return {
        "image_res": IMAGE_SIZE,
        "vision_width": shape.width,
        "embed_dim": 256,
        "temp": 0.07,
        "mlm_probability": 0.15,
        "queue_size": 65536,
        "momentum": 0.995,
        "alpha": ALPHA,
        "from_scratch": True,
        "vit_patch_size": PATCH_SIZE,
        "vit_embed_dim": shape.width,
        "vit_depth": shape.vision_depth,
        "vit_num_heads": shape.heads,
    }


def random_batch(batch_size: int) -> dict[str, torch.Tensor]:
    """Normalised images, "[CLS] words" captions of 10-25 tokens padded to the longest, and the MIM inputs: 75 masked
    patches per image and a dVAE token id per patch."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, VOCAB_SIZE, (batch_size, TEXT_TOKENS), generator=generator)
    input_ids[:, 0] = 101
    lengths = torch.randint(10, TEXT_TOKENS + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(TEXT_TOKENS)[None] < lengths[:, None]).long()
    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    masked = torch.rand(batch_size, patches, generator=generator).topk(MASKED_PATCHES, dim=1).indices
    return {
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
        "bool_masked_pos": torch.zeros(batch_size, patches, dtype=torch.bool).scatter_(1, masked, True),
        "visual_token_ids": torch.randint(MIM_VOCAB_SIZE, (batch_size, patches), generator=generator),
    }


def write_spec(directory: Path, size: str, batch_size: int) -> Path:
    """Write the official-format BERT json, the batch and `spec.json` (what both model builders read) to
    `directory`; return the spec's path."""
    yaml = official_yaml(SIZES[size])
    if yaml["queue_size"] % batch_size:
        raise ValueError(f"The official queue update needs a batch size dividing {yaml['queue_size']}: {batch_size}")
    bert = official_med_config(SIZES[size])
    (directory / "shared_bert.json").write_text(json.dumps(bert))
    save_file(random_batch(batch_size), str(directory / "batch.safetensors"))
    vision = {"width": yaml["vit_embed_dim"], "depth": yaml["vit_depth"], "heads": yaml["vit_num_heads"]}
    spec = {"dir": str(directory), "yaml": yaml, "bert": bert, "alpha": ALPHA, "lr": 1e-4, "vision": vision}
    path = directory / "spec.json"  # lr and the AdamW weight decay (step_protocol's default, 0.02): Pretrain.yaml's
    path.write_text(json.dumps(spec))
    return path


def masked_patch_labels(batch: dict) -> torch.Tensor:
    """The dVAE ids of the masked patches, row-major: Pretrain.py's `visual_token_ids[masked_visual_token_pos]`."""
    return batch["visual_token_ids"][batch["bool_masked_pos"]]


def official_model(spec: dict, src: str) -> tuple[torch.nn.Module, callable]:
    official = import_official(src, "models.simla.pretrain")
    join_single_process_group(spec["dir"])
    size_official_model(official, spec["vision"])
    config = dict(spec["yaml"], bert_config=str(Path(spec["dir"]) / "shared_bert.json"))
    torch.manual_seed(0)
    model = official.SIMLA(
        text_encoder="bert-base-uncased", tokenizer=TinyTokenizer(spec["bert"]["vocab_size"]), config=config
    )
    checkpoint = Path(spec["dir"]) / "official.pth"
    if not checkpoint.exists():
        torch.save({"model": model.state_dict()}, checkpoint)

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        text = SimpleNamespace(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        losses = model(
            batch["pixel_values"],
            text,
            batch["visual_token_ids"],
            batch["bool_masked_pos"],
            masked_patch_labels(batch),
            alpha=spec["alpha"],
        )
        return sum(losses), losses[1].item()  # (mlm, ita, itm, mim, psl), weighted 1 in Pretrain.py

    return model, loss


def vlalign_model(spec: dict) -> tuple[torch.nn.Module, callable]:
    from vlalign.convert.albef import load_converted_weights, load_original_checkpoint
    from vlalign.convert.simla import convert_pretraining_state_dict, simla_config
    from vlalign.models.modeling_simla import SimlaForPreTraining

    config = simla_config(spec["yaml"], spec["bert"], TinyTokenizer(spec["bert"]["vocab_size"]))
    original = load_original_checkpoint(Path(spec["dir"]) / "official.pth")
    state_dict, _ = convert_pretraining_state_dict(original)  # drops the tied MLM decoders and position_ids
    model = load_converted_weights(SimlaForPreTraining, config, state_dict, [], has_momentum=True)

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        inputs = ("pixel_values", "input_ids", "attention_mask", "bool_masked_pos")
        output = model(
            **{key: batch[key] for key in inputs}, mim_labels=masked_patch_labels(batch), alpha=spec["alpha"]
        )
        return output.loss, output.loss_itc.item()

    loss.duties = training_duties(model)
    return model, loss


if __name__ == "__main__":
    serve(official_model, vlalign_model)
