"""FDT's side of `vs_official.py --method fdt`: `write_spec` (the driver's: the official-format config and one
batch) and a worker process holding either the official `Clip_FDT` (imported from a local checkout of
github.com/yuxiaochen1103/FDT, `--official-src`, in a Python with the dependencies it was written for) or vlalign's
`FdtForPreTraining` converted from the official model's initial weights, answering the commands of `step_protocol.py`.

Nothing of the official repository is copied: its modules are imported from `--official-src` at run time, with shims
that change the environment only (see `_shim_official_environment` and `_feed_token_ids`). Both sides see the same
token ids: the official text encoder tokenizes caption strings inside its forward, so it is handed the batch's ids
instead (the step then times the model, not the Python BPE, on both sides). The official trainer wraps the model in
DistributedDataParallel; neither side is wrapped here, so the comparison is of the model code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.step_protocol import join_single_process_group, serve, training_duties

IMAGE_SIZE = 224  # the official ViT builders' input_resolution
CONTEXT_LENGTH = 77  # the official text_transformers' context_length
VOCAB_SIZE = 49409  # the official BPE vocabulary: CLIP's, shifted by one for <|mask|> = 49406
START_OF_TEXT, END_OF_TEXT = 49407, 49408
LR = 1e-4  # example/clip_fdt/config_cc3m.yaml's lr_scheduler.base_lr, which the trainer sets as the AdamW lr
WEIGHT_DECAY = 0.1  # config_cc3m.yaml's AdamW weight_decay
BPE_PATH = "text_info/bpe_simple_vocab_16e6.txt.gz"  # config_cc3m.yaml's bpe_path, relative to the checkout


@dataclass(frozen=True)
class FdtSize:
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    fdt_tokens: int  # sd_num: the codebook size
    fdt_dim: int  # sd_dim: the codebook (and embedding) width


SIZES = {
    "tiny": FdtSize(192, 4, 3, 128, 4, 2, 1024, 128),  # for quick loss curves
    "small": FdtSize(384, 12, 6, 256, 12, 4, 16384, 256),  # ViT-S/16, every width of "base" halved
    "base": FdtSize(768, 12, 12, 512, 12, 8, 16384, 512),  # config_cc3m.yaml (its type is ViT-B/32), at ViT-B/16
}


def official_config(size: str) -> dict:
    """The official YAML's model, grad_clip and t_decay sections (config_cc3m.yaml's) at the named size."""
    shape = SIZES[size]
    return {
        "model": {
            "type": "clip_fdt_vitb16",
            "kwargs": {
                "image_encode": {
                    "embed_dim": shape.fdt_dim,
                    "input_resolution": IMAGE_SIZE,
                    "patch_size": 16,
                    "width": shape.vision_width,
                    "layers": shape.vision_layers,
                    "heads": shape.vision_heads,
                },
                "text_encode": {
                    "bpe_path": BPE_PATH,
                    "text_encode_type": "Transformer",
                    "text_model_utils": {"random": False, "freeze": False},
                    "embed_dim": shape.fdt_dim,
                    "context_length": CONTEXT_LENGTH,
                    "transformer_width": shape.text_width,
                    "transformer_heads": shape.text_heads,
                    "transformer_layers": shape.text_layers,
                },
                "fdt": {
                    "sd_temperature": 1000,
                    "att_func_type": "sparsemax",
                    "pool_type": "max",
                    "use_allgather": True,
                    "sd_num": shape.fdt_tokens,
                    "sd_dim": shape.fdt_dim,
                    "raw_img_ft_dim": shape.vision_width,
                    "raw_txt_ft_dim": shape.text_width,
                },
            },
        },
        "grad_clip": {"type": "logit_scale_param_value", "value": 3, "max_value": 6},
        "t_decay": {"org_t": 1000, "sd_T_decay_iter": 2700, "sd_T_decay_w": 1, "sd_T_min": 0.01},
    }


def random_batch(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Images and official-format token ids: <|startoftext|>, random BPE ids, <|endoftext|>, zero padding."""
    lengths = torch.randint(8, 32, (batch_size,), generator=generator)  # CC3M-like captions, with SOT/EOT
    positions = torch.arange(CONTEXT_LENGTH)[None]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids = torch.randint(1, START_OF_TEXT - 1, (batch_size, CONTEXT_LENGTH), generator=generator)
    input_ids[:, 0] = START_OF_TEXT
    input_ids[positions == lengths[:, None] - 1] = END_OF_TEXT
    return {
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
    }


