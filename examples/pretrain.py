"""Pretrain ALBEF (ITC + ITM + MLM, momentum distillation) with `AlbefTrainer`.

Defaults follow the official `Pretrain.yaml` (lr 1e-4, weight decay 0.02, 30 epochs, batch 64 per GPU, staircase
warm-up over 2000 steps from 1e-5, per-epoch cosine to 1e-5, 256 px, captions cut to 25 tokens); every
`TrainingArguments` / `AlbefTrainingArguments` flag overrides them.

Synthetic shapes (default; no download, tokenizer built in-process; a tiny model that learns on a CPU in minutes):

    python examples/pretrain.py --tiny --output_dir out/albef-synthetic --use_cpu \
        --max_steps 700 --per_device_train_batch_size 32 --learning_rate 1e-3 \
        --albef_lr_schedule false --lr_scheduler_type cosine --warmup_steps 100 --logging_steps 25

Smoke run (seconds):

    python examples/pretrain.py --tiny --output_dir /tmp/ex_pre --use_cpu --max_steps 3 \
        --per_device_train_batch_size 8 --num_train 64 --num_test 16

Real data: ALBEF's pretraining json (`data.tar.gz` of salesforce/ALBEF: coco.json, vg.json, cc3m_train.json,
sbu.json, ...; a list of {"image": path, "caption": str or [str, ...]}, paths relative to --image_root or
absolute), bert-base-uncased, the paper's ViT-B/16 + BERT-base at 256 px, 8 GPUs:

    accelerate launch --config_file examples/accelerate_multi_gpu.yaml examples/pretrain.py \
        --train_json data/coco.json data/vg.json data/cc3m_train.json data/sbu.json --image_root /datasets \
        --eval_json data/coco_test.json --eval_image_root /datasets/coco \
        --tokenizer_name bert-base-uncased --output_dir out/albef-4m \
        --dataloader_num_workers 8

(add `--bf16` for bf16 autocast; the official runs are fp32). Continue from a converted checkpoint instead:
`vlalign convert --method albef --checkpoint ALBEF_4M.pth --config configs/Pretrain.yaml --config
configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m`, then `--model_name_or_path albef-4m`.

`--config_name` takes an `AlbefConfig` json (or folder / Hub id) instead of the paper's default; `--tiny` uses the
recipe's tiny config. `--model_name_or_path` continues from a vlalign folder (a converted checkpoint or an earlier
run: weights, momentum encoders, queues), with that folder's processor (tokenizer).

Notes:
* "From scratch" is a random initialisation. The official run starts the ViT from DeiT-B/16 (ImageNet) and the
  text/fusion encoder from bert-base-uncased; vlalign does not load those weights for you.
* Each caption list is sampled once per row per epoch (as the official dataset does); a pair-per-row json
  (one caption string per entry) gives one row per pair.
* Every image is opened and decoded once when the json is loaded (`--check_images`), on every process. For corpora of
  millions of images check them once offline and pass `--check_images false`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import HfArgumentParser, set_seed

import vlalign  # noqa: F401  (registers the ALBEF Auto classes)
from vlalign.data.collator import AlbefCollator
from vlalign.data.loaders import load_karpathy_json
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.models import AlbefConfig, AlbefForPreTraining, AlbefProcessor, AlbefTokenizer
from vlalign.recipes import albef_processor, build_tokenizer, dataset_captions, tiny_albef_config
from vlalign.training.trainer import AlbefTrainer, AlbefTrainingArguments

logger = logging.getLogger(__name__)

#: official Pretrain.yaml settings, as parser defaults (command-line flags override them)
PRETRAIN_DEFAULTS = dict(
    learning_rate=1e-4,
    weight_decay=0.02,
    num_train_epochs=30,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=64,
    albef_lr_schedule=True,
    warmup_steps=2000,
    warmup_lr=1e-5,
    min_lr=1e-5,
    logging_steps=50,
    save_strategy="epoch",
    ddp_find_unused_parameters=False,  # every trainable parameter gets a gradient at every step
)

SYNTHETIC_IMAGE_SIZE = 64  # pixels of the generated images (the processor resizes them to the model's size)


@dataclass
class ScriptArguments:
    dataset: str = field(
        default="synthetic",
        metadata={"help": "'synthetic' (built-in shapes, no download) or 'json' (implied by --train_json)."},
    )
    train_json: list[str] | None = field(
        default=None, metadata={"help": "ALBEF pretraining json file(s): [{image, caption (str or list)}, ...]."}
    )
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
        metadata={"help": "AlbefConfig json file, folder or Hub id (default: the paper's AlbefConfig())."},
    )
    tiny: bool = field(
        default=False, metadata={"help": "Use the recipe's tiny config (vlalign.recipes.tiny_albef_config)."}
    )
    tokenizer_name: str = field(
        default="bert-base-uncased",
        metadata={"help": "Tokenizer folder or Hub id for real data (the synthetic data builds its own vocabulary)."},
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Training resolution (default: the model's; new models 256, tiny on synthetic 64). A loaded model "
            "at another size gets its position embeddings interpolated."
        },
    )
    augment: bool | None = field(
        default=None,
        metadata={
            "help": "Official train-time augmentation (`--augment true/false`; RandomResizedCrop 0.2-1, flip, "
            "RandomAugment). Default: on for "
            "real data, off for synthetic data (its captions name positions, which crops and flips would falsify)."
        },
    )
    on_error: str = field(
        default="raise",
        metadata={
            "help": "Unreadable images / empty captions: 'raise' or 'skip' (drop them, with a warning).",
            "choices": ["raise", "skip"],
        },
    )
    check_images: bool = field(
        default=True, metadata={"help": "Open and decode every image once when loading the json."}
    )
    num_train: int = field(default=3000, metadata={"help": "Synthetic training images."})
    num_test: int = field(default=100, metadata={"help": "Synthetic test images evaluated at the end (0: none)."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data (and so of its vocabulary)."})

    def __post_init__(self):
        if self.train_json:
            self.dataset = "json"
        if self.dataset not in ("synthetic", "json"):
            raise ValueError(f"--dataset must be 'synthetic' or 'json', got {self.dataset!r}")
        if self.dataset == "json" and not self.train_json:
            raise ValueError("--dataset json needs --train_json")
        if self.tiny and (self.config_name or self.model_name_or_path):
            raise ValueError(
                "--tiny builds a new model; it cannot be combined with --config_name/--model_name_or_path"
            )


def load_pretraining_json(files: list[str], image_root: str, on_error: str, check_images: bool) -> datasets.Dataset:
    """ALBEF pretraining json(s) as one dataset with a `captions` list per row.

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


