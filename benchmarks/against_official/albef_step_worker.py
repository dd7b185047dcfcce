"""ALBEF's side of `vs_official.py`: `write_spec` (the driver's: configs and one batch) and a worker process
holding either the official ALBEF pretraining model (imported from a local checkout, `--official-src`, in a Python
environment with the transformers/timm it was written for) or vlalign's `AlbefForPreTraining` converted from the
official model's initial weights, answering the commands of `step_protocol.py`.

Nothing of the official repository is copied: its modules are imported from `--official-src` at run time, with
environment shims only (`official_albef.py`; here also a one-process gloo group that stands in for the distributed
gather of the queues).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.official_albef import import_official, size_official_model
from against_official.step_protocol import join_single_process_group, serve, training_duties
from common.albef_sizes import SIZES, TEXT_TOKENS, VOCAB_SIZE, official_bert_config, official_vision

IMAGE_SIZE = 256  # Pretrain.yaml's image_res


def write_spec(directory: Path, size: str, batch_size: int) -> Path:
    shape = SIZES[size]
    bert = official_bert_config(size)
    yaml = {  # configs/Pretrain.yaml, with the ViT's size (which the official constructor hard-codes) added
        "image_res": IMAGE_SIZE,
        "vision_width": shape.vision_width,
        "vision_depth": shape.vision_depth,
        "vision_heads": shape.vision_heads,
        "embed_dim": 256,
        "temp": 0.07,
        "mlm_probability": 0.15,
        "queue_size": 65536,
        "momentum": 0.995,
        "alpha": 0.4,
    }
    (directory / "config_bert.json").write_text(json.dumps(bert))
    spec = {
        "dir": str(directory),
        "yaml": yaml,
        "bert": bert,
        "alpha": 0.4,
        "lr": 1e-4,  # Pretrain.yaml's
        "vision": official_vision(size),
    }
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, VOCAB_SIZE, (batch_size, TEXT_TOKENS), generator=generator)
    input_ids[:, 0] = 101
    lengths = torch.randint(10, TEXT_TOKENS + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(TEXT_TOKENS)[None] < lengths[:, None]).long()
    batch = {
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": input_ids * attention_mask,
        "attention_mask": attention_mask,
    }
    save_file(batch, str(directory / "batch.safetensors"))
    path = directory / "spec.json"
    path.write_text(json.dumps(spec))
    return path


class TinyTokenizer:
    """The special-token ids and vocabulary size the official MLM masking reads from its tokenizer."""

    def __init__(self, vocab_size: int, pad: int = 0, cls: int = 101, mask: int = 103):
        self.vocab_size, self.pad_token_id, self.cls_token_id, self.mask_token_id = vocab_size, pad, cls, mask

    def __len__(self) -> int:
        return self.vocab_size


def official_model(spec: dict, src: str) -> tuple[torch.nn.Module, callable]:
    official = import_official(src, "models.model_pretrain")
    join_single_process_group(spec["dir"])
    size_official_model(official, spec["vision"])
    config = dict(spec["yaml"], bert_config=str(Path(spec["dir"]) / "config_bert.json"))
    torch.manual_seed(0)
    model = official.ALBEF(
        config=config,
        text_encoder="bert-base-uncased",
        tokenizer=TinyTokenizer(spec["bert"]["vocab_size"]),
        init_deit=False,
    )
    checkpoint = Path(spec["dir"]) / "official.pth"
    if not checkpoint.exists():
        torch.save({"model": model.state_dict()}, checkpoint)

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        text = SimpleNamespace(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss_mlm, loss_ita, loss_itm = model(batch["pixel_values"], text, alpha=spec["alpha"])
        return loss_mlm + loss_ita + loss_itm, loss_ita.item()

    return model, loss


def vlalign_model(spec: dict) -> tuple[torch.nn.Module, callable]:
    from vlalign.convert.albef import (
        build_config,
        convert_state_dict,
        load_converted_weights,
        load_original_checkpoint,
    )
    from vlalign.models import AlbefForPreTraining

    config = build_config(spec["yaml"], spec["bert"])
    config.text_config.cls_token_id, config.text_config.mask_token_id = 101, 103
    original = load_original_checkpoint(Path(spec["dir"]) / "official.pth")
    state_dict, _ = convert_state_dict(original, config, with_mlm_head=True)
    model = load_converted_weights(AlbefForPreTraining, config, state_dict, [], has_momentum=True)

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        output = model(**batch, alpha=spec["alpha"])
        return output.loss, output.loss_itc.item()

    loss.duties = training_duties(model)
    return model, loss


if __name__ == "__main__":
    serve(official_model, vlalign_model)
