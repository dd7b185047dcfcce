"""Fine-tune ALBEF, SIMLA or CODIS (`--method albef|simla|codis`) for visual entailment (SNLI-VE) with
`AlignmentTrainer`, then score the validation and test pairs with accuracy as the official `VE.py` does.

The model is the method's `<Method>ForVisualEntailment`: the fusion encoder and the official MLP head on the fused
[CLS], trained with (1-α)·cross-entropy + α·soft cross-entropy against the momentum model (α = 0.4, constant: the
official VE config has `warm_up: False`). Start from:

* a converted official checkpoint, `vlalign convert --method M --task ve` (a pretraining checkpoint placed as the
  official `VE.py` places it, or a fine-tuned VE one);
* any vlalign folder of the method (an `examples/pretrain.py` output, a quick-start model): its encoders start the
  entailment model and the head is new (`from_pretraining`).

Defaults are the official `configs/VE.yaml` (ALBEF's; SIMLA's is the same; CODIS released none and takes ALBEF's):
AdamW lr 2e-5, weight decay 0.02, 5 epochs, batch 32 per GPU (64 for evaluation), the per-epoch cosine to 1e-6 after a
warm-up at 1e-5 for the first 100 steps (`warmup_epochs: 1` of the official scheduler, stepped every 100 iterations),
384 px with ALBEF's train augmentation, no gradient clipping:

    vlalign convert --method albef --task ve --checkpoint ALBEF_4M.pth --config configs/VE.yaml \\
        --config configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m-ve
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_ve.py \\
        --model_name_or_path albef-4m-ve --train_json data/ve_train.json --val_json data/ve_dev.json \\
        --test_json data/ve_test.json --image_root /datasets/flickr30k/images --output_dir out/albef-ve

The data are the official SNLI-VE JSON files (`vlalign.data.ve.load_ve_json`: `{"image", "sentence", "label"}`, the
image `<image_root>/<image>.jpg`). The output folder holds the fine-tuned model with its processor and
`eval_results.json` with the validation and test accuracy (overall and per class) beside the majority-class baseline,
and a model card whose `model-index` holds the accuracies.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.convert.ve import load_ve_model
from vlalign.data.transforms import albef_train_transform
from vlalign.data.ve import VeCollator, load_ve_json
from vlalign.evaluation.ve import evaluate_ve, ve_model_card
from vlalign.hub import training_args_summary
from vlalign.hub.push import save_results
from vlalign.methods import get_method, method_names, method_of
from vlalign.training.argument_checks import ArgumentError, check_not_empty
from vlalign.training.script_helpers import (
    apply_config_overrides,
    check_images_field,
    configure_logging,
    fit_image_size,
    on_error_field,
    parse_script_args,
    run_script,
    train_and_finish,
)
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

logger = logging.getLogger(__name__)

#: the methods with a visual entailment model
VE_METHODS = [name for name in method_names() if get_method(name).family.visual_entailment_class is not None]

#: the official configs/VE.yaml of ALBEF (SIMLA's is the same; CODIS released none and takes ALBEF's)
OFFICIAL_VE = dict(
    learning_rate=2e-5,
    weight_decay=0.02,
    num_train_epochs=5,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    epoch_lr_schedule=True,
    warmup_lr=1e-5,
    warmup_steps=100,  # warmup_epochs 1 of the official scheduler, stepped every 100 iterations of epoch 0
    warmup_stages=1,
    min_lr=1e-6,
    max_grad_norm=0.0,  # no gradient clipping
    eval_strategy="no",  # scored after training (the official run scores val and test after every epoch)
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=50,
    ddp_find_unused_parameters=False,
)
VE_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(OFFICIAL_VE) for name in VE_METHODS}
REAL_DATA_IMAGE_SIZE = 384
NO_ROWS_FIX = "pass annotation files with pairs (entries skipped with --on_error skip count as none)"


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Method of the model; selects the model class and defaults.", "choices": VE_METHODS},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A vlalign folder / Hub id of the method: an entailment model (`vlalign convert --task ve`) or "
            "any other (its encoders start the entailment model)."
        },
    )
    train_json: list[str] | None = field(default=None, metadata={"help": "Official training files (ve_train.json)."})
    val_json: list[str] | None = field(default=None, metadata={"help": "Official validation files (ve_dev.json)."})
    test_json: list[str] | None = field(default=None, metadata={"help": "Official test files (ve_test.json)."})
    image_root: str = field(default="", metadata={"help": "Folder of the Flickr30k images (<image>.jpg)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config settings to change, 'name=value,...', e.g. 'alpha=0.2'."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": f"Fine-tuning resolution (default: {REAL_DATA_IMAGE_SIZE})."}
    )
    augment: bool = field(default=True, metadata={"help": "ALBEF's train augmentation (the official transform)."})
    on_error: str = on_error_field()
    check_images: str = check_images_field()

    def __post_init__(self):
        if not self.model_name_or_path or not self.train_json:
            raise ArgumentError(
                "pass --model_name_or_path (a converted or pretrained folder of the method) and --train_json (the "
                "official ve_train.json)"
            )


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    return parse_script_args((ScriptArguments, AlignmentTrainingArguments), VE_DEFAULTS, argv)


def load_split(files: list[str] | None, args: ScriptArguments, flag: str) -> datasets.Dataset | None:
    if not files:
        return None
    split = load_ve_json(files, args.image_root, on_error=args.on_error, check_images=args.check_images)
    check_not_empty(len(split), f"{flag} {' '.join(files)}", NO_ROWS_FIX)
    return split


def majority_baseline(train: datasets.Dataset, split: datasets.Dataset) -> float:
    """The accuracy on `split` of always answering the most frequent training label."""
    majority = Counter(train["label"]).most_common(1)[0][0]
    return sum(label == majority for label in split["label"]) / len(split)


def main() -> None:
    script_args, training_args = parse_args()
    method = get_method(script_args.method)
    configure_logging(training_args, logger)
    set_seed(training_args.seed)

    train = load_split(script_args.train_json, script_args, "--train_json")
    evaluation = {
        name: split
        for name, files in (("val", script_args.val_json), ("test", script_args.test_json))
        if (split := load_split(files, script_args, f"--{name}_json")) is not None
    }
    logger.info("train: %d pairs; %s", len(train), {name: len(split) for name, split in evaluation.items()})
    config = AutoConfig.from_pretrained(script_args.model_name_or_path)
    if method_of(config).name != method.name:
        raise ArgumentError(
            f"{script_args.model_name_or_path} holds a {method_of(config).name} model; pass --method "
            f"{method_of(config).name}"
        )
    config = apply_config_overrides(config, script_args.config_overrides)
    processor = AutoProcessor.from_pretrained(script_args.model_name_or_path)
    model = load_ve_model(script_args.model_name_or_path, config)
    image_size = script_args.image_size or REAL_DATA_IMAGE_SIZE
    processor = fit_image_size(model, processor, method, image_size, logger)
    transform = albef_train_transform("train", image_size) if script_args.augment else None
    trainer = AlignmentTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=VeCollator(processor, image_transform=transform),
        processing_class=processor,
    )
    train_and_finish(trainer, lambda: finish(trainer, train, evaluation, script_args))


def finish(trainer, train, evaluation: dict[str, datasets.Dataset], script_args: ScriptArguments) -> None:
    """Score the validation and test pairs, and save the model with its processor and `eval_results.json`."""
    output_dir = Path(trainer.args.output_dir)
    model, processor = trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class
    results: dict[str, Any] = {
        "dataset_name": "SNLI-VE",
        "training_args": dict(training_args_summary(trainer)),
        "training_data": ", ".join(script_args.train_json),
    }
    for name, split in evaluation.items():
        scored = evaluate_ve(
            model, processor, split, batch_size=trainer.args.per_device_eval_batch_size,
            show_progress=not trainer.args.disable_tqdm,
        )  # fmt: skip
        scored = {key: value for key, value in scored.items() if key not in ("predictions", "labels")}
        scored["majority_baseline"] = majority_baseline(train, split)
        trainer.log_metrics(name, {"accuracy": scored["accuracy"]})
        results[name] = scored
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    scored = {name: results[name] for name in evaluation}
    ve_model_card(output_dir.name, script_args.method, scored).save(output_dir / "README.md")
    save_results(results, output_dir)


if __name__ == "__main__":
    run_script(main)
