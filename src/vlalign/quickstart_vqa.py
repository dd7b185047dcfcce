"""`vlalign quickstart --task vqa`: visual question answering on the embedded default, for ALBEF, SIMLA and CODIS.

Starts from a quick-start pretraining run (`vlalign quickstart`'s saved model, or a pretraining run made here first,
timed apart), fine-tunes the method's `<Method>ForQuestionAnswering` on the built-in synthetic VQA set
(`vlalign.data.synthetic_vqa`) with `AlignmentTrainer`, answers the test questions by the official ranking over the
answer list (`evaluate_vqa`), and prints the VQA accuracy beside the majority-answer baseline, overall and per question
type. It then saves model, processor, card and `eval_results.json`, reloads the folder with
`AutoModelForVisualQuestionAnswering`, answers a few questions through `pipeline("visual-question-answering")`, and
draws them. The same classes serve real VQA v2 fine-tuning (`examples/finetune_vqa.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline

from .convert.vqa_init import load_vqa_model, vqa_model_from_pretrained
from .data.synthetic_vqa import make_synthetic_vqa_dataset
from .data.vqa import VqaCollator, build_answer_list
from .evaluation.vqa import evaluate_vqa, majority_answer_baseline
from .hub import save_for_hub, training_args_summary
from .hub.push import card_kwargs, save_results
from .methods import get_method, method_of
from .metrics.vqa_accuracy.vqa_accuracy import vqa_accuracy
from .quickstart import QuickstartSettings, pretrain_synthetic
from .recipes.albef import learn_words
from .threads import thread_limit
from .training.trainer import AlignmentTrainer, AlignmentTrainingArguments
from .visualization import plot_losses, plot_vqa_answers

DATASET_NAME = "vlalign synthetic VQA"
SYNTHETIC_VQA_NOTE = (
    "The built-in synthetic VQA set of vlalign (`vlalign.data.synthetic_vqa`): {num_questions} questions about "
    "{num_train} {image_size}-px images of one to three coloured shapes (colour, shape, count, position, background), "
    "ten human-style answers each. A smoke-test dataset: the model learns nothing about real images."
)
#: test questions answered through the pipeline and drawn
SHOWN_QUESTIONS = 8


@dataclass
class VqaQuickstartSettings:
    """Sizes and recipe of the VQA quick start. Unset recipe fields (None) take the method's tuned values
    (`Method.vqa_quickstart`). `pretrained`: the folder of a quick-start pretraining run of the method (default
    `quickstart_output/model` beside the output folder); without one, a pretraining run is made first."""

    method: str = "albef"
    pretrained: str | None = None
    num_train: int = 3000
    num_test: int = 200
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_steps: int | None = None
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        recipe = get_method(self.method).vqa_quickstart
        if recipe is None:
            raise ValueError(f"{self.method} has no visual question answering model; pick albef, codis or simla.")
        for name in ("batch_size", "learning_rate", "warmup_steps", "weight_decay", "max_steps", "k"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(recipe, name))
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, got {self.max_steps}.")


def start_model(settings: VqaQuickstartSettings, output_dir: Path) -> tuple[Any, Any, str, float | None]:
    """(VQA model, processor, where it started from, seconds spent pretraining or None): from the pretrained folder
    when it holds the method's model, else from a quick-start pretraining run made now."""
    return start_from_pretraining(
        settings.method, settings.pretrained, settings.seed, output_dir, load_vqa_model, vqa_model_from_pretrained
    )


