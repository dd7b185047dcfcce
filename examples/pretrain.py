"""Pretrain any vlalign method (`--method albef|codis|fdt|simla`) from scratch or from a folder with `AlignmentTrainer`.

ALBEF (ITC + ITM + MLM, momentum distillation) defaults follow the official `Pretrain.yaml`: lr 1e-4, weight decay
0.02, 30 epochs, batch 64 per GPU, staircase warm-up over 2000 steps from 1e-5, per-epoch cosine to 1e-5, 256 px,
captions cut to 25 tokens, bert-base-uncased. FDT (CLIP + Finite Discrete Tokens, ITC) defaults follow the released
`config_cc3m.yaml`: AdamW betas (0.9, 0.98), eps 1e-8, weight decay 0.1, batch 128 per GPU, 32 epochs, linear
warm-up from 1e-4 to the peak lr 1e-3 over 2500 steps then cosine to 0 (`--fdt_lr_schedule`), a checkpoint every
2700 steps, seed 0, 224 px with MoCo-v2 augmentation, 77 text positions, OpenAI's BPE file. CODIS (ALBEF plus a
codebook shared by image and text: teacher-student alignment, code alignment by optimal transport, OT loss, ITM,
MLM) released no code; it trains on the same 4M data for the same 30 epochs as ALBEF, so its defaults are ALBEF's
(the codebook is kept out of weight decay by the method's optimizer groups). Its open design choices are
`CodisConfig` fields: switch them with `--config_overrides` (below) or a config json (`--config_name`).
SIMLA (ALBEF's code base with one 12-layer
cross-attention BERT shared by every pass, plus masked image modelling and PSL) takes the official SIMLA
`Pretrain.yaml`, which is ALBEF's (lr 1e-4, wd 0.02, 30 epochs, 64 per GPU, 2000 warm-up steps from 1e-5, cosine to
1e-5, 256 px, ALBEF's augmentation). Its masked image modelling predicts image-tokenizer codes of block-masked
patches: `--image_tokenizer DIR` is the official DALL-E dVAE encoder converted with
`vlalign.convert.dvae.convert_dalle_encoder` (8192 codes, 128-px inputs for the 16 × 16 grid at 256 px); without it
the built-in `PatchCodebookImageTokenizer` (k-means codes fitted on the first 5000 training images, no external
weights; a documented deviation) is fitted and saved to `OUTPUT_DIR/image_tokenizer` (reloaded when resuming or
continuing from that folder). With augmentation on, the tokenizer sees SIMLA's second, independently augmented view
(RandomResizedCrop 0.2-1, flip, RandomAugment at the tokenizer's input size). `--method fdt --help` shows the
defaults of that method; every `TrainingArguments` / `AlignmentTrainingArguments` flag overrides them.

Recipes: `examples/configs/<method>/pretrain.yaml` holds each method's official run as an argument file (data paths,
tokenizer, every hyperparameter). Give it (or any YAML / JSON of this script's arguments) as the first argument; flags
after it override its values, which override the method's defaults:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py \
        examples/configs/albef/pretrain.yaml --output_dir out/albef-4m-run2

Synthetic shapes (default; no download, tokenizer built in-process; a tiny model that learns on a CPU in minutes):

    python examples/pretrain.py --tiny --output_dir out/albef-synthetic --use_cpu \
        --max_steps 700 --per_device_train_batch_size 32 --learning_rate 1e-3 \
        --epoch_lr_schedule false --lr_scheduler_type cosine --warmup_steps 100 --logging_steps 25
    python examples/pretrain.py --method fdt --tiny --output_dir out/fdt-synthetic --use_cpu \
        --max_steps 800 --per_device_train_batch_size 32 --learning_rate 2e-3 --weight_decay 0.02 \
        --fdt_lr_schedule false --lr_scheduler_type cosine --warmup_steps 100 --logging_steps 25
    python examples/pretrain.py --method codis --tiny --output_dir out/codis-synthetic --use_cpu \
        --max_steps 600 --per_device_train_batch_size 32 --learning_rate 2e-3 \
        --epoch_lr_schedule false --lr_scheduler_type cosine --warmup_steps 100 --logging_steps 25
    python examples/pretrain.py --method simla --tiny --output_dir out/simla-synthetic --use_cpu \
        --max_steps 600 --per_device_train_batch_size 32 --learning_rate 2e-3 \
        --epoch_lr_schedule false --lr_scheduler_type cosine --warmup_steps 100 --logging_steps 25

Smoke runs (seconds):

    python examples/pretrain.py --tiny --output_dir /tmp/ex_pre --use_cpu --max_steps 3 \
        --per_device_train_batch_size 8 --num_train 64 --num_test 16
    python examples/pretrain.py --method fdt --tiny --output_dir /tmp/ex_pre_fdt --use_cpu --max_steps 3 \
        --per_device_train_batch_size 8 --num_train 64 --num_test 16
    python examples/pretrain.py --method codis --tiny --output_dir /tmp/ex_pre_codis --use_cpu --max_steps 3 \
        --per_device_train_batch_size 8 --num_train 64 --num_test 16
    python examples/pretrain.py --method simla --tiny --output_dir /tmp/ex_pre_simla --use_cpu --max_steps 3 \
        --per_device_train_batch_size 8 --num_train 64 --num_test 16

Real data: a json list of {"image": path, "caption": str or [str, ...]} (paths relative to --image_root or
absolute), e.g. ALBEF's pretraining json (`data.tar.gz` of salesforce/ALBEF: coco.json, vg.json, cc3m_train.json,
sbu.json, ...). ALBEF's ViT-B/16 + BERT-base at 256 px, 8 GPUs:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py \
        --train_json data/coco.json data/vg.json data/cc3m_train.json data/sbu.json --image_root /datasets \
        --eval_json data/coco_test.json --eval_image_root /datasets/coco \
        --tokenizer_name bert-base-uncased --output_dir out/albef-4m \
        --dataloader_num_workers 8

FDT's CC3M run (ViT-B/32 + 12-layer text transformer, 16384 FDT of size 512, 224 px, 8 GPUs × 128 = 1024 pairs per
step, 2705 steps per epoch over CC3M's 2.77M pairs, 86,560 steps); `bpe_simple_vocab_16e6.txt.gz` is the released
BPE file (OpenAI CLIP's, shipped in FDT's `text_info/`), a tokenizer folder works as well:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py --method fdt \
        --train_json data/cc3m_train.json --image_root /datasets/cc3m \
        --eval_json data/coco_test.json --eval_image_root /datasets/coco \
        --tokenizer_name text_info/bpe_simple_vocab_16e6.txt.gz --output_dir out/fdt-cc3m \
        --dataloader_num_workers 5

or, as the official run reads it, from CC3M's webdataset shards (streamed; 2,770,000 pairs per epoch):

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py --method fdt \
        --train_shards '/datasets/cc3m/{00000..00331}.tar' --train_num_samples 2770000 \
        --tokenizer_name text_info/bpe_simple_vocab_16e6.txt.gz --output_dir out/fdt-cc3m \
        --dataloader_num_workers 5

(add `--bf16` for bf16 autocast; the official runs are fp32). Continue from a converted checkpoint instead:
`vlalign convert --method albef --checkpoint ALBEF_4M.pth --config configs/Pretrain.yaml --config
configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m`, then `--model_name_or_path albef-4m`.

CODIS from scratch is the ALBEF command above with `--method codis` (same data, same defaults). There is no CODIS
checkpoint to convert; the cheap start for short CODIS runs and ablations is an ALBEF-4M (or TCL-4M, same layout)
checkpoint converted into a CODIS folder, whose prototypes start as random unit vectors (the paper itself starts from
DeiT + BERT):

    vlalign convert --method codis --checkpoint ALBEF_4M.pth --config configs/Pretrain.yaml \
        --config configs/config_bert.json --tokenizer bert-base-uncased --output codis-from-albef-4m
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py --method codis \
        --model_name_or_path codis-from-albef-4m \
        --train_json data/coco.json data/vg.json data/cc3m_train.json data/sbu.json --image_root /datasets \
        --eval_json data/coco_test.json --eval_image_root /datasets/coco --output_dir out/codis-4m \
        --dataloader_num_workers 8

SIMLA on the 4M data with the official DALL-E dVAE (its `encoder.pkl`, converted once into a folder), 8 GPUs:

    python -c "from vlalign.convert.dvae import convert_dalle_encoder; convert_dalle_encoder('encoder.pkl', 'dalle-dvae')"
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/pretrain.py --method simla \
        --image_tokenizer dalle-dvae \
        --train_json data/coco.json data/vg.json data/cc3m_train.json data/sbu.json --image_root /datasets \
        --eval_json data/coco_test.json --eval_image_root /datasets/coco --output_dir out/simla-4m \
        --dataloader_num_workers 8

`--config_name` takes a config json (or folder / Hub id) of the method instead of the paper's default; `--tiny`
uses the method's tiny recipe (`vlalign.methods.get_method(name).tiny_config`). `--model_name_or_path` continues
from a vlalign folder of the same method (a converted checkpoint or an earlier run: weights, momentum encoders,
queues, codebook), with that folder's processor (tokenizer). `--config_overrides 'name=value,...'` changes config
settings of any of these (a new model or a loaded folder), e.g. CODIS's open choices for an ablation:
`--config_overrides 'code_loss_type=assignment_contrast'`, `'ot_loss_weight=0'` or `'sinkhorn_use_queue=true'`.
With `teacher_image_view=augmented` (TCL's recipe) the collator adds a second, independently augmented view of every
image for the momentum image encoder; it needs the augmentation (on for real data; `--augment true` on synthetic).

Notes:
* "From scratch" is a random initialisation. The official ALBEF run starts the ViT from DeiT-B/16 (ImageNet) and
  the text/fusion encoder from bert-base-uncased; vlalign does not load those weights for you. FDT trains from
  scratch, as here.
* Each caption list is sampled once per row per epoch (as the official datasets do); a pair-per-row json
  (one caption string per entry) gives one row per pair.
* The official FDT run reads CC3M as a webdataset (`--train_shards`); a json in the layout above is equivalent.
* Every image a json names is opened (its header read, `--check_images header`) when the json is loaded, on every
  process: about 4 minutes for CC3M. `--check_images decode` decodes them fully (about an hour for CC3M), `none`
  skips the check. For web-scale corpora stream shards instead (`--train_shards`, `--train_dataset_name`): nothing is
  read up front, each DataLoader worker decodes its own shards, unusable samples are skipped, counted and logged
  (`skipped_samples`), and `--resume_from_checkpoint` continues with the next unseen sample.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.data.collator import AlignmentCollator
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.masked_image import DalleImageTokenizer, PatchCodebookImageTokenizer, simla_codebook_view_transform
from vlalign.data.streaming import ImageTextStream, datasets_shards, webdataset_shards
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.data.transforms_fdt import fdt_train_transform
from vlalign.methods import Method, get_method, method_names, method_of
from vlalign.recipes import dataset_captions
from vlalign.recipes.fdt import fdt_lr_schedule
from vlalign.training.argument_checks import ArgumentError, bad_value_of, check_image_size, check_not_empty
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

#: each method's official pretraining settings, as parser defaults (command-line flags override them)
PRETRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "albef": dict(  # configs/Pretrain.yaml
        learning_rate=1e-4,
        weight_decay=0.02,
        num_train_epochs=30,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=64,
        epoch_lr_schedule=True,
        warmup_steps=2000,
        warmup_lr=1e-5,
        min_lr=1e-5,
        max_grad_norm=0.0,  # no gradient clipping (the Trainer's default clips at 1.0)
        logging_steps=50,
        save_strategy="epoch",
        ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient at every step
        tokenizer_name="bert-base-uncased",
    ),
    "fdt": dict(  # example/clip_fdt/config_cc3m.yaml
        learning_rate=1e-3,  # the peak (`warmup_lr` in the release)
        warmup_lr=1e-4,  # the warm-up's start (`base_lr` in the release)
        min_lr=0.0,
        warmup_steps=2500,
        fdt_lr_schedule=True,
        epoch_lr_schedule=False,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        num_train_epochs=32,
        per_device_train_batch_size=128,
        per_device_eval_batch_size=128,
        max_grad_norm=0.0,  # no gradient clipping
        logging_steps=50,
        save_strategy="steps",
        save_steps=2700,
        seed=0,
        ddp_find_unused_parameters=False,  # the frozen patch embedding is no parameter of the optimizer either
        tokenizer_name="bpe_simple_vocab_16e6.txt.gz",
    ),
}

#: each method's official train-time augmentation at a given resolution
TRAIN_TRANSFORMS: dict[str, Callable[[int], Callable]] = {
    "albef": lambda image_size: albef_train_transform("pretrain", image_size),  # RandomResizedCrop 0.2-1, RandAug
    "fdt": fdt_train_transform,  # MoCo-v2: RandomResizedCrop 0.2-1, colour jitter, grey, blur, flip
}

# CODIS is ALBEF plus a codebook and released no recipe of its own; it pretrains on ALBEF's 4M data for ALBEF's 30
# epochs (docs/reproducing.md), so it takes ALBEF's settings and augmentation as they are. Its one optimizer difference,
# no weight decay on the prototypes, comes with the method's parameter groups, not from a flag.
PRETRAIN_DEFAULTS["codis"] = dict(PRETRAIN_DEFAULTS["albef"])
TRAIN_TRANSFORMS["codis"] = TRAIN_TRANSFORMS["albef"]

# SIMLA's released Pretrain.yaml is ALBEF's (docs/reproducing.md): AdamW lr 1e-4, wd 0.02, 30 epochs, 64 per GPU, ALBEF's
# staircase warm-up from 1e-5 over 2000 steps and per-epoch cosine to 1e-5, 256 px, ALBEF's pretraining augmentation
# (§2.3). `ddp_find_unused_parameters=False` holds: with the MIM inputs the collator always adds, the mask token and
# the MIM head get gradients at every step, like every other trainable parameter.
PRETRAIN_DEFAULTS["simla"] = dict(PRETRAIN_DEFAULTS["albef"])
TRAIN_TRANSFORMS["simla"] = TRAIN_TRANSFORMS["albef"]

#: where the image tokenizer of masked image modelling is saved inside the output folder (the built-in one)
IMAGE_TOKENIZER_FOLDER = "image_tokenizer"

SYNTHETIC_IMAGE_SIZE = 64  # pixels of the generated images (the processor resizes them to the model's size)

#: token-id fields of a text config that follow the tokenizer (each method's config has some of them)
TOKEN_ID_FIELDS = ("pad_token_id", "cls_token_id", "mask_token_id", "bos_token_id", "eos_token_id")


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Alignment method; selects the model, processor and official defaults.",
                  "choices": method_names()},
    )  # fmt: skip
    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "'synthetic' (built-in shapes, no download), 'json', 'shards' or 'stream' (implied by "
            "--train_json, --train_shards, --train_dataset_name)."
        },
    )
    train_json: list[str] | None = field(
        default=None, metadata={"help": "Pretraining json file(s): [{image, caption (str or list)}, ...]."}
    )
    train_shards: list[str] | None = field(
        default=None,
        metadata={
            "help": "webdataset tar shards to stream (paths, URLs or brace patterns, e.g. "
            "'cc3m/{000000..000331}.tar'; image in .jpg/.png/.webp, caption in .txt): read and decoded lazily in "
            "the DataLoader workers, split by shard over processes and workers, resumable mid-epoch."
        },
    )
    train_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A `datasets` dataset to stream (`load_dataset(name, data_files=..., streaming=True)`): a Hub id "
            "or a builder such as 'parquet' with --train_data_files; columns --image_column and --text_column."
        },
    )
    train_data_files: list[str] | None = field(default=None, metadata={"help": "Data files of --train_dataset_name."})
    image_column: str = field(default="image", metadata={"help": "Image column of --train_dataset_name."})
    text_column: str = field(default="caption", metadata={"help": "Caption column of --train_dataset_name."})
    train_num_samples: int | None = field(
        default=None,
        metadata={
            "help": "Samples per epoch of a stream, when known: gives epoch-based schedules their epoch and turns "
            "--num_train_epochs into steps. Without it, pass --max_steps."
        },
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Samples in a stream's within-shard shuffle buffer."})
    image_root: str = field(default="", metadata={"help": "Directory the json image paths are relative to."})
    eval_json: str | None = field(
        default=None, metadata={"help": "Optional retrieval json (eval layout, e.g. coco_test.json) for evaluate()."}
    )
    eval_image_root: str | None = field(
        default=None, metadata={"help": "Image root of --eval_json (default: --image_root)."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "vlalign folder or Hub id to continue from (weights, queues and processor)."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Config json file, folder or Hub id of the method (default: the paper's config)."},
    )
    tiny: bool = field(default=False, metadata={"help": "Use the method's tiny recipe config (learns on a CPU)."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config settings to change, 'name=value,name=value', applied to the new or loaded model's config "
            "and checked like the config's own fields, e.g. CODIS's open choices: "
            "'code_loss_type=assignment_contrast,ot_loss_weight=0'."
        },
    )
    tokenizer_name: str = field(
        default="bert-base-uncased",
        metadata={
            "help": "Tokenizer for real data: folder or Hub id, or (FDT) the BPE merges file (.txt.gz). The "
            "synthetic data builds its own vocabulary."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Training resolution (default: the model's; new models the paper's, tiny on synthetic 64). A "
            "loaded model at another size gets its position embeddings interpolated where the method supports it."
        },
    )
    augment: bool | None = field(
        default=None,
        metadata={
            "help": "The method's official train-time augmentation (`--augment true/false`). Default: on for real "
            "data, off for synthetic data (its captions name positions, which crops and flips would falsify)."
        },
    )
    fdt_lr_schedule: bool = field(
        default=False,
        metadata={
            "help": "FDT's schedule: linear warm-up from --warmup_lr to --learning_rate over --warmup_steps, then "
            "cosine to --min_lr (default on for FDT)."
        },
    )
    on_error: str = on_error_field()
    check_images: str = check_images_field()
    num_train: int = field(default=3000, metadata={"help": "Synthetic training images."})
    num_test: int = field(default=100, metadata={"help": "Synthetic test images evaluated at the end (0: none)."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data (and so of its vocabulary)."})
    image_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Methods with masked image modelling (SIMLA): a converted DALL-E dVAE folder "
            "(`vlalign.convert.dvae.convert_dalle_encoder`) whose codes the model predicts. Default: the built-in "
            "k-means patch codebook, fitted on the training images and saved to OUTPUT_DIR/image_tokenizer."
        },
    )

    def __post_init__(self):
        sources = {"json": self.train_json, "shards": self.train_shards, "stream": self.train_dataset_name}
        given = [name for name, value in sources.items() if value]
        if len(given) > 1:
            raise ValueError("Pass one of --train_json, --train_shards and --train_dataset_name.")
        self.dataset = given[0] if given else self.dataset
        if self.dataset not in ("synthetic", *sources):
            raise ValueError(f"--dataset must be 'synthetic', 'json', 'shards' or 'stream', got {self.dataset!r}")
        if self.dataset != "synthetic" and not sources[self.dataset]:
            flag = {"json": "--train_json", "shards": "--train_shards", "stream": "--train_dataset_name"}
            raise ValueError(f"--dataset {self.dataset} needs {flag[self.dataset]}")
        if self.tiny and (self.config_name or self.model_name_or_path):
            raise ValueError(
                "--tiny builds a new model; it cannot be combined with --config_name/--model_name_or_path"
            )


class PretrainTrainer(AlignmentTrainer):
    """`AlignmentTrainer` that can also build FDT's official LR schedule (ALBEF's is `--epoch_lr_schedule`)."""

    def __init__(self, *args, fdt_lr_schedule: bool = False, **kwargs):
        self.fdt_lr_schedule = fdt_lr_schedule
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is None and self.fdt_lr_schedule:
            self.lr_scheduler = fdt_lr_schedule(
                self.optimizer if optimizer is None else optimizer,
                max_steps=num_training_steps,
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                start_lr=self.args.learning_rate if self.args.warmup_lr is None else self.args.warmup_lr,
                peak_lr=self.args.learning_rate,
                min_lr=self.args.min_lr,
            )
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    script_args, training_args = parse_script_args(
        (ScriptArguments, AlignmentTrainingArguments), PRETRAIN_DEFAULTS, argv
    )
    if script_args.fdt_lr_schedule and training_args.epoch_lr_schedule:
        raise ArgumentError("--fdt_lr_schedule and --epoch_lr_schedule exclude each other")
    return script_args, training_args


def training_stream(script_args: ScriptArguments, training_args: AlignmentTrainingArguments) -> ImageTextStream:
    """The streamed training set (`--train_shards` or `--train_dataset_name`), with `max_steps` set from
    `--num_train_epochs` when the stream's size is known (a stream has no length for the Trainer to count)."""
    if script_args.dataset == "shards":
        shards = webdataset_shards(script_args.train_shards)
    else:
        source = datasets.load_dataset(
            script_args.train_dataset_name, data_files=script_args.train_data_files, split="train", streaming=True
        )
        shards = datasets_shards(source, script_args.image_column, script_args.text_column)
    stream = ImageTextStream(
        shards,
        seed=training_args.seed,
        shuffle_buffer=script_args.shuffle_buffer,
        on_error=script_args.on_error,
        num_samples=script_args.train_num_samples,
    )
    if training_args.max_steps <= 0:
        if script_args.train_num_samples is None:
            raise ArgumentError("A streamed training set has no length: pass --max_steps or --train_num_samples.")
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        steps_per_epoch = script_args.train_num_samples // global_batch // training_args.gradient_accumulation_steps
        training_args.max_steps = max(1, math.ceil(training_args.num_train_epochs * steps_per_epoch))
        logger.info("%d samples per epoch: %d steps", script_args.train_num_samples, training_args.max_steps)
    return stream


