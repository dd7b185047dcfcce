"""Model cards for published vlalign checkpoints: Hub metadata (library, pipeline tag, tags, datasets, a
`model-index` with every measured retrieval recall, zero-shot accuracy and VQA accuracy) plus a README rendered from the family's Jinja template.

The template ships inside the package (`vlalign/hub/templates/<model_type>.md`) and is read with
`importlib.resources`, so it is found from an editable checkout and from an installed wheel alike (the wheel must
list it as package data; see `template_path`).

Pipeline tag: the Hub has no image-text retrieval pipeline tag (vlalign's `zero-shot-image-text-retrieval` pipeline
is a custom task, shipped with the model as remote code, that no Hub widget runs). Every `<Method>Model` is registered
for `AutoModelForZeroShotImageClassification` and returns CLIP-style `logits_per_image`, so
`zero-shot-image-classification` is the tag whose stock pipeline (and Hub widget) actually runs a published vlalign
repo, with or without vlalign: it ranks candidate texts for an image, the text-retrieval half of the task. The
retrieval task itself is recorded in the `model-index` (`task.type: image-text-retrieval`; huggingface_hub does not
restrict task types) and in the tags.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..auto import family_of
from .summaries import config_rows

TASK_TYPE = "image-text-retrieval"
TASK_NAME = "Image-Text Retrieval"
ZERO_SHOT_TASK_TYPE = "zero-shot-image-classification"
ZERO_SHOT_TASK_NAME = "Zero-Shot Image Classification"
VQA_TASK_TYPE = "visual-question-answering"
VQA_TASK_NAME = "Visual Question Answering"
PIPELINE_TAG = "zero-shot-image-classification"
LIBRARY_NAME = "transformers"
DEFAULT_TAGS = ("vlalign", "image-text-retrieval", "vision-language")

#: the main `TrainingArguments` shown in the card, in this order (those absent or unset are skipped)
MAIN_TRAINING_ARGUMENTS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "temperature_learning_rate",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "bf16",
    "fp16",
    "seed",
    "official_optimizer",
    "epoch_lr_schedule",
    "warmup_lr",
    "min_lr",
)

# Recall keys as `evaluate_retrieval` returns them (optionally with the Trainer's "eval_"/"test_" prefix).
_RECALL_KEY = re.compile(r"^(txt|img)_r(\d+)$")
# Zero-shot accuracy keys as the `topk_accuracy` metric returns them.
_ACCURACY_KEY = re.compile(r"^top(\d+)_accuracy$")
_METRIC_PREFIXES = ("", "eval_", "test_")
#: direction key -> (short name used in metric names, metric_args direction, row label)
_DIRECTIONS = {
    "txt": ("TR", "image-to-text", "Text retrieval, TR (image → text)"),
    "img": ("IR", "text-to-image", "Image retrieval, IR (text → image)"),
}


def template_path(model_type: str = "albef") -> Path:
    """Path of the packaged model-card template of a model family (`vlalign/hub/templates/<model_type>.md`).

    The file is package data: with setuptools it is only copied into a wheel when `pyproject.toml` declares it::

        [tool.setuptools.package-data]
        "vlalign.hub" = ["templates/*.md"]
    """
    return Path(str(_template_resource(model_type)))


def _template_resource(model_type: str):
    resource = resources.files("vlalign.hub").joinpath("templates", f"{model_type}.md")
    if not resource.is_file():
        raise FileNotFoundError(
            f"No model-card template for model type {model_type!r} at {resource}. If vlalign is installed from a "
            'wheel, the wheel was built without its package data: add `"vlalign.hub" = ["templates/*.md"]` under '
            "`[tool.setuptools.package-data]` in pyproject.toml and rebuild."
        )
    return resource


def retrieval_eval_results(
    metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    dataset_split: str = "test",
    dataset_config: str | None = None,
) -> list[EvalResult]:
    """One `EvalResult` per measured recall: TR@k / IR@k for every k found (`metric_type` "recall@k"), the
    per-direction means TR@mean / IR@mean and R@mean (`metric_type` "mean_recall"), all in percent.

    TR and IR share a metric type; `metric_name` and `metric_args={"direction": ...}` tell them apart. Values are
    taken as given (converted to `float`), never rounded. `metrics` uses `evaluate_retrieval`'s keys, optionally
    prefixed by "eval_" or "test_" (as `AlbefTrainer.evaluate` returns them).
    """
    values = _recall_values(metrics)
    common = dict(
        task_type=TASK_TYPE,
        task_name=TASK_NAME,
        dataset_type=dataset_type,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
    )
    results = []
    for direction, (short, args_direction, _) in _DIRECTIONS.items():
        for k in sorted(k for (d, k) in values if d == direction and k is not None):
            results.append(
                EvalResult(
                    **common,
                    metric_type=f"recall@{k}",
                    metric_name=f"{short}@{k}",
                    metric_value=values[direction, k],
                    metric_args={"direction": args_direction},
                )
            )
        if (direction, None) in values:
            results.append(
                EvalResult(
                    **common,
                    metric_type="mean_recall",
                    metric_name=f"{short}@mean",
                    metric_value=values[direction, None],
                    metric_args={"direction": args_direction},
                )
            )
    if ("all", None) in values:
        results.append(
            EvalResult(
                **common,
                metric_type="mean_recall",
                metric_name="R@mean",
                metric_value=values["all", None],
                metric_args={"direction": "both"},
            )
        )
    return results


def zero_shot_eval_results(
    metrics: Mapping[str, Any], *, dataset_name: str, dataset_type: str, dataset_split: str = "test"
) -> list[EvalResult]:
    """One `EvalResult` per measured zero-shot top-K accuracy (the `topk_accuracy` metric's `top{k}_accuracy` keys,
    percent; other keys are ignored): `metric_type` "accuracy" for top-1, "top_k_accuracy" otherwise, with
    `metric_args={"k": k}`."""
    accuracies = {int(match.group(1)): _percent(key, value) for key, value in metrics.items()
                  if (match := _ACCURACY_KEY.match(key))}  # fmt: skip
    if not accuracies:
        raise ValueError(
            f"zero_shot_metrics has no top-K accuracy (expected keys like 'top1_accuracy'); got {sorted(metrics)}."
        )
    return [
        EvalResult(
            task_type=ZERO_SHOT_TASK_TYPE,
            task_name=ZERO_SHOT_TASK_NAME,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type="accuracy" if k == 1 else "top_k_accuracy",
            metric_name=f"top-{k} accuracy",
            metric_value=value,
            metric_args={"k": k},
        )
        for k, value in sorted(accuracies.items())
    ]


def vqa_eval_results(
    metrics: Mapping[str, Any], *, dataset_name: str, dataset_type: str, dataset_split: str = "test"
) -> list[EvalResult]:
    """The `EvalResult` of a measured VQA accuracy (`evaluate_vqa`'s `vqa_accuracy`, percent; `metric_type`
    "vqa_accuracy"), the `visual-question-answering` task of the model-index."""
    if "vqa_accuracy" not in metrics:
        raise ValueError(f"vqa_metrics has no 'vqa_accuracy' (what evaluate_vqa returns); got {sorted(metrics)}.")
    return [
        EvalResult(
            task_type=VQA_TASK_TYPE,
            task_name=VQA_TASK_NAME,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type="vqa_accuracy",
            metric_name="VQA accuracy",
            metric_value=_percent("vqa_accuracy", metrics["vqa_accuracy"]),
        )
    ]


def build_model_card(
    model,
    *,
    metrics: Mapping[str, Any] | None,
    dataset_name: str,
    dataset_split: str = "test",
    zero_shot_metrics: Mapping[str, Any] | None = None,
    vqa_metrics: Mapping[str, Any] | None = None,
    training_args: Mapping[str, Any] | Any | None = None,
    model_id: str | None = None,
    base_model: str | None = None,
    dataset_id: str | None = None,
    dataset_config: str | None = None,
    training_data: str | None = None,
    train_datasets: Iterable[str] = (),
    license: str | None = None,
    language: str | list[str] | None = "en",
    tags: Iterable[str] = (),
    template: str | Path | None = None,
    tokenizer: Any = None,
) -> ModelCard:
    """Render the model card of a vlalign checkpoint.

    Args:
        model: the model whose weights are published (`<Method>Model`, or a training model when its training state
            is published too). The configuration summary and parameter count describe it.
        metrics: retrieval results as `evaluate_retrieval` returns them (`txt_r1`, ..., `img_r10`, `txt_r_mean`,
            `img_r_mean`, `r_mean`, in percent; optional `num_images`, `num_texts`, `num_itm_pairs`), or with the
            Trainer's `eval_`/`test_` prefix. The measured values go into the card unchanged. `None`: no
            `model-index`, and the card says that no results were reported.
        dataset_name: readable name of the evaluation dataset, e.g. "MS-COCO 5K (Karpathy test)".
        dataset_split: split the metrics were measured on.
        zero_shot_metrics: zero-shot classification results as `ZeroShotImageClassificationEvaluator` returns them
            (`top{k}_accuracy`, percent), with `dataset_name` when measured on other data than `metrics` (e.g. a
            labelled subset); they join the `model-index` as the `zero-shot-image-classification` task.
        vqa_metrics: VQA results as `evaluate_vqa` returns them (`vqa_accuracy`, percent; `num_questions`), with
            `dataset_name` when measured on other data than `metrics`; they join the `model-index` as the
            `visual-question-answering` task. A model that answers questions (`rank_answers`) gets that pipeline tag.
        training_args: the `Trainer` that trained the model (what actually ran is shown: optimizer steps, epochs,
            global batch, the optimizer object's class and groups, and the main arguments), a `TrainingArguments`
            (its main fields) or a dict (shown as given).
        model_id: repo id ("namespace/name"); titles the card, fills the code examples and names the model-index.
        base_model: Hub id of the checkpoint this model was fine-tuned from.
        dataset_id: Hub dataset id of the evaluation data, used as `dataset.type` in the model-index and in the
            `datasets` metadata; defaults to a slug of `dataset_name`.
        dataset_config: dataset configuration name, if any.
        training_data: free text (markdown) for the "Training data" section.
        train_datasets: Hub ids of the training datasets. The `datasets` metadata lists them and the evaluation
            dataset; without `training_data`, the "Training data" section links them.
        license: license identifier for the metadata (e.g. "apache-2.0"); left out when None.
        language: language(s) of the text side.
        tags: extra tags, added to vlalign / image-text-retrieval / vision-language and the method's tags.
        template: a template file to use instead of the packaged one.
        tokenizer: the tokenizer published with the model; the card describes it (class, model, vocabulary size).
    """
    config = model.config
    family = family_of(model)
    config_class = family.config_class
    train_datasets = [train_datasets] if isinstance(train_datasets, str) else list(train_datasets)
    tags = [tags] if isinstance(tags, str) else list(tags)
    dataset_type = dataset_id or _slug(dataset_name)
    model_name = (model_id or family.model_type).rstrip("/").split("/")[-1]

    eval_results = None
    results = None
    if metrics is not None:
        eval_results = retrieval_eval_results(
            metrics,
            dataset_name=dataset_name,
            dataset_type=dataset_type,
            dataset_split=dataset_split,
            dataset_config=dataset_config,
        )
        results = _results_table(eval_results, metrics, dataset_name, dataset_split)
    zero_shot_type = None
    if zero_shot_metrics is not None:
        zero_shot_name = zero_shot_metrics.get("dataset_name", dataset_name)
        zero_shot_type = dataset_type if zero_shot_name == dataset_name else _slug(zero_shot_name)
        eval_results = (eval_results or []) + zero_shot_eval_results(
            zero_shot_metrics, dataset_name=zero_shot_name, dataset_type=zero_shot_type, dataset_split=dataset_split
        )

    vqa_type = None
    vqa = None
    if vqa_metrics is not None:
        vqa_name = vqa_metrics.get("dataset_name", dataset_name)
        vqa_type = dataset_type if vqa_name == dataset_name else _slug(vqa_name)
        vqa_results = vqa_eval_results(
            vqa_metrics, dataset_name=vqa_name, dataset_type=vqa_type, dataset_split=dataset_split
        )
        eval_results = (eval_results or []) + vqa_results
        vqa = {
            "dataset_name": vqa_name,
            "dataset_split": dataset_split,
            "vqa_accuracy": vqa_results[0].metric_value,
            "num_questions": _extra(vqa_metrics, "num_questions"),
        }
    answers_questions = hasattr(model, "rank_answers")

    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=VQA_TASK_TYPE if answers_questions else PIPELINE_TAG,
        license=license,
        language=language,
        tags=list(dict.fromkeys([DEFAULT_TAGS[0], *config_class.hub_tags, *DEFAULT_TAGS[1:], *tags])),
        datasets=list(
            dict.fromkeys([*train_datasets, dataset_type, *(name for name in (zero_shot_type, vqa_type) if name)])
        ),
        base_model=base_model,
        model_name=model_name,
        eval_results=eval_results,
    )
    if template is not None:
        template_text = Path(template).read_text(encoding="utf-8")
    else:
        template_text = _template_resource(family.model_type).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template_text,
        model_id=model_id,
        repo_id=model_id or "<namespace>/<model-name>",
        model_name=model_name,
        published_class=type(model).__name__,
        includes_training_state=isinstance(model, family.training_classes),
        method_title=config_class.method_title,
        paper=config_class.method_paper,
        results=results,
        vqa_results=vqa,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        training_data=training_data,
        train_datasets=train_datasets,
        config_rows=config_summary(model),
        training_args_rows=training_args_summary(training_args),
        image_size=config.vision_config.image_size,
        tokenizer_description=describe_tokenizer(tokenizer),
        vlalign_version=_version("vlalign"),
        transformers_version=_version("transformers"),
    )


def save_model_card(card: ModelCard, folder: str | Path) -> Path:
    """Write `card` as `folder/README.md` (creating `folder`) and return the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    card.save(path)
    return path


def config_summary(model) -> list[tuple[str, str]]:
    """(setting, value) rows describing the model's architecture and alignment settings (the method's own)."""
    return [(name, _cell(value)) for name, value in config_rows(model)]


def training_args_summary(training_args: Mapping[str, Any] | Any | None) -> list[tuple[str, str]] | None:
    """(argument, value) rows: a dict as given; for a `Trainer`, what ran (`trainer_summary`) then its arguments; for a
    `TrainingArguments`, its `MAIN_TRAINING_ARGUMENTS` (without `num_train_epochs` when `max_steps` bounds the run,
    and without `optim` when vlalign's official optimizer replaces it)."""
    if training_args is None:
        return None
    if isinstance(training_args, Mapping):
        items = list(training_args.items())
    elif hasattr(training_args, "state") and hasattr(training_args, "args"):
        ran = trainer_summary(training_args)
        items = ran + [(n, v) for n, v in _main_arguments(training_args.args) if n not in ("max_steps", "optim")]
    elif hasattr(training_args, "to_dict"):
        items = _main_arguments(training_args)
    else:
        raise TypeError(
            f"training_args must be a Trainer, a TrainingArguments or a dict, not {type(training_args).__name__}."
        )
    return [(str(name), _cell(_format_value(value))) for name, value in items]


def trainer_summary(trainer: Any) -> list[tuple[str, Any]]:
    """What a `Trainer` actually ran: optimizer steps, epochs (steps × global batch / training samples, 1 decimal),
    global batch size, and the optimizer object that stepped (class and parameter groups)."""
    args, steps = trainer.args, trainer.state.global_step
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    rows: list[tuple[str, Any]] = [("optimizer steps", steps), ("global batch size", global_batch)]
    try:
        samples = len(trainer.train_dataset)
    except TypeError:  # a stream of unknown size
        samples = None
    if samples:
        rows.append(("epochs", f"{steps * global_batch / samples:.1f} ({samples} training samples)"))
    if trainer.optimizer is not None:
        rows.append(("optimizer", describe_optimizer(trainer.optimizer)))
    return rows


def describe_optimizer(optimizer: Any) -> str:
    """The optimizer class that ran, its fused/foreach mode and its parameter groups (size, weight decay, and the
    base learning rate where the groups' differ)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it
    kind = type(optimizer)
    defaults = optimizer.defaults
    mode = "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else None
    base_lrs = [group.get("initial_lr", group.get("lr")) for group in optimizer.param_groups]
    show_lr = len(set(base_lrs)) > 1
    groups = [
        f"{sum(p.numel() for p in group['params']):,} parameters, weight decay {group.get('weight_decay', 0):g}"
        + (f", learning rate {lr:g}" if show_lr else "")
        for group, lr in zip(optimizer.param_groups, base_lrs, strict=True)
    ]
    name = f"{kind.__module__}.{kind.__qualname__}" + (f" ({mode})" if mode else "")
    return f"{name}; {len(groups)} parameter group{'s' * (len(groups) != 1)}: {'; '.join(groups)}"


def describe_tokenizer(tokenizer: Any) -> str:
    """`Class` (backend model, N-token vocabulary) of a tokenizer, e.g. "`AlbefTokenizer` (WordPiece, 61 tokens)";
    "the tokenizer saved with the model" when none is given."""
    if tokenizer is None:
        return "the tokenizer saved with the model"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = f"{type(backend.model).__name__}, " if backend is not None else ""
    return f"`{type(tokenizer).__name__}` ({model}{len(tokenizer):,}-token vocabulary)"


def _main_arguments(training_args: Any) -> list[tuple[str, Any]]:
    values = training_args.to_dict()
    items = [(name, values[name]) for name in MAIN_TRAINING_ARGUMENTS if name in values]
    return [(name, value) for name, value in items if value is not None and not _unset(values, name, value)]


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _recall_values(metrics: Mapping[str, Any]) -> dict[tuple[str, int | None], float]:
    """{(direction, k or None for the mean): value} from a metrics dict; direction "all" holds r_mean."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, not {type(metrics).__name__}.")
    prefixes = [
        p for p in _METRIC_PREFIXES if any(_is_recall_key(key[len(p) :]) for key in metrics if key.startswith(p))
    ]
    if not prefixes:
        raise ValueError(
            f"metrics has no retrieval recall (expected keys like 'txt_r1', 'img_r5', 'r_mean'); got {sorted(metrics)}."
        )
    if len(prefixes) > 1:
        raise ValueError(f"metrics mixes key prefixes {prefixes}; pass the results of one evaluation.")
    prefix = prefixes[0]
    values: dict[tuple[str, int | None], float] = {}
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        match = _RECALL_KEY.match(name)
        if match:
            slot = (match.group(1), int(match.group(2)))
        elif name in ("txt_r_mean", "img_r_mean"):
            slot = (name[:3], None)
        elif name == "r_mean":
            slot = ("all", None)
        else:
            continue
        values[slot] = _percent(key, value)
    return values


