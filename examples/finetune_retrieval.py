"""Fine-tune any vlalign method (`--method albef|codis|fdt|simla`) for image-text retrieval with `AlignmentTrainer`.

The training model is the method's retrieval class where it has one (ALBEF: `AlbefForImageTextRetrieval`, ITC + ITM
with same-image positives, rows carry an image index `idx`; CODIS: `CodisForImageTextRetrieval`, by default its
pretraining alignment and codebook losses plus ITM with the same positives, `--config_overrides
finetune_objective=albef` for ALBEF's ITC + ITM; SIMLA: `SimlaForImageTextRetrieval`, ALBEF's retrieval objectives
through SIMLA's single stream, without the mask token and the MIM/PSL heads of pretraining) and otherwise its
contrastive pretraining model (FDT: `FdtForPreTraining`; a dual encoder fine-tunes with the objective it was
pretrained with, ITC over the batch, in which two captions of one image in a batch count as negatives of each other,
as in CLIP fine-tuning).

ALBEF defaults follow the official `Retrieval_coco.yaml`: lr 1e-5, weight decay 0.02, 5 epochs, batch 32 per GPU (eval
64), per-epoch cosine to min_lr 1e-6 without warm-up (`--epoch_lr_schedule`), 384 px with the official augmentation
(RandomResizedCrop 0.5-1, flip, RandomAugment). Flickr30k: `--num_train_epochs 10 --k_test 128`. COCO uses `--k_test
256` (the converted config's default). FDT released no fine-tuning recipe; its defaults here are its pretraining
optimizer (AdamW betas (0.9, 0.98), eps 1e-8, weight decay 0.1, batch 128 per GPU) with ALBEF's fine-tuning length and
lr (5 epochs, lr 1e-5, cosine to 0 without warm-up), at the model's own resolution with FDT's MoCo-v2 augmentation;
treat them as a starting point. CODIS released no recipe either and is ALBEF plus a codebook, so it takes ALBEF's
settings, resolution and augmentation unchanged. SIMLA's defaults are its official `Retrieval_coco.yaml` (ALBEF's
recipe on its code base: lr 1e-5, wd 0.02, 5 epochs, batch 32 per GPU and 32 for evaluation, cosine to 1e-6, 384 px,
ALBEF's train augmentation; k_test 256 from the converted config); Flickr30k (`Retrieval_flickr.yaml`):
`--num_train_epochs 10 --k_test 128 --per_device_eval_batch_size 64`. Every method evaluates retrieval on the val and
test splits after every epoch and keeps the best epoch by val r_mean (`--metric_for_best_model val_r_mean`), as ALBEF
selects its checkpoint. `--method fdt --help` shows that method's defaults.

Recipes: `examples/configs/<method>/finetune_{coco,flickr30k}.yaml` hold each method's COCO and Flickr30K fine-tuning
as argument files (data paths, start folder, every hyperparameter; FDT's are derived, see above). Give one (or any
YAML / JSON of this script's arguments) as the first argument; flags after it override its values, which override
the method's defaults:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_retrieval.py \
        examples/configs/albef/finetune_flickr30k.yaml --model_name_or_path out/albef-4m

Synthetic shapes (default; no download). Without --model_name_or_path a tiny random model is used (a smoke run);
fine-tune the output of `examples/pretrain.py --tiny` for a meaningful one:

    python examples/finetune_retrieval.py --output_dir /tmp/ex_ft --use_cpu --num_train 32 --num_validation 16 \
        --num_test 16 --num_train_epochs 2 --per_device_train_batch_size 8 --learning_rate 1e-4
    python examples/finetune_retrieval.py --method fdt --output_dir /tmp/ex_ft_fdt --use_cpu --num_train 32 \
        --num_validation 16 --num_test 16 --num_train_epochs 2 --per_device_train_batch_size 8 --learning_rate 1e-4
    python examples/finetune_retrieval.py --method codis --output_dir /tmp/ex_ft_codis --use_cpu --num_train 32 \
        --num_validation 16 --num_test 16 --num_train_epochs 2 --per_device_train_batch_size 8 --learning_rate 1e-4
    python examples/finetune_retrieval.py --method simla --output_dir /tmp/ex_ft_simla --use_cpu --num_train 32 \
        --num_validation 16 --num_test 16 --num_train_epochs 2 --per_device_train_batch_size 8 --learning_rate 1e-4

    python examples/finetune_retrieval.py --model_name_or_path out/albef-synthetic --output_dir out/ret-synthetic \
        --use_cpu --learning_rate 1e-4 --min_lr 1e-5 --num_train_epochs 3
    python examples/finetune_retrieval.py --method fdt --model_name_or_path out/fdt-synthetic \
        --output_dir out/fdt-ret-synthetic --use_cpu --learning_rate 1e-4 --num_train_epochs 3
    python examples/finetune_retrieval.py --method codis --model_name_or_path out/codis-synthetic \
        --output_dir out/codis-ret-synthetic --use_cpu --learning_rate 1e-4 --min_lr 1e-5 --num_train_epochs 3
    python examples/finetune_retrieval.py --method simla --model_name_or_path out/simla-synthetic \
        --output_dir out/simla-ret-synthetic --use_cpu --learning_rate 1e-4 --min_lr 1e-5 --num_train_epochs 3

Real data: COCO Karpathy splits from ALBEF's `data.tar.gz` (coco_train.json: one entry per caption with
`image_id`; coco_val.json / coco_test.json: one entry per image with a caption list), images under --image_root.
ALBEF: bert-base-uncased, ViT-B/16 at 384 px, starting from the official pretraining checkpoint converted with the
retrieval config, as the official Retrieval.py loads it (`vlalign convert --method albef --checkpoint ALBEF_4M.pth
--config configs/Retrieval_coco.yaml --config configs/config_bert.json --tokenizer bert-base-uncased
--output albef-4m-coco`: an AlbefForImageTextRetrieval at 384 px with k_test 256), or from an
`examples/pretrain.py` output (256 px, interpolated to 384 px here), 8 GPUs:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_retrieval.py \
        --model_name_or_path albef-4m-coco --train_json data/coco_train.json --val_json data/coco_val.json \
        --test_json data/coco_test.json --image_root /datasets/coco --output_dir out/albef-coco-retrieval \
        --dataloader_num_workers 8

FDT: from an `examples/pretrain.py --method fdt` output or a converted release (`vlalign convert --method fdt`),
at its own 224 px (FDT models cannot change resolution):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_retrieval.py --method fdt \
        --model_name_or_path out/fdt-cc3m --train_json data/coco_train.json --val_json data/coco_val.json \
        --test_json data/coco_test.json --image_root /datasets/coco --output_dir out/fdt-coco-retrieval \
        --dataloader_num_workers 8

CODIS: from an `examples/pretrain.py --method codis` output, or from an ALBEF-4M checkpoint converted into a CODIS
retrieval folder (`vlalign convert --method codis ... --config configs/Retrieval_coco.yaml` as for ALBEF above; the
prototypes start random, so this is ALBEF's fine-tuning with CODIS's losses, not the paper's model):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_retrieval.py \
        --method codis --model_name_or_path out/codis-4m --train_json data/coco_train.json \
        --val_json data/coco_val.json --test_json data/coco_test.json --image_root /datasets/coco \
        --output_dir out/codis-coco-retrieval --dataloader_num_workers 8

SIMLA: from an `examples/pretrain.py --method simla` output (256 px, interpolated to 384 px here) or the released
4M pretraining checkpoint converted with the retrieval config, as the official Retrieval.py loads it (`vlalign
convert --method simla --checkpoint simla_4m.pth --config configs/Retrieval_coco.yaml --config
configs/shared_bert.json --tokenizer bert-base-uncased --output simla-4m-coco`), 8 GPUs (the official run: 2 × 32):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_retrieval.py \
        --method simla --model_name_or_path simla-4m-coco --train_json data/coco_train.json \
        --val_json data/coco_val.json --test_json data/coco_test.json --image_root /datasets/coco \
        --output_dir out/simla-coco-retrieval --dataloader_num_workers 8

The paper's zero-shot Flickr30K protocol evaluates this COCO-fine-tuned model on Flickr30K's 1K test split
(`examples/evaluate_retrieval.py --k_test 128`).

(add `--bf16` for bf16 autocast; the official runs are fp32). Without best-model selection: `--eval_strategy no
--load_best_model_at_end false` (and `--save_strategy no` for no checkpoints).

The output folder holds the best (val r_mean) model with its processor; `eval_results.json` has its val and test
R@1/5/10 and r_mean.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import transformers
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.synthetic import make_synthetic_dataset, to_pair_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.data.transforms_fdt import fdt_train_transform
from vlalign.methods import Method, get_method, method_names, method_of
from vlalign.recipes import dataset_captions
from vlalign.training.argument_checks import ArgumentError, check_image_size, check_not_empty
from vlalign.training.script_helpers import (
    apply_config_overrides,
    check_images_field,
    on_error_field,
    parse_script_args,
    run_script,
    wants_teacher_view,
)
from vlalign.training.trainer import AlignmentTrainer, AlignmentTrainingArguments

logger = logging.getLogger(__name__)

#: evaluation and best-model selection shared by every method
SELECTION = dict(
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    metric_for_best_model="val_r_mean",
    load_best_model_at_end=True,
    logging_steps=50,
    ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient at every step
)

#: each method's fine-tuning settings, as parser defaults (command-line flags override them)
RETRIEVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "albef": dict(  # the official configs/Retrieval_coco.yaml
        learning_rate=1e-5,
        weight_decay=0.02,
        num_train_epochs=5,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        epoch_lr_schedule=True,
        min_lr=1e-6,
        max_grad_norm=0.0,  # no gradient clipping (the Trainer's default clips at 1.0)
        **SELECTION,
    ),
    "fdt": dict(  # no released recipe: FDT's pretraining optimizer, ALBEF's fine-tuning length and lr
        learning_rate=1e-5,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        num_train_epochs=5,
        per_device_train_batch_size=128,
        per_device_eval_batch_size=128,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        epoch_lr_schedule=False,
        max_grad_norm=0.0,  # no gradient clipping, as in FDT's pretraining
        **SELECTION,
    ),
}

#: each method's official train-time augmentation at a given resolution
TRAIN_TRANSFORMS: dict[str, Callable[[int], Callable]] = {
    "albef": lambda image_size: albef_train_transform("train", image_size),  # RandomResizedCrop 0.5-1, RandAug
    "fdt": fdt_train_transform,  # MoCo-v2 (FDT's only training transform)
}

#: fine-tuning resolution on real data where it differs from the model's own (methods not listed keep theirs)
REAL_DATA_IMAGE_SIZE: dict[str, int] = {"albef": 384}

# CODIS is ALBEF plus a codebook and released no fine-tuning recipe (docs/reproducing.md): ALBEF's settings,
# augmentation and 384 px, unchanged. What it optimises is a config choice (`finetune_objective`), not a flag here.
RETRIEVAL_DEFAULTS["codis"] = dict(RETRIEVAL_DEFAULTS["albef"])
TRAIN_TRANSFORMS["codis"] = TRAIN_TRANSFORMS["albef"]
REAL_DATA_IMAGE_SIZE["codis"] = REAL_DATA_IMAGE_SIZE["albef"]

# SIMLA's Retrieval_coco.yaml is ALBEF's recipe (docs/reproducing.md): AdamW lr 1e-5, wd 0.02, 5 epochs, batch 32
# per GPU (32 for evaluation too), per-epoch cosine to 1e-6, 384 px, ALBEF's train augmentation (RandomResizedCrop
# 0.5-1, flip, RandomAugment). k_test (256 COCO, 128 Flickr) comes from the config.
RETRIEVAL_DEFAULTS["simla"] = dict(RETRIEVAL_DEFAULTS["albef"], per_device_eval_batch_size=32)
TRAIN_TRANSFORMS["simla"] = TRAIN_TRANSFORMS["albef"]
REAL_DATA_IMAGE_SIZE["simla"] = 384

SYNTHETIC_IMAGE_SIZE = 64

NO_ROWS_FIX = "pass an annotation file with image-caption entries (entries skipped with --on_error skip count as none)"


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Alignment method; selects the model, processor and defaults.", "choices": method_names()},
    )
    dataset: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (built-in shapes, no download) or 'json' (implied by --train_json)."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Converted or pretrained vlalign folder / Hub id (weights and processor). Required for real "
            "data; with synthetic data a tiny random model is used when omitted."
        },
    )
    train_json: str | None = field(
        default=None, metadata={"help": "Karpathy train json: [{image, caption (str), image_id}, ...]."}
    )
    val_json: str | None = field(default=None, metadata={"help": "Karpathy val json: [{image, caption: [str]}, ...]."})
    test_json: str | None = field(
        default=None, metadata={"help": "Karpathy test json: [{image, caption: [str]}, ...]."}
    )
    image_root: str = field(default="", metadata={"help": "Directory the json image paths are relative to."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config settings to change, 'name=value,name=value', applied to the loaded (or tiny) model's "
            "config and checked like the config's own fields, e.g. CODIS's 'finetune_objective=albef'."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Fine-tuning resolution (default: ALBEF and CODIS 384 for real data, otherwise the model's own). "
            "Position embeddings are interpolated when it differs from the model's (methods that support it)."
        },
    )
    augment: bool | None = field(
        default=None,
        metadata={
            "help": "The method's train-time augmentation (`--augment true/false`). Default: on for real data, off for "
            "synthetic data (its captions name positions, which crops and flips would falsify)."
        },
    )
    on_error: str = on_error_field()
    check_images: str = check_images_field()
    num_train: int = field(default=3000, metadata={"help": "Synthetic training images (2 captions each)."})
    num_validation: int = field(default=100, metadata={"help": "Synthetic validation images."})
    num_test: int = field(default=100, metadata={"help": "Synthetic test images."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data (as used for pretraining)."})

    def __post_init__(self):
        if self.train_json:
            self.dataset = "json"
        if self.dataset not in ("synthetic", "json"):
            raise ValueError(f"--dataset must be 'synthetic' or 'json', got {self.dataset!r}")
        if self.dataset == "json" and not (self.train_json and self.model_name_or_path):
            raise ValueError("real data needs --train_json and --model_name_or_path (a converted/pretrained folder)")


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    return parse_script_args((ScriptArguments, AlignmentTrainingArguments), RETRIEVAL_DEFAULTS, argv)


def training_class(method: Method) -> type:
    """The retrieval fine-tuning model, or for dual encoders without one the contrastive pretraining model."""
    return method.retrieval_class or method.pretraining_class


def add_idx(pairs: datasets.Dataset) -> datasets.Dataset:
    """`idx`: a contiguous int per distinct `image_id`, in order of first appearance (what the loaders add)."""
    index: dict = {}
    idx = [index.setdefault(image_id, len(index)) for image_id in pairs["image_id"]]
    return pairs.add_column("idx", idx, feature=datasets.Value("int64"))


def with_row_keys(pairs: datasets.Dataset) -> datasets.Dataset:
    """Replace `image_id` (no longer needed once `idx` exists) by the row number: the collator keys each row's
    augmentation on `image_id`, and the captions of one image should get independent crops, as in the official code."""
    return pairs.remove_columns("image_id").add_column(
        "image_id", list(range(len(pairs))), feature=datasets.Value("int64")
    )


def main() -> None:
    script_args, training_args = parse_args()
    method = get_method(script_args.method)
    model_class = training_class(method)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(logging.INFO if training_args.should_log else log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    # ------------------------------------------------------------------------------------------------------ data
    synthetic = script_args.dataset == "synthetic"
    eval_splits = {}
    if synthetic:
        splits = make_synthetic_dataset(
            num_train=script_args.num_train,
            num_validation=script_args.num_validation,
            num_test=script_args.num_test,
            image_size=SYNTHETIC_IMAGE_SIZE,
            seed=script_args.synthetic_seed,
        )
        train_dataset = add_idx(to_pair_dataset(splits["train"]))
        for name, split in (("val", "validation"), ("test", "test")):
            if len(splits[split]):
                eval_splits[name] = splits[split].select_columns(["image", "captions", "image_id"])
    else:
        load = dict(on_error=script_args.on_error, check_images=script_args.check_images)
        train_dataset = load_karpathy_json(script_args.train_json, script_args.image_root, "train", **load)
        check_not_empty(len(train_dataset), f"--train_json {script_args.train_json}", NO_ROWS_FIX)
        for name, file in (("val", script_args.val_json), ("test", script_args.test_json)):
            if file:
                eval_splits[name] = load_karpathy_json(file, script_args.image_root, "eval", **load)
                check_not_empty(len(eval_splits[name]), f"--{name}_json {file}", NO_ROWS_FIX)
    train_dataset = with_row_keys(train_dataset)
    logger.info(
        "train: %d pairs of %d images; eval: %s",
        len(train_dataset),
        len(set(train_dataset["idx"])),
        {name: len(split) for name, split in eval_splits.items()},
    )
    if not eval_splits:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
        logger.warning("No val/test data: no evaluation and no best-model selection.")
    elif "val" not in eval_splits and training_args.metric_for_best_model == "val_r_mean":
        training_args.metric_for_best_model = f"{next(iter(eval_splits))}_r_mean"

    # ------------------------------------------------------------------------------------------ model, processor
    if script_args.model_name_or_path:
        folder_method = method_of(AutoConfig.from_pretrained(script_args.model_name_or_path))
        if folder_method.name != method.name:
            raise ArgumentError(
                f"{script_args.model_name_or_path} holds a {folder_method.name} model; pass --method {folder_method.name}"
            )
        processor = AutoProcessor.from_pretrained(script_args.model_name_or_path)
        config = apply_config_overrides(
            AutoConfig.from_pretrained(script_args.model_name_or_path), script_args.config_overrides
        )
    else:
        tokenizer = method.build_tokenizer(dataset_captions(splits))
        processor = method.build_processor(tokenizer, SYNTHETIC_IMAGE_SIZE)
        config = apply_config_overrides(
            method.tiny_config(tokenizer, SYNTHETIC_IMAGE_SIZE), script_args.config_overrides
        )
    model_size = config.vision_config.image_size
    image_size = script_args.image_size or (
        model_size if synthetic else REAL_DATA_IMAGE_SIZE.get(method.name, model_size)
    )
    if image_size != model_size:  # checked before any model is built
        if not hasattr(model_class, "set_image_size"):
            raise ArgumentError(f"{method.name} models cannot change resolution ({model_size} px); drop --image_size")
        check_image_size(image_size, config.vision_config)
    if script_args.model_name_or_path:
        model = model_class.from_pretrained(script_args.model_name_or_path, config=config)
    else:
        logger.warning("No --model_name_or_path: fine-tuning a tiny *randomly initialised* model (smoke run).")
        model = model_class(config)
    if image_size != model_size:
        logger.info("Interpolating position embeddings from %d px to %d px", model_size, image_size)
        model.set_image_size(image_size)
        processor = method.build_processor(processor.tokenizer, image_size)
    logger.info(
        "%s at %d px: %.1fM trainable parameters",
        type(model).__name__,
        image_size,
        model.num_parameters(only_trainable=True) / 1e6,
    )

    augment = (not synthetic) if script_args.augment is None else script_args.augment
    takes_idx = "idx" in inspect.signature(model.forward).parameters  # same-image positives (ALBEF's retrieval)
    collator = AlignmentCollator(
        processor,
        preset="train",
        image_transform=TRAIN_TRANSFORMS[method.name](image_size) if augment else None,
        text_column="caption",
        idx_column="idx" if takes_idx else None,
        teacher_view=wants_teacher_view(model.config, augment),
    )
    # AlignmentTrainer.evaluate runs retrieval on each named eval split (metrics eval_val_*, eval_test_*)
    trainer = AlignmentTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_splits or None,
        data_collator=collator,
        processing_class=processor,
    )

    # ------------------------------------------------------------------------------------------------- training
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the best model when load_best_model_at_end, with its processor
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    if eval_splits:
        metrics = trainer.evaluate()  # every eval split, with the saved model
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    trainer.accelerator.state.destroy_process_group()  # clean shutdown under torchrun / accelerate


if __name__ == "__main__":
    run_script(main)