def load_pretraining_json(files: list[str], image_root: str, on_error: str, check_images: str) -> datasets.Dataset:
    """Pretraining json(s) as one dataset with a `captions` list per row.

    `load_karpathy_json` reads both entry kinds: caption strings (train layout: `caption`) and caption lists (eval
    layout: `captions`). A file must not mix the two (it raises); different files may. Single captions become
    one-element lists so that all files share the collator's `text_column="captions"`.
    """
    parts = []
    for file in files:
        part = load_karpathy_json(file, image_root, on_error=on_error, check_images=check_images)
        if "caption" in part.column_names:
            captions = [[caption] for caption in part["caption"]]
            part = part.remove_columns("caption").add_column(
                "captions", captions, feature=datasets.List(datasets.Value("string"))
            )
        parts.append(part.select_columns(["image", "captions"]))
        logger.info("%s: %d rows", file, len(part))
    dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    # The collator keys each row's caption draw and augmentation on `image_id`: make it one key per row, so that
    # rows showing the same image (one row per caption) get independent crops, as in the official code.
    return dataset.add_column("image_id", list(range(len(dataset))), feature=datasets.Value("int64"))


def load_tokenizer(method: Method, name: str) -> Any:
    """The method's tokenizer from a folder / Hub id, or from a BPE merges file where the tokenizer reads one."""
    if name.endswith((".txt", ".txt.gz")) and hasattr(method.tokenizer_class, "from_bpe_file"):
        return method.tokenizer_class.from_bpe_file(name)
    return method.tokenizer_class.from_pretrained(name)