def start_from_pretraining(
    method: str,
    pretrained: str | None,
    seed: int,
    output_dir: Path,
    load: Callable[[Path, Any], Any],
    from_model: Callable[[Any], Any],
) -> tuple[Any, Any, str, float | None]:
    """(task model, processor, where it started from, seconds spent pretraining or None) of a fine-tuning quick start:
    `load(folder, config)` of the `pretrained` folder (default: an earlier run's `output_dir/pretrained`, else
    `quickstart_output/model` beside `output_dir`) when it holds a `method` model, else `from_model` of a quick-start
    pretraining run made now (kept in `output_dir/pretrained`)."""
    own = output_dir / "pretrained"  # a pretraining run an earlier quick start made
    folder = Path(pretrained or (own if own.is_dir() else output_dir.parent / "quickstart_output" / "model"))
    if (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(folder)
        found = method_of(config).name
        if found == method:
            return load(folder, config), AutoProcessor.from_pretrained(folder), str(folder), None
        if pretrained is not None:
            raise ValueError(f"--from {folder} holds a {found} model; pass --method {found} or another folder.")
        print(f"  {folder} holds a {found} model, not a {method} one")
    elif pretrained is not None:
        raise FileNotFoundError(f"--from {folder} has no config.json; pass the model folder of `vlalign quickstart`.")
    print(f"  no {method} quick-start model found: running the retrieval quick start's pretraining first")
    run = pretrain_synthetic(own, QuickstartSettings(method=method, seed=seed))
    print(f"  pretraining took {run.train_seconds:.0f}s ({run.trainer.state.global_step} steps); kept in {own}/")
    run.trainer.model.save_pretrained(own)  # with its MLM head, which the answer decoder's LM head starts from
    run.processor.save_pretrained(own)
    return from_model(run.trainer.model), run.processor, "a pretraining run made now", run.train_seconds


def fine_tune(
    model, processor, train, collator, settings, output_dir: Path, **arguments: Any
) -> tuple[AlignmentTrainer, float, float]:
    """(trainer, wall seconds, CPU seconds) of fine-tuning `model` on `train` with `AlignmentTrainer` on the CPU:
    `settings`' batch size, steps, learning rate (cosine schedule after `warmup_steps`), weight decay and seed; no
    checkpoints; `arguments`: further `AlignmentTrainingArguments`."""
    torch.manual_seed(settings.seed)
    args = AlignmentTrainingArguments(
        output_dir=str(output_dir / "checkpoints"), per_device_train_batch_size=settings.batch_size,
        max_steps=settings.max_steps, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps, lr_scheduler_type="cosine", logging_steps=25, save_strategy="no",
        report_to="none", use_cpu=True, seed=settings.seed, dataloader_num_workers=0, **arguments,
    )  # fmt: skip
    trainer = AlignmentTrainer(
        model=model, args=args, train_dataset=train, data_collator=collator, processing_class=processor
    )
    train_start, train_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    train_seconds, train_cpu_seconds = time.perf_counter() - train_start, time.process_time() - train_cpu
    if (output_dir / "checkpoints").is_dir() and not any((output_dir / "checkpoints").iterdir()):
        (output_dir / "checkpoints").rmdir()
    return trainer, train_seconds, train_cpu_seconds


def run_vqa_quickstart(
    output_dir: str | Path = "quickstart_vqa_output",
    settings: VqaQuickstartSettings | None = None,
    num_threads: int | None = None,
) -> dict:
    """Start → fine-tune → evaluate → save → reload → answer through the pipeline → plot. Returns a summary; torch's
    thread count (`num_threads`, default `vlalign.threads.configure_threads`'s choice) is restored afterwards."""
    with thread_limit(num_threads):
        return _run(Path(output_dir), settings or VqaQuickstartSettings())


def _run(output_dir: Path, settings: VqaQuickstartSettings) -> dict:
    start = time.perf_counter()
    print(f"[1/5] Starting a {settings.method} VQA model from a quick-start pretraining run")
    model, processor, source, pretrain_seconds = start_model(settings, output_dir)
    image_size = model.config.vision_config.image_size
    splits = make_synthetic_vqa_dataset(
        num_train=settings.num_train, num_validation=0, num_test=settings.num_test, image_size=image_size,
        seed=settings.seed,
    )  # fmt: skip
    train, test = splits["train"], splits["test"]
    answer_list = build_answer_list(train)
    added = learn_words(model, processor, [*train["question"], *answer_list])
    print(f"  from {source}; {added} new words of the VQA set added to the vocabulary")

    print(f"[2/5] Fine-tuning on {len(train)} synthetic questions ({settings.max_steps} steps)")
    # no crops or flips: questions name positions ("on the left"), which those would falsify
    trainer, train_seconds, train_cpu_seconds = fine_tune(
        model, processor, train, VqaCollator(processor), settings, output_dir, k_test=settings.k
    )

    print(f"[3/5] Answering {len(test)} test questions by ranking the {len(answer_list)} training answers")
    answered = evaluate_vqa(
        model, processor, test, answer_list, k=settings.k, result_file=output_dir / "vqa_result.json"
    )
    vqa = {key: value for key, value in answered.items() if key != "predictions"}
    baseline = majority_answer_baseline(train, test)
    vqa["majority_baseline"] = {**baseline, "per_type_by_type": majority_by_type(baseline, test)}
    results = {
        "dataset_name": DATASET_NAME,
        "dataset_split": "test",
        "vqa": vqa,
        "training_args": dict(training_args_summary(trainer)),
        "training_data": SYNTHETIC_VQA_NOTE.format(
            num_questions=len(train), num_train=settings.num_train, image_size=image_size
        ),
    }
    model_dir = save_for_hub(
        model, processor, output_dir / "model", model_id=f"vlalign/{settings.method}-tiny-synthetic-vqa",
        exist_ok=True, **card_kwargs(results),
    )  # fmt: skip
    save_results(results, model_dir)

    print("[4/5] Reloading with AutoModelForVisualQuestionAnswering and answering through the VQA pipeline")
    reloaded = AutoModelForVisualQuestionAnswering.from_pretrained(model_dir)
    answerer = pipeline(
        "visual-question-answering", model=reloaded, processor=AutoProcessor.from_pretrained(model_dir)
    )
    shown = test.select(range(min(SHOWN_QUESTIONS, len(test))))
    answers = [
        answerer(image, question=question, candidate_answers=answer_list)[0]
        for image, question in zip(shown["image"], shown["question"], strict=True)
    ]
    for question, answer, truth in zip(shown["question"], answers, shown["answer"], strict=True):
        print(f"  {question!r} -> {answer['answer']!r} ({answer['score']:.2f})  [true: {truth!r}]")
    plots = [
        plot_losses(trainer.state.log_history, output_dir / "vqa_losses.png"),
        plot_vqa_answers(shown["image"], shown["question"], answers, output_dir / "vqa_answers.png", shown["answer"]),
    ]

    total = time.perf_counter() - start
    summary = {
        "vqa": vqa,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "pretrain_seconds": None if pretrain_seconds is None else round(pretrain_seconds, 1),
        "total_seconds": round(total, 1),
        "started_from": source,
        "model_dir": str(model_dir),
        "plots": [str(p) for p in plots],
        "settings": asdict(settings),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(vqa)
    pretraining = "" if pretrain_seconds is None else f", pretraining first {pretrain_seconds:.0f}s"
    print(
        f"  wall time {total:.0f}s (VQA fine-tuning {train_seconds:.0f}s, {train_cpu_seconds:.0f} CPU-s{pretraining}); model, card and plots in {output_dir}/"
    )
    return summary


def majority_by_type(baseline: dict, test) -> dict[str, float]:
    """The VQA accuracy, per question type, of answering each question with its type's most frequent training answer
    (`majority_answer_baseline`'s `per_type_answers`)."""
    guesses = [baseline["per_type_answers"].get(kind, baseline["answer"]) for kind in test["question_type"]]
    return vqa_accuracy(guesses, list(test["answers"]), list(test["question_type"]))["vqa_accuracy_per_type"]


def print_table(vqa: dict) -> None:
    """The VQA accuracy beside the majority-answer baselines (`vqa["majority_baseline"]`: one answer for all, and one
    per question type), overall and per question type, with the ratio to the per-type baseline."""
    baseline = vqa["majority_baseline"]
    print(f"[5/5] VQA accuracy on the synthetic test split ({vqa['num_questions']} questions)")
    print(f"  {'question type':<14}{'model':>8}{'baseline':>10}{'ratio':>8}")
    for kind, accuracy in sorted(vqa["vqa_accuracy_per_type"].items()):
        level = baseline["per_type_by_type"][kind]
        ratio = f"{accuracy / level:.1f}x" if level else "-"
        print(f"  {kind:<14}{accuracy:8.1f}{level:10.1f}{ratio:>8}")
    overall, typed = vqa["vqa_accuracy"], baseline["per_type_vqa_accuracy"]
    print(f"  {'overall':<14}{overall:8.1f}{typed:10.1f}{overall / typed:7.1f}x")
    print(
        f"  majority-answer baselines: {baseline['vqa_accuracy']:.1f}% answering {baseline['answer']!r} to every "
        f"question ({overall / baseline['vqa_accuracy']:.1f}x), {typed:.1f}% answering each question type's most "
        f"frequent answer ({overall / typed:.1f}x)"
    )


__all__ = [
    "VqaQuickstartSettings",
    "fine_tune",
    "majority_by_type",
    "print_table",
    "run_vqa_quickstart",
    "start_from_pretraining",
    "start_model",
]
