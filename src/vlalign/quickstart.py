"""The main job on the embedded default, for any registered method: generate the synthetic dataset, pretrain a tiny
model with `AlignmentTrainer`, evaluate it with the standard retrieval protocol and zero-shot shape classification
(`eval_results.json`, what `vlalign push` publishes), save it with a model card, reload it
with the Auto classes, query it through the retrieval pipeline, and plot the results. Uses exactly the classes a real
COCO run uses; the method registry supplies the model, processor, tiny config and tuned recipe.

Every figure is printed and saved with its chance level (`chance` in `eval_results.json`): R@1 of a random ranking,
and 1 / classes for zero-shot shape classification and for its control, zero-shot colour classification."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from transformers import AutoModel, AutoProcessor, pipeline

from .convert.albef import check_image_size
from .data.collator import AlignmentCollator
from .data.synthetic import COLOR_TEMPLATES, make_synthetic_dataset, single_attribute_images
from .evaluation import evaluate_retrieval
from .hub import save_for_hub, training_args_summary
from .hub.push import card_kwargs, save_results, zero_shot_results
from .methods import Method, get_method
from .recipes import dataset_captions
from .threads import thread_limit
from .training.trainer import AlignmentTrainer, AlignmentTrainingArguments
from .visualization import plot_losses, plot_recalls, plot_text_to_image_results

DATASET_NAME = "vlalign synthetic shapes"
SYNTHETIC_DATA_NOTE = (
    "The built-in procedurally generated image-caption data of vlalign (`vlalign.data.synthetic`): {num_train} "
    "{image_size}-px images of one to three coloured shapes on a plain background, with two template captions each naming "
    "colours, shapes, sizes and positions. It is a smoke-test dataset: the model learns nothing about real images, and "
    "colour, background and position match most captions without shape."
)


@dataclass
class QuickstartSettings:
    """Sizes and recipe of the quick start. Unset recipe fields (None) take the method's tuned values
    (`Method.quickstart`, e.g. AdamW at 2e-3, 100-step warm-up, cosine decay, batches of 32; 600 steps for ALBEF and
    500 for FDT, under 3 minutes on 2 CPU cores); `config_overrides` go to the method's tiny config."""

    method: str = "albef"
    num_train: int = 3000
    num_test: int = 100
    image_size: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_steps: int | None = None
    bf16: bool | None = None
    temperature_learning_rate: float | None = None
    k_test: int | None = None
    seed: int = 0
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        recipe = get_method(self.method).quickstart
        for name in (
            "image_size", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "max_steps", "bf16",
            "temperature_learning_rate",
        ):  # fmt: skip
            if getattr(self, name) is None:
                setattr(self, name, getattr(recipe, name))
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, got {self.max_steps}.")


@dataclass
class QuickstartRun:
    method: Method
    dataset: DatasetDict
    processor: Any
    trainer: AlignmentTrainer
    metrics: dict
    train_seconds: float
    eval_seconds: float


def chance_recall_at_1(dataset) -> dict[str, float]:
    """R@1 of a random ranking, in percent: text retrieval hits if any of an image's captions comes first."""
    captions_per_image = sum(len(c) for c in dataset["captions"]) / len(dataset)
    num_texts = captions_per_image * len(dataset)
    return {"txt_r1": 100.0 * captions_per_image / num_texts, "img_r1": 100.0 / len(dataset)}


def color_zero_shot_results(model, processor, dataset) -> dict[str, Any] | None:
    """Zero-shot colour classification of the images of a synthetic split whose objects all have one colour: the
    control next to shape classification (a model that matches captions by colour alone scores here, not there)."""
    labelled = single_attribute_images(dataset, "color")
    name = f"{DATASET_NAME}, single-colour images ({len(labelled)} of {len(dataset)})"
    return zero_shot_results(model, processor, labelled, dataset_name=name, templates=COLOR_TEMPLATES)