def _is_recall_key(name: str) -> bool:
    return bool(_RECALL_KEY.match(name)) or name in ("txt_r_mean", "img_r_mean", "r_mean")


def _percent(key: str, value: Any) -> float:
    if hasattr(value, "item") and not isinstance(value, numbers.Number):
        value = value.item()  # 0-d tensors / numpy scalars
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"metrics[{key!r}] must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ValueError(f"metrics[{key!r}] = {value} is not a percentage (0 to 100).")
    return value


def _results_table(
    eval_results: list[EvalResult], metrics: Mapping[str, Any], dataset_name: str, dataset_split: str
) -> dict[str, Any]:
    """The template's view of the eval results: one row per direction, one column per k, plus the means."""
    by_name = {result.metric_name: result.metric_value for result in eval_results}
    ks = sorted({int(r.metric_type.split("@")[1]) for r in eval_results if r.metric_type.startswith("recall@")})
    rows = []
    for short, _, label in _DIRECTIONS.values():
        row_values = [by_name.get(f"{short}@{k}") for k in ks]
        if any(v is not None for v in row_values) or f"{short}@mean" in by_name:
            rows.append({"label": label, "short": short, "values": row_values, "mean": by_name.get(f"{short}@mean")})
    counts = {name: _extra(metrics, name) for name in ("num_images", "num_texts", "num_itm_pairs")}
    if counts["num_itm_pairs"] is None:
        protocol = "Candidates are ranked by contrastive similarity (with ITM re-ranking where the model has it)."
    elif counts["num_itm_pairs"] == 0:
        protocol = "Candidates are ranked by contrastive similarity of the embeddings only, without re-ranking."
    else:
        protocol = (
            "Candidates are ranked by contrastive (ITC) similarity, then each query's top candidates are re-scored "
            f"with the ITM head ({counts['num_itm_pairs']} image-text pairs), as in ALBEF's evaluation."
        )
    return {
        "dataset_name": dataset_name,
        "dataset_split": dataset_split,
        "ks": ks,
        "rows": rows,
        "r_mean": by_name.get("R@mean"),
        "num_images": counts["num_images"],
        "num_texts": counts["num_texts"],
        "protocol": protocol,
    }


