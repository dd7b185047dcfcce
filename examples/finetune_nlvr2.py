"""Fine-tune ALBEF, SIMLA or CODIS (`--method albef|simla|codis`) for NLVR2 (is a sentence true of a pair of images?)
with `AlignmentTrainer`, then score the dev and test pairs with accuracy as the official `NLVR.py` does.

The model is the method's `<Method>ForVisualReasoning`: both images through the ViT, the sentence through the text
encoder and the two-image fusion encoder (each fusion layer doubled, one per image, key/value shared), and the official
head on the fused [CLS], trained with (1-α)·cross-entropy + α·soft cross-entropy against the momentum model (α = 0.4,
ramped from 0 over the first epoch: the official NLVR config has `warm_up: True`). Start from:

* a converted official checkpoint, `vlalign convert --method M --task nlvr2` (a text-assignment checkpoint, placed as
  the official `NLVR.py` places it, a pretraining checkpoint through the text-assignment layer doubling, or a
  fine-tuned NLVR one);
* a text-assignment folder (an `examples/pretrain_text_assignment.py` output: `from_text_assignment`, the momentum
  copies keep their construction-time weights as in the official script; `--momentum_from_loaded` starts them from the
  loaded weights);
* any other vlalign folder of the method (an `examples/pretrain.py` output, a quick-start model): `from_pretraining`.

Defaults are the official `configs/NLVR.yaml` (ALBEF's; SIMLA's is the same; CODIS released none and takes ALBEF's):
AdamW lr 2e-5, weight decay 0.02, 10 epochs, batch 16 per GPU (also for evaluation), the per-epoch cosine to 1e-6
after a warm-up at 1e-5 for the first 100 steps (`warmup_epochs: 1` of the official scheduler, stepped every 100
iterations), 384 px with ALBEF's train augmentation, no gradient clipping:

    vlalign convert --method albef --task nlvr2 --checkpoint pretrain_model_nlvr.pth --config configs/NLVR.yaml \\
        --config configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m-nlvr2
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_nlvr2.py \\
        --model_name_or_path albef-4m-nlvr2 --train_json data/nlvr_train.json --val_json data/nlvr_dev.json \\
        --test_json data/nlvr_test.json --image_root /datasets/NLVR2 --output_dir out/albef-nlvr2

The data are the official NLVR2 JSON files (`vlalign.data.nlvr.load_nlvr_json`: `{"images": [left, right],
"sentence", "label": "True" | "False"}`, the images under `<image_root>`). The output folder holds the fine-tuned model
with its processor (and the `visual-reasoning` pipeline for remote code), `eval_results.json` with the dev and test
accuracy (overall and per class) beside the majority-class baseline, and a model card whose `model-index` holds the
accuracies.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.convert.nlvr import load_two_image_model
from vlalign.data.nlvr import NlvrCollator, load_nlvr_json
from vlalign.data.transforms import albef_train_transform
from vlalign.evaluation.nlvr import evaluate_nlvr, nlvr_model_card
from vlalign.hub import training_args_summary
from vlalign.hub.push import save_results
from vlalign.methods import get_method, method_names, method_of
from vlalign.training.argument_checks import ArgumentError, check_image_size, check_not_empty
from vlalign.training.script_helpers import (
    apply_config_overrides,
    check_images_field,
    on_error_field,
    parse_script_args,
    run_script,
)
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

logger = logging.getLogger(__name__)

#: the methods with an NLVR2 model
NLVR_METHODS = [name for name in method_names() if get_method(name).family.visual_reasoning_class is not None]

#: the official configs/NLVR.yaml of ALBEF (SIMLA's is the same; CODIS released none and takes ALBEF's)
OFFICIAL_NLVR = dict(
    learning_rate=2e-5,
    weight_decay=0.02,
    num_train_epochs=10,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=16,  # NLVR.py builds every loader with config['batch_size']
    epoch_lr_schedule=True,
    warmup_lr=1e-5,
    warmup_steps=100,  # warmup_epochs 1 of the official scheduler, stepped every 100 iterations of epoch 0
    warmup_stages=1,
    min_lr=1e-6,
    max_grad_norm=0.0,  # no gradient clipping
    eval_strategy="no",  # scored after training (the official run scores dev and test after every epoch)
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=50,
    ddp_find_unused_parameters=False,
)
NLVR_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(OFFICIAL_NLVR) for name in NLVR_METHODS}
REAL_DATA_IMAGE_SIZE = 384
NO_ROWS_FIX = "pass annotation files with pairs (entries skipped with --on_error skip count as none)"


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Method of the model; selects the model class and defaults.", "choices": NLVR_METHODS},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A vlalign folder / Hub id of the method: an NLVR2 model (`vlalign convert --task nlvr2`), a "
            "text-assignment model, or any other (its encoders start the NLVR2 model through the layer doubling)."
        },
    )
    train_json: list[str] | None = field(default=None, metadata={"help": "Official training files (nlvr_train.json)."})
    val_json: list[str] | None = field(default=None, metadata={"help": "Official dev files (nlvr_dev.json)."})
    test_json: list[str] | None = field(default=None, metadata={"help": "Official test files (nlvr_test.json)."})
    image_root: str = field(default="", metadata={"help": "Folder of the NLVR2 images (the JSON names are under it)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config settings to change, 'name=value,...', e.g. 'alpha=0.2'."}
    )
    momentum_from_loaded: bool = field(
        default=False,
        metadata={
            "help": "Start the momentum copies from the loaded weights when initialising from a text-assignment or "
            "pretraining folder (the official NLVR.py leaves them at their construction-time random weights)."
        },
    )
    zero_token_types: bool = field(
        default=False,
        metadata={
            "help": "From a pretraining folder whose BERT has no token-type table (SIMLA): start the two-image "
            "model's at zeros instead of the official random values."
        },
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
                "official nlvr_train.json)"
            )


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    return parse_script_args((ScriptArguments, AlignmentTrainingArguments), NLVR_DEFAULTS, argv)


def load_split(files: list[str] | None, args: ScriptArguments, flag: str) -> datasets.Dataset | None:
    if not files:
        return None
    split = load_nlvr_json(files, args.image_root, on_error=args.on_error, check_images=args.check_images)
    check_not_empty(len(split), f"{flag} {' '.join(files)}", NO_ROWS_FIX)
    return split


def majority_baseline(train: datasets.Dataset, split: datasets.Dataset) -> float:
    """The accuracy on `split` of always answering the most frequent training label."""
    majority = Counter(train["label"]).most_common(1)[0][0]
    return sum(label == majority for label in split["label"]) / len(split)


def main() -> None:
    script_args, training_args = parse_args()
    method = get_method(script_args.method)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    train = load_split(script_args.train_json, script_args, "--train_json")
    evaluation = {
        name: split
        for name, files in (("dev", script_args.val_json), ("test", script_args.test_json))
        if (split := load_split(files, script_args, f"--{'val' if name == 'dev' else name}_json")) is not None
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
    model = load_two_image_model(
        script_args.model_name_or_path, "nlvr2", config, script_args.momentum_from_loaded, script_args.zero_token_types
    )
    model_size = model.config.vision_config.image_size
    image_size = script_args.image_size or REAL_DATA_IMAGE_SIZE
    if image_size != model_size:
        check_image_size(image_size, model.config.vision_config)
        logger.info("Interpolating position embeddings from %d px to %d px", model_size, image_size)
        model.set_image_size(image_size)
        processor = method.build_processor(processor.tokenizer, image_size)
    transform = albef_train_transform("train", image_size) if script_args.augment else None
    trainer = AlignmentTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=NlvrCollator(processor, image_transform=transform),
        processing_class=processor,
    )
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        finish(trainer, train, evaluation, script_args)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.destroy_process_group()  # clean shutdown under torchrun / accelerate


def finish(trainer, train, evaluation: dict[str, datasets.Dataset], script_args: ScriptArguments) -> None:
    """Score the dev and test pairs, and save the model with its processor and `eval_results.json`."""
    output_dir = Path(trainer.args.output_dir)
    model, processor = trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class
    results: dict[str, Any] = {
        "dataset_name": "NLVR2",
        "training_args": dict(training_args_summary(trainer)),
        "training_data": ", ".join(script_args.train_json),
    }
    for name, split in evaluation.items():
        scored = evaluate_nlvr(
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
    nlvr_model_card(output_dir.name, script_args.method, scored).save(output_dir / "README.md")
    save_results(results, output_dir)


if __name__ == "__main__":
    run_script(main)
