"""The main job on the embedded default: generate the synthetic dataset, pretrain a tiny ALBEF with `AlbefTrainer`,
and evaluate it with the standard retrieval protocol. Uses exactly the classes a real COCO run uses."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import DatasetDict

from .data.collator import AlbefCollator
from .data.synthetic import make_synthetic_dataset
from .evaluation import evaluate_retrieval
from .models import AlbefForPreTraining, AlbefProcessor
from .recipes import albef_processor, build_tokenizer, dataset_captions, tiny_albef_config
from .training.trainer import AlbefTrainer, AlbefTrainingArguments


@dataclass
class QuickstartSettings:
    """Sizes and recipe of the quick start (DESIGN §7: lr 1e-3 with warm-up and cosine decay learns in ~2 min)."""

    num_train: int = 3000
    num_test: int = 100
    image_size: int = 64
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    max_steps: int = 700
    k_test: int = 16
    seed: int = 0


@dataclass
class QuickstartRun:
    dataset: DatasetDict
    processor: AlbefProcessor
    trainer: AlbefTrainer
    metrics: dict
    train_seconds: float
    eval_seconds: float


def chance_recall_at_1(dataset) -> dict[str, float]:
    """R@1 of a random ranking, in percent: text retrieval hits if any of an image's captions comes first."""
    captions_per_image = sum(len(c) for c in dataset["captions"]) / len(dataset)
    num_texts = captions_per_image * len(dataset)
    return {"txt_r1": 100.0 * captions_per_image / num_texts, "img_r1": 100.0 / len(dataset)}


def pretrain_synthetic(output_dir: str | Path, settings: QuickstartSettings | None = None) -> QuickstartRun:
    """Pretrain a tiny ALBEF on the synthetic train split with every official objective, then evaluate retrieval
    (ITC top-k + ITM re-rank) on the test split."""
    settings = settings or QuickstartSettings()
    dataset = make_synthetic_dataset(
        num_train=settings.num_train, num_validation=50, num_test=settings.num_test,
        image_size=settings.image_size, seed=settings.seed,
    )  # fmt: skip
    processor = albef_processor(build_tokenizer(dataset_captions(dataset)), settings.image_size)
    torch.manual_seed(settings.seed)
    model = AlbefForPreTraining(tiny_albef_config(processor.tokenizer, settings.image_size, k_test=settings.k_test))
    args = AlbefTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=64,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        weight_decay=0.02,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="cosine",
        logging_steps=25,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=settings.seed,
        dataloader_num_workers=0,
    )
    # No random crops or flips: synthetic captions name positions ("on the left"), which those would falsify.
    collator = AlbefCollator(processor, preset="pretrain", text_column="captions")
    trainer = AlbefTrainer(
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
    return QuickstartRun(dataset, processor, trainer, metrics, train_seconds, eval_seconds)


__all__ = ["QuickstartRun", "QuickstartSettings", "chance_recall_at_1", "pretrain_synthetic"]