def fit_text_config(config: Any, tokenizer: Any) -> None:
    """Vocabulary size and special-token ids of a new model follow the tokenizer."""
    text = config.text_config
    if text.vocab_size != len(tokenizer):
        logger.info("Setting vocab_size %d -> %d to fit the tokenizer", text.vocab_size, len(tokenizer))
    text.vocab_size = len(tokenizer)
    for name in TOKEN_ID_FIELDS:
        value = getattr(tokenizer, name, None)
        if value is not None and hasattr(text, name):
            setattr(text, name, value)


def load_config(method: Method, config_name: str | None) -> Any:
    if config_name is None:
        return method.config_class()
    if os.path.isfile(config_name):
        return method.config_class.from_json_file(config_name)
    return method.config_class.from_pretrained(config_name)


def has_image_tokenizer(method: Method) -> bool:
    """Whether the method's pretraining inputs take an image tokenizer (masked image modelling)."""
    return method.pretraining_inputs is not None and (
        "image_tokenizer" in inspect.signature(method.pretraining_inputs).parameters
    )


def load_dalle_tokenizer(method: Method, folder: str) -> DalleImageTokenizer:
    """`--image_tokenizer`: a converted DALL-E dVAE folder (a `FlavaImageCodebook`), for methods with MIM only."""
    if not has_image_tokenizer(method):
        raise ArgumentError(
            f"--image_tokenizer is for methods with masked image modelling (e.g. --method simla); {method.name} "
            "pretraining uses no image tokenizer. Drop --image_tokenizer."
        )
    if not os.path.isdir(folder):
        raise ArgumentError(
            f"--image_tokenizer {folder!r} is not a folder; convert DALL-E's encoder.pkl first with "
            "vlalign.convert.dvae.convert_dalle_encoder('encoder.pkl', 'dalle-dvae')."
        )
    return DalleImageTokenizer.from_pretrained(folder)