def _extra(metrics: Mapping[str, Any], name: str) -> int | None:
    for prefix in _METRIC_PREFIXES:
        if prefix + name in metrics:
            value = metrics[prefix + name]
            return int(value.item() if hasattr(value, "item") else value)
    return None


def _unset(values: Mapping[str, Any], name: str, value: Any) -> bool:
    """Fields whose value means "not used" (e.g. `max_steps=-1`, `warmup_steps=0`), or that something else
    overrides: `num_train_epochs` under `max_steps`, `optim` under vlalign's official optimizer, the ALBEF schedule's
    learning rates under another schedule."""
    return (
        (name == "max_steps" and value <= 0)
        or (name in ("warmup_steps", "warmup_ratio") and value == 0)
        or (name == "num_train_epochs" and values.get("max_steps", -1) > 0)
        or (name == "optim" and bool(values.get("official_optimizer")))
        or (name in ("warmup_lr", "min_lr") and not values.get("epoch_lr_schedule"))
    )


def _format_value(value: Any) -> str:
    if hasattr(value, "value") and not isinstance(value, (str, numbers.Number)):
        value = value.value  # enums
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    """Make a string safe inside a one-line markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "dataset"


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


__all__ = [
    "DEFAULT_TAGS",
    "MAIN_TRAINING_ARGUMENTS",
    "PIPELINE_TAG",
    "TASK_TYPE",
    "VQA_TASK_TYPE",
    "build_model_card",
    "config_summary",
    "describe_optimizer",
    "describe_tokenizer",
    "retrieval_eval_results",
    "save_model_card",
    "vqa_eval_results",
    "zero_shot_eval_results",
    "template_path",
    "trainer_summary",
    "training_args_summary",
]