def write_spec(directory: Path, size: str, batch_size: int) -> Path:
    (directory / "config.yaml").write_text(yaml.safe_dump(official_config(size), sort_keys=False))
    save_file(random_batch(batch_size, torch.Generator().manual_seed(0)), str(directory / "batch.safetensors"))
    path = directory / "spec.json"
    path.write_text(json.dumps({"dir": str(directory), "lr": LR, "weight_decay": WEIGHT_DECAY}))
    return path


def _shim_official_environment(spec: dict) -> None:
    """Let the CUDA-only official code run on CPU in one process: `Tensor.cuda` becomes the identity (the text
    encoder and `ClipInfoCELoss` move their tensors with it), and a one-process gloo group serves the official
    `AllGather` of the embeddings (`dist.all_gather` / `all_reduce`, unchanged)."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    join_single_process_group(spec["dir"])


def _feed_token_ids(text_encoder: torch.nn.Module) -> None:
    """Input shim: the official text encoder calls `self.tokenize(captions, ...)` in its forward; this instance takes
    `(input_ids, attention_mask)` instead and returns them as the official tokenizer would: the ids and its pad mask
    (0 for real tokens, -inf for padding)."""

    def tokenize(texts: tuple[torch.Tensor, torch.Tensor], context_length: int, mask_type: str | None = None):
        input_ids, attention_mask = texts
        return input_ids, torch.zeros(attention_mask.shape).masked_fill(attention_mask == 0, float("-inf"))

    text_encoder.tokenize = tokenize


def read_config(spec: dict) -> dict:
    """The official-format YAML `write_spec` wrote, which both sides build their model from."""
    return yaml.safe_load((Path(spec["dir"]) / "config.yaml").read_text())


def official_model(spec: dict, src: str) -> tuple[torch.nn.Module, Callable]:
    sys.path.insert(0, src)
    from prototype.loss_functions import ClipInfoCELoss
    from prototype.model import model_entry

    _shim_official_environment(spec)
    config = read_config(spec)
    text_encode = config["model"]["kwargs"]["text_encode"]
    text_encode["bpe_path"] = str(Path(src) / text_encode["bpe_path"])  # the trainer runs from the checkout's root
    torch.manual_seed(0)
    model = model_entry(config["model"])
    _feed_token_ids(model.encode_text)
    checkpoint = Path(spec["dir"]) / "official.pth"
    if not checkpoint.exists():
        torch.save({"last_iter": 0, "model": model.state_dict()}, checkpoint)
    criterion, clip = ClipInfoCELoss(), config["grad_clip"]

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        (logits_per_image, logits_per_text), _ = model(
            batch["pixel_values"], (batch["input_ids"], batch["attention_mask"])
        )
        value, _ = criterion(logits_per_image, logits_per_text)
        return value, value.item()

    def duties(before: bool) -> None:
        """The trainer's `param_clip_before` / `param_clip_after` for `logit_scale_param_value`: clamp the logit-scale
        parameter into [value, max_value] (it clamps before backward; the gradient does not depend on it)."""
        model.logit_scale.data.clamp_(min=clip["value"], max=clip["max_value"])

    loss.duties = duties
    return model, loss


def vlalign_model(spec: dict) -> tuple[torch.nn.Module, Callable]:
    from vlalign.convert.fdt import build_config, convert_state_dict, load_fdt_checkpoint
    from vlalign.models import FdtForPreTraining

    config = build_config(read_config(spec))
    original, _ = load_fdt_checkpoint(Path(spec["dir"]) / "official.pth")
    state_dict, unknown = convert_state_dict(original)
    if unknown:
        raise RuntimeError(f"official keys the converter does not know: {unknown}")
    model = FdtForPreTraining(config)
    state_dict["fdt_temperature"] = model.fdt.fdt_temperature  # the config's: the official step-0 temperature
    model.fdt.load_state_dict(state_dict, strict=True)

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        output = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        return output.loss, output.loss_itc.item()

    loss.duties = training_duties(model)
    return model, loss


if __name__ == "__main__":
    serve(official_model, vlalign_model)
