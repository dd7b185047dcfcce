"""`vlalign quickstart --task ve` and `--task nlvr2`: visual entailment and visual reasoning on the embedded default,
for ALBEF, SIMLA and CODIS.

Starts from a quick-start pretraining run (`vlalign quickstart`'s saved model, or a pretraining run made here first,
timed apart) as the VQA quick start does (`vlalign.quickstart_vqa.start_from_pretraining`), fine-tunes the method's
`<Method>ForVisualEntailment` on the synthetic SNLI-VE set (`vlalign.data.synthetic_ve`) or its
`<Method>ForVisualReasoning` on the synthetic NLVR2 set (`vlalign.data.synthetic_nlvr`) with `AlignmentTrainer`
(`vlalign.quickstart_vqa.fine_tune`), scores the test split (`evaluate_ve` / `evaluate_nlvr`) beside the majority
class of the training labels, saves model, processor, card and `eval_results.json`, reloads the folder with
`AutoModelForVisualEntailment` / `AutoModelForVisualReasoning`, judges a few test examples through the task's
pipeline and draws them. The same classes serve real SNLI-VE and NLVR2 fine-tuning (`examples/finetune_ve.py`,
`examples/finetune_nlvr2.py`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoProcessor, pipeline

from .auto import AutoModelForVisualEntailment, AutoModelForVisualReasoning, family_of
from .convert.nlvr import load_two_image_model
from .convert.ve import load_ve_model
from .data.nlvr import NLVR_LABELS, NlvrCollator
from .data.synthetic_nlvr import make_synthetic_nlvr_dataset
from .data.synthetic_ve import make_synthetic_ve_dataset
from .data.ve import VE_LABELS, VeCollator
from .evaluation.nlvr import evaluate_nlvr, nlvr_model_card
from .evaluation.ve import evaluate_ve, ve_model_card
from .hub import training_args_summary
from .hub.push import save_results
from .methods import get_method
from .quickstart_vqa import fine_tune, start_from_pretraining
from .recipes.albef import learn_words
from .threads import thread_limit
from .visualization import plot_losses, plot_vqa_answers

#: test examples judged through the pipeline and drawn
SHOWN_EXAMPLES = 8


@dataclass(frozen=True)
class ReasoningTask:
    """What differs between the two quick starts: data, model classes, scoring, card and pipeline."""

    name: str
    title: str
    dataset_name: str
    note: str
    make_dataset: Callable[..., Any]
    collator: type
    load: Callable[[Path, Any], Any]
    from_model: Callable[[Any], Any]
    evaluate: Callable[..., dict]
    model_card: Callable[..., Any]
    auto_class: type
    pipeline_task: str
    label_names: tuple[str, ...]


TASKS: dict[str, ReasoningTask] = {
    "ve": ReasoningTask(
        name="ve",
        title="visual entailment",
        dataset_name="vlalign synthetic SNLI-VE",
        note=(
            "The built-in synthetic SNLI-VE set of vlalign (`vlalign.data.synthetic_ve`): {num_examples} hypotheses "
            "about {num_train} {image_size}-px images of one to three coloured shapes, a third each entailment, "
            "contradiction (a wrong visible attribute) and neutral (an unobservable property of a drawn object). "
            "A smoke-test dataset: the model learns nothing about real images."
        ),
        make_dataset=make_synthetic_ve_dataset,
        collator=VeCollator,
        load=load_ve_model,
        from_model=lambda model: family_of(model).visual_entailment_class.from_pretraining(model),
        evaluate=evaluate_ve,
        model_card=ve_model_card,
        auto_class=AutoModelForVisualEntailment,
        pipeline_task="visual-entailment",
        label_names=VE_LABELS,
    ),
    "nlvr2": ReasoningTask(
        name="nlvr2",
        title="visual reasoning (NLVR2)",
        dataset_name="vlalign synthetic NLVR2",
        note=(
            "The built-in synthetic NLVR2 set of vlalign (`vlalign.data.synthetic_nlvr`): {num_examples} pairs of "
            "{image_size}-px images of one to three coloured shapes with a true or false statement about both (counts, "
            "colours, shapes, backgrounds), half of them true. A smoke-test dataset: the model learns nothing about "
            "real images."
        ),
        make_dataset=make_synthetic_nlvr_dataset,
        collator=NlvrCollator,
        load=lambda folder, config: load_two_image_model(folder, "nlvr2", config),
        from_model=lambda model: family_of(model).visual_reasoning_class.from_pretraining(model),
        evaluate=evaluate_nlvr,
        model_card=nlvr_model_card,
        auto_class=AutoModelForVisualReasoning,
        pipeline_task="visual-reasoning",
        label_names=NLVR_LABELS,
    ),
}


@dataclass
class ReasoningQuickstartSettings:
    """Sizes and recipe of the VE / NLVR2 quick starts (`task`: ``"ve"`` or ``"nlvr2"``). Unset recipe fields (None)
    take the method's tuned values (`Method.ve_quickstart` / `Method.nlvr_quickstart`). `pretrained`: the folder of a
    quick-start pretraining run of the method (default `quickstart_output/model` beside the output folder); without
    one, a pretraining run is made first. `num_train` / `num_test`: images (VE, three hypotheses each) or pairs
    (NLVR2)."""

    task: str = "ve"
    method: str = "albef"
    pretrained: str | None = None
    num_train: int | None = None
    num_test: int = 200
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}.")
        recipe = getattr(get_method(self.method), f"{'nlvr' if self.task == 'nlvr2' else 've'}_quickstart")
        if recipe is None:
            raise ValueError(f"{self.method} has no {TASKS[self.task].title} model; pick albef, codis or simla.")
        for name in ("num_train", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "max_steps"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(recipe, name))
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be a positive number of optimizer steps, got {self.max_steps}.")


def majority_class_accuracy(train_labels, test_labels) -> tuple[int, float]:
    """(the most frequent training label, the accuracy of predicting it for every test example)."""
    majority = Counter(train_labels).most_common(1)[0][0]
    return majority, sum(label == majority for label in test_labels) / len(test_labels)


def run_reasoning_quickstart(
    output_dir: str | Path | None = None,
    settings: ReasoningQuickstartSettings | None = None,
    num_threads: int | None = None,
) -> dict:
    """Start → fine-tune → evaluate → save → reload → judge through the pipeline → plot. Returns a summary; torch's
    thread count (`num_threads`, default `vlalign.threads.configure_threads`'s choice) is restored afterwards."""
    settings = settings or ReasoningQuickstartSettings()
    with thread_limit(num_threads):
        return _run(Path(output_dir or f"quickstart_{settings.task}_output"), settings)


def _run(output_dir: Path, settings: ReasoningQuickstartSettings) -> dict:
    task = TASKS[settings.task]
    start = time.perf_counter()
    print(f"[1/5] Starting a {settings.method} {task.title} model from a quick-start pretraining run")
    model, processor, source, pretrain_seconds = start_from_pretraining(
        settings.method, settings.pretrained, settings.seed, output_dir, task.load, task.from_model
    )
    image_size = model.config.vision_config.image_size
    splits = task.make_dataset(
        num_train=settings.num_train, num_validation=0, num_test=settings.num_test, image_size=image_size,
        seed=settings.seed,
    )  # fmt: skip
    train, test = splits["train"], splits["test"]
    added = learn_words(model, processor, [*train["sentence"], *test["sentence"]])
    print(f"  from {source}; {added} new words of the {task.title} set added to the vocabulary")

    print(f"[2/5] Fine-tuning on {len(train)} synthetic examples ({settings.max_steps} steps)")
    # no crops or flips: statements name sides and positions, which those would falsify
    trainer, train_seconds, train_cpu_seconds = fine_tune(
        model, processor, train, task.collator(processor), settings, output_dir
    )

    print(f"[3/5] Judging {len(test)} test examples")
    scored = task.evaluate(model, processor, test, show_progress=False)
    scored = {key: value for key, value in scored.items() if key not in ("predictions", "labels")}
    majority, baseline = majority_class_accuracy(train["label"], test["label"])
    scored["majority_baseline"] = baseline
    scored["majority_class"] = task.label_names[majority]
    results = {
        "dataset_name": task.dataset_name,
        "test": scored,
        "training_args": dict(training_args_summary(trainer)),
        "training_data": task.note.format(
            num_examples=len(train), num_train=settings.num_train, image_size=image_size
        ),
    }
    model_dir = output_dir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    task.model_card(
        f"vlalign/{settings.method}-tiny-synthetic-{task.name}", settings.method, {"test": scored},
        dataset_name=task.dataset_name,
    ).save(model_dir / "README.md")  # fmt: skip
    save_results(results, model_dir)

    print(f"[4/5] Reloading with {task.auto_class.__name__} and judging through the {task.pipeline_task} pipeline")
    reloaded = task.auto_class.from_pretrained(model_dir)
    judge = pipeline(task.pipeline_task, model=reloaded, processor=AutoProcessor.from_pretrained(model_dir))
    shown = test.select(range(min(SHOWN_EXAMPLES, len(test))))
    if task.name == "ve":
        images = list(shown["image"])
        judged = [
            judge(image, hypothesis=sentence)[0] for image, sentence in zip(images, shown["sentence"], strict=True)
        ]
    else:
        pairs = list(zip(shown["image_left"], shown["image_right"], strict=True))
        judged = [judge(pair, sentence=sentence)[0] for pair, sentence in zip(pairs, shown["sentence"], strict=True)]
        images = [side_by_side(*pair) for pair in pairs]
    truths = [task.label_names[label] for label in shown["label"]]
    answers = [{"answer": result["label"], "score": result["score"]} for result in judged]
    for sentence, answer, truth in zip(shown["sentence"], answers, truths, strict=True):
        print(f"  {sentence!r} -> {answer['answer']!r} ({answer['score']:.2f})  [true: {truth!r}]")
    plots = [
        plot_losses(trainer.state.log_history, output_dir / f"{task.name}_losses.png"),
        plot_vqa_answers(
            images, shown["sentence"], answers, output_dir / f"{task.name}_examples.png", truths,
            title=f"{task.title} on synthetic test examples: predicted label (score)",
        ),
    ]  # fmt: skip

    total = time.perf_counter() - start
    summary = {
        "task": task.name,
        "test": scored,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "steps_per_second": round(settings.max_steps / train_seconds, 2),
        "pretrain_seconds": None if pretrain_seconds is None else round(pretrain_seconds, 1),
        "total_seconds": round(total, 1),
        "started_from": source,
        "model_dir": str(model_dir),
        "plots": [str(p) for p in plots],
        "settings": asdict(settings),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print_table(task, scored)
    pretraining = "" if pretrain_seconds is None else f", pretraining first {pretrain_seconds:.0f}s"
    print(
        f"  wall time {total:.0f}s (fine-tuning {train_seconds:.0f}s, {summary['steps_per_second']} steps/s, "
        f"{train_cpu_seconds:.0f} CPU-s{pretraining}); model, card and plots in {output_dir}/"
    )
    return summary


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 4) -> Image.Image:
    """The two images of an NLVR2 pair next to each other (left, right) with a white gap, for drawing."""
    width, height = left.width + gap + right.width, max(left.height, right.height)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + gap, 0))
    return canvas


def print_table(task: ReasoningTask, scored: dict) -> None:
    """The accuracy beside the majority-class baseline, overall and per class."""
    print(f"[5/5] {task.title} accuracy on the synthetic test split ({scored['num_pairs']} examples)")
    print(f"  {'class':<16}{'model':>8}")
    for name, accuracy in scored["per_class_accuracy"].items():
        print(f"  {name:<16}{100 * accuracy:8.1f}")
    accuracy, baseline = 100 * scored["accuracy"], 100 * scored["majority_baseline"]
    print(
        f"  {'overall':<16}{accuracy:8.1f}   majority class ({scored['majority_class']!r} for every example): "
        f"{baseline:.1f}%, {accuracy - baseline:+.1f} points"
    )


__all__ = [
    "TASKS",
    "ReasoningQuickstartSettings",
    "ReasoningTask",
    "majority_class_accuracy",
    "print_table",
    "run_reasoning_quickstart",
    "side_by_side",
]