def chance_levels(dataset, zero_shot: dict | None, zero_shot_color: dict | None) -> dict[str, float]:
    """The chance level of every reported figure, in percent: `chance_recall_at_1`'s R@1 and, for each zero-shot
    result present, the top-1 accuracy of a uniform guess (`zero_shot_top1_accuracy`, `zero_shot_color_top1_accuracy`)."""
    chance = chance_recall_at_1(dataset)
    for key, result in (("zero_shot", zero_shot), ("zero_shot_color", zero_shot_color)):
        if result is not None:
            chance[f"{key}_top1_accuracy"] = 100.0 / result["num_classes"]
    return chance


def pretrain_synthetic(output_dir: str | Path, settings: QuickstartSettings | None = None) -> QuickstartRun:
    """Pretrain the method's tiny model on the synthetic train split with every official objective, then evaluate
    retrieval on the test split (ITC ranking, ITM re-rank where the model has ITM)."""
    settings = settings or QuickstartSettings()
    method = get_method(settings.method)
    dataset = make_synthetic_dataset(
        num_train=settings.num_train, num_validation=50, num_test=settings.num_test,
        image_size=settings.image_size, seed=settings.seed,
    )  # fmt: skip
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), settings.image_size)
    torch.manual_seed(settings.seed)
    overrides = dict(settings.config_overrides)
    if settings.k_test is not None:
        overrides["k_test"] = settings.k_test
    config = method.tiny_config(processor.tokenizer, settings.image_size, **overrides)
    check_image_size(config.vision_config)
    model = method.pretraining_class(config)
    args = AlignmentTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=settings.bf16,
        temperature_learning_rate=settings.temperature_learning_rate,
        seed=settings.seed,
        dataloader_num_workers=0,
    )
    # No random crops or flips: synthetic captions name positions ("on the left"), which those would falsify.
    collator = AlignmentCollator(
        processor,
        preset="pretrain",
        text_column="captions",
        **method.pretraining_collator_kwargs(model.config, processor, dataset["train"]),
    )
    trainer = AlignmentTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        data_collator=collator,
        processing_class=processor,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_retrieval(model, processor, dataset["test"], k_test=settings.k_test)
    eval_seconds = time.perf_counter() - start
    return QuickstartRun(method, dataset, processor, trainer, metrics, train_seconds, eval_seconds)


def run_quickstart(
    output_dir: str | Path = "quickstart_output",
    settings: QuickstartSettings | None = None,
    num_threads: int | None = None,
) -> dict:
    """Train → evaluate → save (safetensors, processor, card) → reload → retrieve → plot. Returns a summary.

    Runs on `num_threads` torch threads (default: `vlalign.threads.configure_threads`'s choice from the CPUs this
    process can use); torch's thread count is restored afterwards."""
    with thread_limit(num_threads):
        return _run_quickstart(Path(output_dir), settings)


