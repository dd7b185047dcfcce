"""One side of `eval_vs_official.py`: a process holding either the official ALBEF retrieval model and its
`Retrieval.py` `evaluation()` (imported from a local checkout, `--official-src`, in a Python with the official code's
dependencies; shims in `official_albef.py`) or vlalign's `AlbefForImageTextRetrieval` converted from the official
model's initial weights and `evaluate_retrieval`. It answers `{"cmd": "evaluate", "bf16": false, "k": 8}` with the
evaluation's wall time and recalls, and writes both score matrices to a safetensors file the driver compares.

Both sides see the same inputs: the official loader yields the pixel values vlalign's processor computes from the
dataset's images, and the official tokenizer call returns the ids vlalign's processor gives those captions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: imports name their folder
from against_official.official_albef import import_official, size_official_model
from against_official.worker_client import reply


class PrecomputedTokenizer:
    """Answers the official `tokenizer(texts, padding=..., max_length=30, ...)` with the ids vlalign's processor gave
    those captions (the official code tokenizes the whole caption list in consecutive slices)."""

    def __init__(self, texts: list[str], input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.row = {text: index for index, text in enumerate(texts)}
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def __call__(self, texts: list[str], **_kwargs) -> SimpleNamespace:
        rows = torch.tensor([self.row[text] for text in texts])
        encoded = SimpleNamespace(input_ids=self.input_ids[rows], attention_mask=self.attention_mask[rows])
        encoded.to = lambda device: encoded
        return encoded


class PrecomputedLoader:
    """What `evaluation()` reads of its data loader: `dataset.text`/`.image`, and `(images, ids)` batches."""

    def __init__(self, texts: list[str], pixel_values: torch.Tensor, batch_size: int):
        self.dataset = SimpleNamespace(text=texts, image=list(range(len(pixel_values))))
        self.pixel_values, self.batch_size = pixel_values, batch_size

    def __iter__(self):
        for start in range(0, len(self.pixel_values), self.batch_size):
            images = self.pixel_values[start : start + self.batch_size]
            yield images, torch.arange(start, start + len(images))


def official_evaluator(spec: dict, src: str):
    retrieval = import_official(src, "Retrieval")
    retrieval.args = SimpleNamespace(distributed=False)  # evaluation() reads the script's command-line flags
    size_official_model(sys.modules["models.model_retrieval"], spec["vision"])
    torch.manual_seed(0)
    config = dict(spec["yaml"], bert_config=str(Path(spec["dir"]) / "config_bert.json"))
    model = retrieval.ALBEF(config=config, text_encoder="bert-base-uncased", tokenizer=None)
    checkpoint = Path(spec["dir"]) / "official.pth"
    if not checkpoint.exists():
        torch.save({"model": model.state_dict()}, checkpoint)
    inputs = load_file(str(Path(spec["dir"]) / "inputs.safetensors"))
    texts = spec["texts"]
    tokenizer = PrecomputedTokenizer(texts, inputs["input_ids"], inputs["attention_mask"])
    loader = PrecomputedLoader(texts, inputs["pixel_values"], spec["batch_size"])

    def evaluate(k: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        score_i2t, score_t2i = retrieval.evaluation(model, loader, tokenizer, "cpu", {"k_test": k})
        recalls = retrieval.itm_eval(score_i2t, score_t2i, np.array(spec["txt2img"]), spec["img2txt"])
        return torch.from_numpy(score_i2t), torch.from_numpy(score_t2i), recalls

    return evaluate


def vlalign_evaluator(spec: dict):
    import datasets

    from vlalign.convert.albef import (
        build_config,
        convert_state_dict,
        load_converted_weights,
        load_original_checkpoint,
    )
    from vlalign.evaluation import evaluate_retrieval
    from vlalign.models import AlbefForImageTextRetrieval, AlbefProcessor

    directory = Path(spec["dir"])
    processor = AlbefProcessor.from_pretrained(directory / "processor")
    config = build_config(spec["yaml"], spec["bert"], processor.tokenizer)
    state_dict, _ = convert_state_dict(
        load_original_checkpoint(directory / "official.pth"), config, with_mlm_head=False
    )
    model = load_converted_weights(
        AlbefForImageTextRetrieval, config, state_dict, [r"_queue$", r"^queue_ptr$"], has_momentum=True
    )
    dataset = datasets.load_from_disk(str(directory / "dataset"))

    def evaluate(k: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        metrics = evaluate_retrieval(
            model, processor, dataset, k_test=k, batch_size=spec["batch_size"], return_scores=True, show_progress=False
        )
        recalls = {key: value for key, value in metrics.items() if key.endswith(("_r1", "_r5", "_r10", "_mean"))}
        return metrics["score_matrix_i2t"], metrics["score_matrix_t2i"], recalls

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["official", "vlalign"], required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--official-src")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.spec).read_text())
    evaluate = official_evaluator(spec, args.official_src) if args.impl == "official" else vlalign_evaluator(spec)
    reply(ready=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if command["bf16"] else contextlib.nullcontext()
        start = time.perf_counter()
        with autocast:
            score_i2t, score_t2i, recalls = evaluate(command["k"])
        seconds = time.perf_counter() - start
        save_file({"i2t": score_i2t.float(), "t2i": score_t2i.float()}, command["scores_path"])
        reply(seconds=seconds, recalls={key: float(value) for key, value in recalls.items()})


if __name__ == "__main__":
    main()
