"""Text-assignment pretraining for NLVR2 of ALBEF, SIMLA or CODIS (`--method albef|simla|codis`) with
`AlignmentTrainer`: the official `Pretrain_nlvr.py` step between pretraining and NLVR2 fine-tuning.

The model is the method's `<Method>ForTextAssignment`: each caption is fused with two images, its own and another
drawn from the batch by ITC image similarity, or two others, and a 3-way head says where its own image is (left,
right, neither). It starts from a pretraining folder (`examples/pretrain.py` output, `vlalign convert --task
pretraining`) as the official script loads the pretraining checkpoint: every fusion layer becomes the two layers of
its pair (`from_pretraining`; `--zero_token_types` starts a token-type table the pretrained BERT lacks, SIMLA's, at
zeros instead of the official random values), or from a text-assignment folder (`vlalign convert --task
text-assignment`) to continue. Its output starts `examples/finetune_nlvr2.py`.

Defaults are the official `configs/NLVR_pretrain.yaml` (ALBEF's; CODIS released none and takes ALBEF's): AdamW lr
2e-5, weight decay 0.02, 1 epoch, batch 64 per GPU, a warm-up at 1e-5 for the first 100 steps (`warmup_epochs: 1` of
the official scheduler, stepped every 100 iterations) then 2e-5 (the per-epoch cosine to `min_lr` 1e-5 never moves
in one epoch), 256 px with ALBEF's pretraining augmentation, captions cleaned and cut at 25 tokens (the processor's
`"pretrain"` preset), no gradient clipping. The draw of the other images uses torch's global generator, as the
official forward: the Trainer's `seed` makes it reproducible, and a resumed run continues its stream. It happens
within each process's batch (as the official per-GPU batch), so the batch per device must be at least 3.

    vlalign convert --method albef --task pretraining --checkpoint ALBEF_4M.pth --config configs/Pretrain.yaml \\
        --config configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain_text_assignment.py \\
        --model_name_or_path albef-4m --train_json data/coco.json data/vg.json data/cc3m_train.json \\
        data/cc3m_val.json data/sbu.json --image_root /datasets --output_dir out/albef-ta

The data are the official pretraining JSON files (`{"image": path, "caption": text}`, read by
`vlalign.data.loaders.load_karpathy_json`; a list of captions per image is also accepted, one drawn per step).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.convert.nlvr import load_two_image_model
from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.transforms import albef_train_transform
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

#: the methods with a text-assignment model
TA_METHODS = [name for name in method_names() if get_method(name).family.text_assignment_class is not None]

#: the official configs/NLVR_pretrain.yaml of ALBEF (CODIS released none and takes ALBEF's)
OFFICIAL_TEXT_ASSIGNMENT = dict(
    learning_rate=2e-5,
    weight_decay=0.02,
    num_train_epochs=1,
    per_device_train_batch_size=64,
    epoch_lr_schedule=True,
    warmup_lr=1e-5,
    warmup_steps=100,  # warmup_epochs 1 of the official scheduler, stepped every 100 iterations of epoch 0
    warmup_stages=1,
    min_lr=1e-5,
    max_grad_norm=0.0,  # no gradient clipping
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=50,
    dataloader_drop_last=True,  # the draw needs at least 3 captions per batch
    ddp_find_unused_parameters=False,
)
TA_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(OFFICIAL_TEXT_ASSIGNMENT) for name in TA_METHODS}
REAL_DATA_IMAGE_SIZE = 256
NO_ROWS_FIX = "pass annotation files with image-caption entries (entries skipped with --on_error skip count as none)"


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Method of the model; selects the model class and defaults.", "choices": TA_METHODS},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A vlalign folder / Hub id of the method: a pretraining model (its fusion layers are doubled) or "
            "a text-assignment model (`vlalign convert --task text-assignment`)."
        },
    )
    train_json: list[str] | None = field(
        default=None, metadata={"help": "Official pretraining files (coco.json, ...)."}
    )
    image_root: str = field(default="", metadata={"help": "Directory the JSON image paths are relative to."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config settings to change, 'name=value,...'."}
    )
    zero_token_types: bool = field(
        default=False,
        metadata={
            "help": "Start a token-type table the pretrained BERT lacks (SIMLA) at zeros instead of the official "
            "random values."
        },
    )
    image_size: int | None = field(
        default=None, metadata={"help": f"Training resolution (default: {REAL_DATA_IMAGE_SIZE})."}
    )
    augment: bool = field(default=True, metadata={"help": "ALBEF's pretraining augmentation (the official one)."})
    on_error: str = on_error_field()
    check_images: str = check_images_field()

    def __post_init__(self):
        if not self.model_name_or_path or not self.train_json:
            raise ArgumentError(
                "pass --model_name_or_path (a pretraining or text-assignment folder of the method) and --train_json "
                "(official pretraining JSON files)"
            )


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    script_args, training_args = parse_script_args((ScriptArguments, AlignmentTrainingArguments), TA_DEFAULTS, argv)
    if training_args.per_device_train_batch_size < 3:
        raise ArgumentError(
            "text assignment draws two other images of the batch per caption: pass --per_device_train_batch_size 3 "
            "or more"
        )
    return script_args, training_args


def load_captions(script_args: ScriptArguments) -> datasets.Dataset:
    """The pretraining JSON files as one dataset with a `captions` list per row and a row-unique `image_id` (the
    collator's augmentation seed key)."""
    parts = []
    for file in script_args.train_json:
        part = load_karpathy_json(
            file, script_args.image_root, on_error=script_args.on_error, check_images=script_args.check_images
        )
        if "caption" in part.column_names:
            captions = [[caption] for caption in part["caption"]]
            part = part.remove_columns("caption").add_column(
                "captions", captions, feature=datasets.List(datasets.Value("string"))
            )
        parts.append(part.select_columns(["image", "captions"]))
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    check_not_empty(len(dataset), f"--train_json {' '.join(script_args.train_json)}", NO_ROWS_FIX)
    return dataset.add_column("image_id", list(range(len(dataset))), feature=datasets.Value("int64"))


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

    train = load_captions(script_args)
    logger.info("train: %d image-caption rows", len(train))
    config = AutoConfig.from_pretrained(script_args.model_name_or_path)
    if method_of(config).name != method.name:
        raise ArgumentError(
            f"{script_args.model_name_or_path} holds a {method_of(config).name} model; pass --method "
            f"{method_of(config).name}"
        )
    config = apply_config_overrides(config, script_args.config_overrides)
    processor = AutoProcessor.from_pretrained(script_args.model_name_or_path)
    model = load_two_image_model(
        script_args.model_name_or_path, "text-assignment", config, zero_token_types=script_args.zero_token_types
    )
    model_size = model.config.vision_config.image_size
    image_size = script_args.image_size or REAL_DATA_IMAGE_SIZE
    if image_size != model_size:
        check_image_size(image_size, model.config.vision_config)
        logger.info("Interpolating position embeddings from %d px to %d px", model_size, image_size)
        model.set_image_size(image_size)
        processor = method.build_processor(processor.tokenizer, image_size)
    transform = albef_train_transform("pretrain", image_size) if script_args.augment else None
    collator = AlignmentCollator(processor, preset="pretrain", image_transform=transform, text_column="captions")
    trainer = AlignmentTrainer(
        model=model, args=training_args, train_dataset=train, data_collator=collator, processing_class=processor
    )
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.state.destroy_process_group()  # clean shutdown under torchrun / accelerate


if __name__ == "__main__":
    run_script(main)