def _run_quickstart(output_dir: Path, settings: QuickstartSettings | None) -> dict:
    settings = settings or QuickstartSettings()
    start = time.perf_counter()
    method = get_method(settings.method)
    print(f"[1/5] Generating the synthetic dataset and pretraining a tiny {method.name} ({settings.max_steps} steps)")
    run = pretrain_synthetic(output_dir / "checkpoints", settings)
    if not any((output_dir / "checkpoints").iterdir()):  # the Trainer's output_dir; nothing is checkpointed
        (output_dir / "checkpoints").rmdir()
    test = run.dataset["test"]
    metrics = {k: v for k, v in run.metrics.items() if not torch.is_tensor(v)}
    zero_shot = zero_shot_results(run.trainer.model, run.processor, test, dataset_name=DATASET_NAME)
    zero_shot_color = color_zero_shot_results(run.trainer.model, run.processor, test)
    chance = chance_levels(test, zero_shot, zero_shot_color)
    results = {
        "dataset_name": DATASET_NAME,
        "dataset_split": "test",
        "retrieval": metrics,
        "zero_shot": zero_shot,
        "zero_shot_color": zero_shot_color,
        "chance": chance,
        "training_args": dict(training_args_summary(run.trainer)),
        "training_data": SYNTHETIC_DATA_NOTE.format(num_train=settings.num_train, image_size=settings.image_size),
    }

    print("[2/5] Saving model, processor, model card and results")
    model_dir = save_for_hub(
        run.trainer.model,
        run.processor,
        output_dir / "model",
        model_id=f"vlalign/{method.name}-tiny-synthetic",
        exist_ok=True,
        **card_kwargs(results),
    )
    save_results(results, model_dir)

    print("[3/5] Reloading with AutoModel / AutoProcessor and querying the retrieval pipeline")
    reloaded = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    retriever = pipeline("zero-shot-image-text-retrieval", model=reloaded, processor=processor)
    queries = [captions[0] for captions in test.select(range(5))["captions"]]
    rerank = method.supports_itm_rerank
    protocol = "ITC top-k, ITM re-rank" if rerank else "embedding cosine ranking"
    text_results = retriever(queries, candidate_images=list(test["image"]), top_k=5, rerank=rerank)
    for query, ranked in zip(queries, text_results, strict=True):
        hits = ", ".join(f"#{hit['image_index']} ({hit['score']:.2f})" for hit in ranked)
        print(f"  {query!r} -> {hits}  [own image: #{queries.index(query)}]")
    image_results = retriever(test[0]["image"], candidate_texts=[c for cs in test["captions"] for c in cs], top_k=3)
    print(f"  test image #0 -> {[hit['text'] for hit in image_results]}")

    print("[4/5] Plotting")
    plots = [
        plot_losses(run.trainer.state.log_history, output_dir / "losses.png"),
        plot_recalls(metrics, chance, output_dir / "recalls.png", protocol),
        plot_text_to_image_results(queries, text_results, test["image"], output_dir / "text_to_image_top5.png",
                                   ground_truth=list(range(len(queries)))),
    ]  # fmt: skip
    if method.example_plots is not None:
        plots += method.example_plots(reloaded, processor, test, output_dir, run.trainer.state.log_history)

    total = time.perf_counter() - start
    summary = {
        "metrics": metrics,
        "chance_r1": {key: chance[key] for key in ("txt_r1", "img_r1")},
        "chance": chance,
        "zero_shot": zero_shot,
        "zero_shot_color": zero_shot_color,
        "train_seconds": round(run.train_seconds, 1),
        "eval_seconds": round(run.eval_seconds, 1),
        "total_seconds": round(total, 1),
        "model_dir": str(model_dir),
        "plots": [str(p) for p in plots],
        "settings": asdict(settings),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[5/5] Results on the synthetic test split ({protocol})")
    for prefix, name in (("txt", "text retrieval  (image -> text)"), ("img", "image retrieval (text -> image)")):
        recalls = "  ".join(f"R@{k} {metrics[f'{prefix}_r{k}']:5.1f}" for k in (1, 5, 10))
        ratio = metrics[f"{prefix}_r1"] / chance[f"{prefix}_r1"]
        print(f"  {name}: {recalls}   (R@1 chance {chance[f'{prefix}_r1']:.1f}%, {ratio:.0f}x chance)")
    for key, attribute in (("zero_shot", "shape"), ("zero_shot_color", "colour")):
        result = results[key]
        if result is None:
            continue
        accuracy, level = result["top1_accuracy"], chance[f"{key}_top1_accuracy"]
        print(
            f"  zero-shot {attribute} classification of the {result['num_images']} of {len(test)} test images whose "
            f"objects all have one {attribute} ({result['num_classes']} classes, {len(result['templates'])} prompt "
            f"templates): top-1 {accuracy:.1f}% (chance {level:.1f}%, {accuracy / level:.1f}x chance)"
        )
    if zero_shot is not None and zero_shot["top1_accuracy"] < 2 * chance["zero_shot_top1_accuracy"]:
        print(
            "  the shape accuracy is under 2x chance: this model matches captions by colour, background and position, "
            "not by shape; train longer (--max-steps) or check the recipe"
        )
    print(f"  wall time {total:.0f}s (training {run.train_seconds:.0f}s); model, card and plots in {output_dir}/")
    return summary


__all__ = [
    "QuickstartRun",
    "QuickstartSettings",
    "chance_levels",
    "chance_recall_at_1",
    "color_zero_shot_results",
    "pretrain_synthetic",
    "run_quickstart",
]
