"""One side of `benchmarks/vs_official.py`: a process holding either the official ALBEF pretraining model (imported
from a local checkout, `--official-src`, in a Python environment with the transformers/timm it was written for) or
vlalign's `AlbefForPreTraining` converted from the official model's initial weights. It answers JSON commands on
stdin (`{"cmd": "steps", "n": 3, "bf16": false}`, `{"cmd": "itc"}`, `{"cmd": "rss"}`, `{"cmd": "quit"}`) with JSON lines on stdout
prefixed by `@@`, so the driver can interleave the two implementations step by step in one run.

Nothing of the official repository is copied: its modules are imported from `--official-src` at run time, with
environment shims only (`official_albef.py`; here also a one-process gloo group that stands in for the distributed
gather of the queues).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from official_albef import import_official, size_official_model
from worker_client import reply


def current_rss_mib() -> float:
    """This process's resident memory now (Linux `/proc/self/status`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status (Linux only)")


class TinyTokenizer:
    """The special-token ids and vocabulary size the official MLM masking reads from its tokenizer."""

    def __init__(self, vocab_size: int, pad: int = 0, cls: int = 101, mask: int = 103):
        self.vocab_size, self.pad_token_id, self.cls_token_id, self.mask_token_id = vocab_size, pad, cls, mask

    def __len__(self) -> int:
        return self.vocab_size


def official_model(spec: dict, src: str) -> tuple[torch.nn.Module, callable]:
    official = import_official(src, "models.model_pretrain")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{spec['dir']}/gloo_init", rank=0, world_size=1)
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
        return loss_mlm + loss_ita + loss_itm, float(loss_ita)

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
    step = {"count": 0}

    def loss(batch: dict) -> tuple[torch.Tensor, float]:
        output = model(**batch, alpha=spec["alpha"])
        return output.loss, float(output.loss_itc)

    def duties(before: bool) -> None:
        (model.before_optimizer_step if before else model.after_optimizer_step)(step["count"])
        step["count"] += not before

    loss.duties = duties
    return model, loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["official", "vlalign"], required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--official-src")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.spec).read_text())
    from safetensors.torch import load_file

    model, loss_fn = official_model(spec, args.official_src) if args.impl == "official" else vlalign_model(spec)
    model.train()
    batch = load_file(str(Path(spec["dir"]) / "batch.safetensors"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"], weight_decay=0.02)
    duties = getattr(loss_fn, "duties", None)
    reply(ready=True, parameters=sum(p.numel() for p in model.parameters()), rss_mib=current_rss_mib())
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "rss":
            reply(peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            continue
        if command["cmd"] == "itc":  # dropout off: the ITC loss is then a deterministic function of the weights
            model.eval()
            with torch.no_grad():
                reply(loss_itc=loss_fn(batch)[1])
            model.train()
            continue
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if command["bf16"] else contextlib.nullcontext()
        itc, losses = [], []
        start = time.perf_counter()
        for _ in range(command["n"]):
            with autocast:
                loss, loss_itc = loss_fn(batch)
            loss.backward()
            if duties:
                duties(before=True)
            optimizer.step()
            if duties:
                duties(before=False)
            optimizer.zero_grad(set_to_none=True)
            itc.append(loss_itc)
            losses.append(loss.item())
        reply(seconds_per_step=(time.perf_counter() - start) / command["n"], loss_itc=itc, loss=losses)


if __name__ == "__main__":
    main()
