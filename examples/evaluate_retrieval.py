"""Evaluate image-text retrieval of any vlalign model (ALBEF, CODIS, FDT, SIMLA): R@1/5/10 in both directions.

Loads the encoders (`AutoModel`) and processor (`AutoProcessor`) of any vlalign folder or Hub id, whatever the
method and head (pretraining or retrieval: converted official checkpoints, `examples/pretrain.py` or
`examples/finetune_retrieval.py` outputs), ranks by the embedding cosine (ITC) and, where the model has an ITM head
(ALBEF, CODIS, SIMLA), re-ranks each query's top k_test with it, as ALBEF's official evaluation does. Prints the R@K
table and writes it as JSON. Under `torchrun` / `accelerate launch` every process encodes all images and captions
and the ITM re-rank, the expensive part, is split across the processes; only the first process prints and writes.

Synthetic shapes test split (default; no download), e.g. on the output of `examples/pretrain.py --tiny`:

    python examples/evaluate_retrieval.py --model_name_or_path /tmp/ex_pre --num_test 100 --k_test 16
    python examples/evaluate_retrieval.py --model_name_or_path /tmp/ex_pre_fdt --num_test 100
    python examples/evaluate_retrieval.py --model_name_or_path /tmp/ex_pre_codis --num_test 100 --k_test 16
    python examples/evaluate_retrieval.py --model_name_or_path /tmp/ex_pre_simla --num_test 100 --k_test 16
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 examples/evaluate_retrieval.py \
        --model_name_or_path /tmp/ex_pre --num_test 100 --k_test 16

COCO 5k test (Karpathy `coco_test.json` from ALBEF's data.tar.gz; k_test 256, Flickr30k 1k test: 128), 8 GPUs:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/evaluate_retrieval.py \
        --model_name_or_path out/albef-coco-retrieval --test_json data/coco_test.json --image_root /datasets/coco \
        --k_test 256 --output_file out/albef-coco-retrieval/coco_test_retrieval.json

CODIS follows ALBEF's protocol; its codebook plays no part in ranking. Zero-shot as the paper reports it: COCO 5K
with the pretrained folder, Flickr30K 1K with the COCO-fine-tuned one (ViCHA describes this protocol for ALBEF, TCL
and CODIS):

    python examples/evaluate_retrieval.py --model_name_or_path out/codis-4m --test_json data/coco_test.json \
        --image_root /datasets/coco --k_test 256
    python examples/evaluate_retrieval.py --model_name_or_path out/codis-coco-retrieval \
        --test_json data/flickr30k_test.json --image_root /datasets/flickr30k --k_test 128

SIMLA follows ALBEF's protocol too (ITC top-k_test, re-scored by the ITM logit of the single-stream pass; k_test 256
on COCO, 128 on Flickr30K, as in its Retrieval_*.yaml). Note that SIMLA's release reports COCO on the 2017 val split
(docs/reproducing.md), not the Karpathy 5K test split used here:

    python examples/evaluate_retrieval.py --model_name_or_path out/simla-coco-retrieval \
        --test_json data/coco_test.json --image_root /datasets/coco --k_test 256

FDT (a dual encoder: cosine ranking only; its official zero-shot protocol on the same Karpathy json):

    python examples/evaluate_retrieval.py --model_name_or_path out/fdt-cc3m --test_json data/coco_test.json \
        --image_root /datasets/coco --output_file out/fdt-cc3m/coco_test_retrieval.json

An ALBEF, CODIS or SIMLA pretrained (256 px) folder evaluated zero-shot at the fine-tuning resolution: add
`--image_size 384` (position embeddings are interpolated; methods without `set_image_size`, such as FDT, are
evaluated at their own resolution only). `--itc_only` ranks by ITC alone (no fusion forwards; fast); dual encoders
always do.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from transformers import AutoConfig, AutoModel, AutoProcessor, HfArgumentParser

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.evaluation import evaluate_retrieval
from vlalign.methods import method_of
from vlalign.training.argument_checks import ArgumentError, check_image_size, check_not_empty
from vlalign.training.script_helpers import check_images_field, on_error_field, parse_checked, run_script

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "vlalign folder or Hub id (any method, any head)."})
    dataset: str = field(default="synthetic", metadata={"help": "'synthetic' or 'json' (implied by --test_json)."})
    test_json: str | None = field(
        default=None,
        metadata={"help": "Karpathy eval json: [{image, caption: [str, ...]}, ...] (e.g. coco_test.json)."},
    )
    image_root: str = field(default="", metadata={"help": "Directory the json image paths are relative to."})
    split: str = field(
        default="test", metadata={"help": "Synthetic split to evaluate.", "choices": ["test", "validation"]}
    )
    num_test: int = field(default=200, metadata={"help": "Images of the synthetic split."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data."})
    k_test: int | None = field(
        default=None, metadata={"help": "ITM re-rank candidates (default: config.k_test; models with ITM only)."}
    )
    itc_only: bool = field(default=False, metadata={"help": "Rank by ITC cosine only (no ITM re-rank)."})
    score_mode: str | None = field(
        default=None,
        metadata={
            "help": "Re-rank score (default: config.itm_score_mode; models with ITM only).",
            "choices": ["itm_logit", "itm_plus_itc"],
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Evaluation resolution (default: the model's); interpolates position embeddings, for methods "
            "that support it (ALBEF, CODIS, SIMLA)."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images / captions per encoder forward."})
    rerank_batch_size: int = field(default=256, metadata={"help": "Image-text pairs per fusion (ITM) forward."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype.", "choices": list(DTYPES)})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even when an accelerator is present."})
    on_error: str = on_error_field()
    check_images: str = check_images_field()
    output_file: str = field(
        default="retrieval_results.json", metadata={"help": "Where the first process writes JSON."}
    )

    def __post_init__(self):
        if self.test_json:
            self.dataset = "json"
        if self.dataset not in ("synthetic", "json"):
            raise ValueError(f"--dataset must be 'synthetic' or 'json', got {self.dataset!r}")
        if self.dataset == "json" and not self.test_json:
            raise ValueError("--dataset json needs --test_json")


def format_table(metrics: dict) -> str:
    rows = [f"{'':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'mean':>8}"]
    for label, key in (("text  (i2t)", "txt"), ("image (t2i)", "img")):
        values = [metrics[f"{key}_r{k}"] for k in (1, 5, 10)] + [metrics[f"{key}_r_mean"]]
        rows.append(f"{label:<16}" + "".join(f"{value:>8.2f}" for value in values))
    rows.append(f"{'r_mean':<16}{metrics['r_mean']:>32.2f}")
    return "\n".join(rows)


def main() -> None:
    (args,) = parse_checked(HfArgumentParser(EvalArguments), sys.argv[1:])
    # Initialises torch.distributed under torchrun / accelerate launch, so evaluate_retrieval shards the re-rank.
    # Without an accelerator (or with --use_cpu) it must be told: then processes talk over gloo.
    state = PartialState(cpu=args.use_cpu or not torch.accelerator.is_available())
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    logger.setLevel(logging.INFO if state.is_main_process else logging.WARNING)
    logger.info("%d process(es), %s, device %s", state.num_processes, state.distributed_type, state.device)

    if args.dataset == "synthetic":
        sizes = {"num_train": 0, "num_validation": 0, "num_test": 0, f"num_{args.split}": args.num_test}
        dataset = make_synthetic_dataset(**sizes, seed=args.synthetic_seed)[args.split]
        source = f"synthetic {args.split} split (seed {args.synthetic_seed})"
    else:
        dataset = load_karpathy_json(
            args.test_json, args.image_root, "eval", on_error=args.on_error, check_images=args.check_images
        )
        source = args.test_json
    check_not_empty(len(dataset), source, "pass --num_test 1 or more, or a --test_json with images and captions")

    config = AutoConfig.from_pretrained(args.model_name_or_path)
    method = method_of(config)
    image_size = args.image_size or config.vision_config.image_size
    if image_size != config.vision_config.image_size:  # checked before the model is loaded
        if not hasattr(method.model_class, "set_image_size"):
            raise ArgumentError(
                f"--image_size {image_size} is unsupported for {method.name} (no position-embedding interpolation); "
                f"it evaluates at its own {config.vision_config.image_size} px"
            )
        check_image_size(image_size, config.vision_config)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    model = AutoModel.from_pretrained(args.model_name_or_path, config=config, dtype=DTYPES[args.dtype])
    if image_size != model.config.vision_config.image_size:
        model.set_image_size(image_size)
        processor = method.build_processor(processor.tokenizer, image_size)
    rerank = method.supports_itm_rerank and not args.itc_only
    if not method.supports_itm_rerank and (args.k_test is not None or args.score_mode is not None):
        logger.warning("%s has no ITM head: --k_test and --score_mode are ignored (cosine ranking)", method.name)
    model.to(state.device).eval()

    start = time.perf_counter()
    metrics = evaluate_retrieval(
        model,
        processor,
        dataset,
        k_test=args.k_test,
        itc_only=args.itc_only,
        score_mode=args.score_mode,
        batch_size=args.batch_size,
        rerank_batch_size=args.rerank_batch_size,
        show_progress=state.is_main_process,
    )
    seconds = time.perf_counter() - start

    if state.is_main_process:
        ranking = f"ITM re-rank of the top {args.k_test or model.config.k_test}" if rerank else "ITC (cosine) only"
        print(
            f"\n{source}: {metrics['num_images']} images, {metrics['num_texts']} captions, {ranking}, "
            f"{state.num_processes} process(es), {seconds:.1f} s"
        )
        print(format_table(metrics))
        result = {
            "metrics": metrics,
            "model": args.model_name_or_path,
            "method": method.name,
            "data": source,
            "image_size": image_size,
            "num_processes": state.num_processes,
            "seconds": round(seconds, 2),
            "arguments": asdict(args),
        }
        with open(args.output_file, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.output_file}")
    state.wait_for_everyone()
    state.destroy_process_group()


if __name__ == "__main__":
    run_script(main)
