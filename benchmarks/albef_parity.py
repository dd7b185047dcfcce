"""Parity table: vlalign's ALBEF against the official code's golden outputs (tests/fixtures/albef).

Converts the fixture checkpoint with `vlalign convert`, runs the recorded inputs, and prints (and writes as JSON)
the max |difference| of every deterministic quantity the official code recorded.

    python benchmarks/albef_parity.py [--output benchmarks/results/albef_parity.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoProcessor

import vlalign
from vlalign.data.loaders import load_karpathy_json
from vlalign.evaluation import evaluate_retrieval

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "albef"


def convert(output: Path, yaml_file: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "vlalign", "convert", "--method", "albef",
         "--checkpoint", str(FIXTURES / "original" / "checkpoint.pth"), "--config", str(yaml_file),
         "--output", str(output)],
        check=True, capture_output=True,
    )  # fmt: skip


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def pretraining_rows(folder: Path) -> list[tuple[str, float]]:
    inputs, expected = load_file(FIXTURES / "inputs.safetensors"), load_file(FIXTURES / "outputs.safetensors")
    model = AutoModelForPreTraining.from_pretrained(folder).train()
    albef, pixels, ids, mask = model.albef, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    image = albef.vision_model(pixels).last_hidden_state
    text = albef.text_model(ids, mask).last_hidden_state
    rows = [
        ("image_embeds (ViT sequence)", max_diff(image, expected["image_embeds"])),
        ("text_embeds (text encoder)", max_diff(text, expected["text_embeds"])),
        ("image_feat", max_diff(torch.nn.functional.normalize(albef.vision_proj(image[:, 0]), dim=-1),
                                expected["image_feat"])),
        ("text_feat", max_diff(torch.nn.functional.normalize(albef.text_proj(text[:, 0]), dim=-1),
                               expected["text_feat"])),
        ("itm_logits_pos", max_diff(albef.itm_logits(text, mask, image), expected["itm_logits_pos"])),
        ("itm_logits_shift1", max_diff(albef.itm_logits(text.roll(-1, 0), mask.roll(-1, 0), image),
                                       expected["itm_logits_shift1"])),
        ("mlm_logits_m", max_diff(model.mlm_logits(inputs["mlm_input_ids"], mask,
                                                   model.vision_model_m(pixels).last_hidden_state, momentum=True),
                                  expected["mlm_logits_m"])),
    ]  # fmt: skip
    model.momentum_update()
    kwargs = dict(mlm_input_ids=inputs["mlm_input_ids"], mlm_labels=inputs["mlm_labels"])
    out = model(pixels, ids, mask, alpha=0.4, **kwargs)
    out0 = model(pixels, ids, mask, alpha=0.0, **kwargs)
    _, image_m, text_m = model._encode_momentum(pixels, ids, mask, False)
    temp = albef.temp
    rows += [
        ("image_feat_m", max_diff(out.image_feat_m, expected["image_feat_m"])),
        ("text_feat_m", max_diff(out.text_feat_m, expected["text_feat_m"])),
        ("sim_i2t (with queue)", max_diff(out.sim_i2t, expected["sim_i2t"])),
        ("sim_t2i (with queue)", max_diff(out.sim_t2i, expected["sim_t2i"])),
        ("sim_i2t_m", max_diff(image_m @ torch.cat([text_m.t(), model.text_queue], 1) / temp, expected["sim_i2t_m"])),
        ("sim_t2i_m", max_diff(text_m @ torch.cat([image_m.t(), model.image_queue], 1) / temp, expected["sim_t2i_m"])),
        ("loss_itc, alpha 0.4", max_diff(out.loss_itc, expected["loss_ita"])),
        ("loss_itc, alpha 0", max_diff(out0.loss_itc, expected["loss_ita_alpha0"])),
        ("mlm_logits", max_diff(out.mlm_logits, expected["mlm_logits"])),
        ("loss_mlm, alpha 0.4", max_diff(out.loss_mlm, expected["loss_mlm_alpha04"])),
        ("loss_mlm, alpha 0", max_diff(out0.loss_mlm, expected["loss_mlm_alpha0"])),
    ]
    model.enqueue(out.image_feat_m, out.text_feat_m)
    rows += [
        ("image_queue after enqueue", max_diff(model.image_queue, expected["image_queue"])),
        ("text_queue after enqueue", max_diff(model.text_queue, expected["text_queue"])),
        ("queue_ptr", max_diff(model.queue_ptr, expected["queue_ptr"])),
    ]
    processor = AutoProcessor.from_pretrained(folder)
    meta = json.loads((FIXTURES / "meta.json").read_text())
    batch = processor(text=meta["captions_raw"], preset="pretrain")
    rows.append(("processor input_ids (pretrain)", max_diff(batch["input_ids"], inputs["input_ids"])))
    return rows


def retrieval_rows(folder: Path, resolution: int) -> list[tuple[str, float]]:
    expected = load_file(FIXTURES / "retrieval" / f"retrieval_outputs_res{resolution}.safetensors")
    model = vlalign.AlbefForImageTextRetrieval.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    dataset = load_karpathy_json(FIXTURES / "retrieval" / "test.json", FIXTURES / "retrieval")
    batch = processor(images=list(dataset["image"]), text=[c for cs in dataset["captions"] for c in cs])
    result = evaluate_retrieval(model, processor, dataset, k_test=4, return_scores=True, show_progress=False)
    rows = [
        (f"[{resolution}px] pixel_values", max_diff(batch["pixel_values"], expected["retrieval_pixel_values"])),
        (f"[{resolution}px] input_ids (eval)", max_diff(batch["input_ids"], expected["retrieval_input_ids"])),
        (f"[{resolution}px] pos_embed loaded", max_diff(model.albef.vision_model.embeddings.position_embeddings,
                                                        expected["visual_encoder_pos_embed_loaded"])),
        (f"[{resolution}px] ITC similarity matrix", max_diff(result["similarities"], expected["retrieval_sims_matrix"])),
    ]  # fmt: skip
    for name in ("score_matrix_i2t", "score_matrix_t2i"):
        reranked = expected[name] > -100
        assert torch.equal(result[name] > -100, reranked), f"{name}: different top-k entries"
        rows.append((f"[{resolution}px] {name} (top-k entries)", max_diff(result[name][reranked],
                                                                          expected[name][reranked])))  # fmt: skip
    reference = json.loads((FIXTURES / "retrieval" / "retrieval_metrics.json").read_text())
    stable = reference[f"res{resolution}"]["itm_eval_with_stable_argsort"]
    rows.append((f"[{resolution}px] recall metrics (9 values)", max(abs(result[k] - v) for k, v in stable.items())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "albef_parity.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        convert(tmp / "pretrain", FIXTURES / "original" / "Pretrain.yaml")
        rows = pretraining_rows(tmp / "pretrain")
        for resolution in (32, 48):
            convert(tmp / f"retrieval{resolution}", FIXTURES / "retrieval" / f"Retrieval_res{resolution}.yaml")
            rows += retrieval_rows(tmp / f"retrieval{resolution}", resolution)
    width = max(len(name) for name, _ in rows)
    print(f"| {'quantity'.ljust(width)} | max abs diff |\n|{'-' * (width + 2)}|--------------|")
    for name, diff in rows:
        print(f"| {name.ljust(width)} | {diff:.2e} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(dict(rows), indent=1))
    worst = max(diff for _, diff in rows)
    print(f"\nworst: {worst:.2e} (tolerance 1e-5) -> {'PASS' if worst <= 1e-5 else 'FAIL'}; wrote {args.output}")


if __name__ == "__main__":
    main()