def saved_image_tokenizer(folders: list[str | None]) -> PatchCodebookImageTokenizer | None:
    """The built-in image tokenizer saved by an earlier run (the first of `folders` that holds one), or None."""
    for folder in folders:
        if folder and (Path(folder) / IMAGE_TOKENIZER_FOLDER / "config.json").is_file():
            logger.info("Reusing the image tokenizer saved in %s", Path(folder) / IMAGE_TOKENIZER_FOLDER)
            return PatchCodebookImageTokenizer.from_pretrained(Path(folder) / IMAGE_TOKENIZER_FOLDER)
    return None


def pretraining_collator_kwargs(
    method: Method,
    config: Any,
    processor: Any,
    train_dataset: Any,
    image_tokenizer: Any | None,
    augment: bool,
) -> dict[str, Any]:
    """The method's extra collator inputs (`Method.pretraining_collator_kwargs`; SIMLA: masked image modelling).

    `image_tokenizer` (a loaded dVAE or a saved built-in tokenizer) replaces the method's default one. With
    augmentation the MIM tokenizer reads SIMLA's own independently augmented view of each image
    (`simla_codebook_view_transform` at the tokenizer's input size) instead of its deterministic resize.
    """
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size if image_tokenizer is not None else None
    if isinstance(image_tokenizer, PatchCodebookImageTokenizer) and (
        (image_tokenizer.grid, image_tokenizer.vocab_size) != (grid, config.mim_vocab_size)
    ):  # a saved built-in tokenizer of another resolution or size: fit a new one
        logger.warning(
            "The saved image tokenizer (grid %d, %d codes) does not fit this model (grid %d, %d codes); fitting a "
            "new one",
            image_tokenizer.grid,
            image_tokenizer.vocab_size,
            grid,
            config.mim_vocab_size,
        )
        image_tokenizer = None
    if image_tokenizer is None:
        kwargs = method.pretraining_collator_kwargs(config, processor, train_dataset)
    else:
        if isinstance(image_tokenizer, DalleImageTokenizer):  # its token grid must be the ViT's patch grid
            image_tokenizer = DalleImageTokenizer(image_tokenizer.codebook, grid=grid)
        kwargs = method.pretraining_inputs(config, processor, train_dataset, image_tokenizer=image_tokenizer)
    mim = kwargs.get("masked_image_modeling")
    if mim is not None and augment and mim.view_transform is None:
        view_transform = simla_codebook_view_transform(mim.image_tokenizer.image_size)
        kwargs["masked_image_modeling"] = dataclasses.replace(mim, view_transform=view_transform)
    return kwargs


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

    # ------------------------------------------------------------------------------------------------------ data
    synthetic = script_args.dataset == "synthetic"
    if synthetic:
        splits = make_synthetic_dataset(
            num_train=script_args.num_train,
            num_validation=0,
            num_test=script_args.num_test,
            image_size=SYNTHETIC_IMAGE_SIZE,
            seed=script_args.synthetic_seed,
        )
        train_dataset = splits["train"]
        eval_dataset = splits["test"] if script_args.num_test > 0 else None
    else:
        if script_args.dataset == "json":
            train_dataset = load_pretraining_json(
                script_args.train_json, script_args.image_root, script_args.on_error, script_args.check_images
            )
            check_not_empty(
                len(train_dataset),
                f"--train_json {' '.join(script_args.train_json)}",
                "pass annotation files with image-caption entries (entries skipped with --on_error skip count as none)",
            )
        else:
            train_dataset = training_stream(script_args, training_args)
        eval_dataset = None
        if script_args.eval_json:
            eval_root = script_args.eval_image_root or script_args.image_root
            eval_dataset = load_karpathy_json(
                script_args.eval_json,
                eval_root,
                "eval",
                on_error=script_args.on_error,
                check_images=script_args.check_images,
            )
            check_not_empty(
                len(eval_dataset), f"--eval_json {script_args.eval_json}", "pass one with images, or drop it"
            )
    rows = train_dataset.num_samples if isinstance(train_dataset, ImageTextStream) else len(train_dataset)
    logger.info("train rows: %s, eval images: %s", rows, eval_dataset and len(eval_dataset))

    # ------------------------------------------------------------------------------------------ model, processor
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    if script_args.image_tokenizer:
        image_tokenizer = load_dalle_tokenizer(method, script_args.image_tokenizer)
    elif has_image_tokenizer(method):  # the built-in one of the run being resumed or continued, if saved
        image_tokenizer = saved_image_tokenizer(
            [training_args.output_dir if resume else None, script_args.model_name_or_path]
        )
    else:
        image_tokenizer = None

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
        image_size = script_args.image_size or config.vision_config.image_size
        if image_size != config.vision_config.image_size:
            if not hasattr(method.pretraining_class, "set_image_size"):
                raise ArgumentError(f"{method.name} models cannot change resolution; drop --image_size")
            check_image_size(image_size, config.vision_config)
        model = method.pretraining_class.from_pretrained(script_args.model_name_or_path, config=config)
        if image_size != model.config.vision_config.image_size:
            model.set_image_size(image_size)
            processor = method.build_processor(processor.tokenizer, image_size)
    else:
        if synthetic:
            tokenizer = method.build_tokenizer(dataset_captions(splits))
        else:
            tokenizer = load_tokenizer(method, script_args.tokenizer_name)
        if script_args.tiny:
            default_size = SYNTHETIC_IMAGE_SIZE if synthetic else method.config_class().vision_config.image_size
            image_size = script_args.image_size or default_size
            with bad_value_of("--image_size", image_size):
                config = method.tiny_config(tokenizer, image_size)
        else:
            config = load_config(method, script_args.config_name)
            fit_text_config(config, tokenizer)
            image_size = script_args.image_size or config.vision_config.image_size
            check_image_size(image_size, config.vision_config)
            config.vision_config.image_size = image_size
        if image_tokenizer is not None:  # a new model predicts the given tokenizer's codes
            config.mim_vocab_size = image_tokenizer.vocab_size
        config = apply_config_overrides(config, script_args.config_overrides)
        processor = method.build_processor(tokenizer, image_size)
        model = method.pretraining_class(config)
    logger.info(
        "%s at %d px: %.1fM trainable parameters",
        type(model).__name__,
        image_size,
        model.num_parameters(only_trainable=True) / 1e6,
    )

    augment = (not synthetic) if script_args.augment is None else script_args.augment
    extra_inputs = pretraining_collator_kwargs(
        method, model.config, processor, train_dataset, image_tokenizer, augment
    )
    mim = extra_inputs.get("masked_image_modeling")
    if isinstance(getattr(mim, "image_tokenizer", None), PatchCodebookImageTokenizer):
        # the fitted built-in codebook: saved with the run, so that it can be resumed and reproduced
        if training_args.should_save:  # the main process (of each node with --save_on_each_node)
            mim.image_tokenizer.save_pretrained(Path(training_args.output_dir) / IMAGE_TOKENIZER_FOLDER)
    collator = AlignmentCollator(
        processor,
        preset="pretrain",
        image_transform=TRAIN_TRANSFORMS[method.name](image_size) if augment else None,
        text_column="caption" if isinstance(train_dataset, ImageTextStream) else "captions",
        teacher_view=wants_teacher_view(model.config, augment),
        **extra_inputs,
    )
    trainer = PretrainTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        fdt_lr_schedule=script_args.fdt_lr_schedule,
    )

    # ------------------------------------------------------------------------------------------------- training
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # weights + config + processor (and the remote code), on the main process
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.accelerator.state.destroy_process_group()  # clean shutdown under torchrun / accelerate


if __name__ == "__main__":
    run_script(main)