def fit_text_config(config: AlbefConfig, tokenizer: AlbefTokenizer) -> None:
    """Vocabulary size and special-token ids of a new model follow the tokenizer."""
    text = config.text_config
    if text.vocab_size != len(tokenizer):
        logger.info("Setting vocab_size %d -> %d to fit the tokenizer", text.vocab_size, len(tokenizer))
    text.vocab_size = len(tokenizer)
    text.pad_token_id = tokenizer.pad_token_id
    text.cls_token_id = tokenizer.cls_token_id
    text.mask_token_id = tokenizer.mask_token_id


def load_config(config_name: str | None) -> AlbefConfig:
    if config_name is None:
        return AlbefConfig()
    if os.path.isfile(config_name):
        return AlbefConfig.from_json_file(config_name)
    return AlbefConfig.from_pretrained(config_name)


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, AlbefTrainingArguments))
    parser.set_defaults(**PRETRAIN_DEFAULTS)
    script_args, training_args = parser.parse_args_into_dataclasses()

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
        train_dataset = load_pretraining_json(
            script_args.train_json, script_args.image_root, script_args.on_error, script_args.check_images
        )
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
    logger.info("train rows: %d, eval images: %s", len(train_dataset), eval_dataset and len(eval_dataset))

    # ------------------------------------------------------------------------------------------ model, processor
    if script_args.model_name_or_path:
        processor = AlbefProcessor.from_pretrained(script_args.model_name_or_path)
        model = AlbefForPreTraining.from_pretrained(script_args.model_name_or_path)
        image_size = script_args.image_size or model.config.vision_config.image_size
        if image_size != model.config.vision_config.image_size:
            model.set_image_size(image_size)
            processor = albef_processor(processor.tokenizer, image_size)
    else:
        if synthetic:
            tokenizer = build_tokenizer(dataset_captions(splits))
        else:
            tokenizer = AlbefTokenizer.from_pretrained(script_args.tokenizer_name)
        if script_args.tiny:
            image_size = script_args.image_size or (SYNTHETIC_IMAGE_SIZE if synthetic else 256)
            config = tiny_albef_config(tokenizer, image_size)
        else:
            config = load_config(script_args.config_name)
            fit_text_config(config, tokenizer)
            image_size = script_args.image_size or config.vision_config.image_size
            config.vision_config.image_size = image_size
        processor = albef_processor(tokenizer, image_size)
        model = AlbefForPreTraining(config)
    logger.info(
        "AlbefForPreTraining at %d px: %.1fM trainable parameters",
        image_size,
        model.num_parameters(only_trainable=True) / 1e6,
    )

    augment = (not synthetic) if script_args.augment is None else script_args.augment
    collator = AlbefCollator(
        processor,
        preset="pretrain",
        image_transform=albef_train_transform("pretrain", image_size) if augment else None,
        text_column="captions",
    )
    trainer = AlbefTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
    )

    # ------------------------------------------------------------------------------------------------- training
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # weights + config + processor (and the remote code), on the main process
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


if __name__ == "__main__":
    main()
