"""Fine-tune ALBEF, SIMLA or CODIS (`--method albef|simla|codis`) for visual question answering with `AlignmentTrainer`,
then answer the test questions by ranking the answer list and write the evaluation server's result file.

The model is the method's `<Method>ForQuestionAnswering`: the fusion encoder and an answer decoder trained with the
official loss (each answer's summed token loss, weighted by its share of the human votes, divided by the number of
questions; distilled from the momentum copies with α = 0.4, warmed up over the first epoch as the official
`alpha * min(1, i / len(loader))`; SIMLA's official loss is not distilled). Start from:

* a converted official checkpoint, `vlalign convert --method M --task vqa` (a pretraining checkpoint placed as the
  official `VQA.py` places it, or a fine-tuned VQA one);
* any vlalign folder of the method (an `examples/pretrain.py` output, a quick-start model): the answer decoder starts
  from its cross-attention layers, text embeddings and MLM head (`vlalign.convert.vqa_init`);
* nothing, on synthetic data: a tiny random model (a smoke run).

Defaults are the official `configs/VQA.yaml` (ALBEF's; SIMLA's is the same): AdamW lr 2e-5, weight decay 0.02, 8
epochs, batch 32 per GPU (16 for the test questions), the per-epoch cosine to 1e-6 after a staircase warm-up from 1e-5
over the first 400 steps in 4 stages (the official scheduler steps every 100 iterations), 384 px on real data with
ALBEF's train augmentation (random resized crop 0.5-1, flip, RandAugment: flips and all, as the official code),
`k_test` 128 (candidates re-ranked by their full likelihood). CODIS released no recipe and takes ALBEF's. Recipes:
`examples/configs/<method>/finetune_vqa.yaml`; give one as the first argument, flags after it override it:

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_vqa.py \
        examples/configs/albef/finetune_vqa.yaml --model_name_or_path albef-4m-vqa

Real data: the official JSON files (`--train_json` VQA train/val and Visual Genome QA files, `--test_json`,
`--answer_list`, image folders `--vqa_root` and `--vg_root`), as the official run:

    vlalign convert --method albef --task vqa --checkpoint ALBEF_4M.pth --config configs/VQA.yaml \
        --config configs/config_bert.json --tokenizer bert-base-uncased --output albef-4m-vqa
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/finetune_vqa.py \
        --model_name_or_path albef-4m-vqa --train_json data/vqa_train.json data/vqa_val.json data/vg_qa.json \
        --test_json data/vqa_test.json --answer_list data/answer_list.json --vqa_root /datasets/coco \
        --vg_root /datasets/visual-genome --output_dir out/albef-vqa --dataloader_num_workers 8

Synthetic VQA (default; no download): colour, shape, count, position and background questions about the synthetic
shapes, ten human-style answers each (`vlalign.data.synthetic_vqa`); the answer list is the training answers. A
closed-vocabulary model learns the words of the questions and answers it lacks (its tokenizer is extended and its
embeddings resized). Augmentation is off by default (questions name positions):

    python examples/finetune_vqa.py --output_dir /tmp/ex_vqa --use_cpu --num_train 32 --num_test 16 \
        --max_steps 4 --per_device_train_batch_size 8 --learning_rate 1e-4
    python examples/finetune_vqa.py --method simla --model_name_or_path out/simla-synthetic \
        --output_dir out/simla-vqa-synthetic --use_cpu --learning_rate 1e-3 --warmup_steps 50 --num_train_epochs 3

The output folder holds the fine-tuned model with its processor and a model card; `vqa_result.json` is the
evaluation server's result file (`[{"question_id", "answer"}]`), and `eval_results.json` has the VQA accuracy
(overall and per question type, where the test questions have human answers) beside the majority-answer baseline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from transformers import AutoConfig, AutoProcessor, set_seed

import vlalign  # noqa: F401  (registers every method with the Auto classes)
from vlalign.convert.vqa_init import load_vqa_model
from vlalign.data.synthetic_vqa import make_synthetic_vqa_dataset
from vlalign.data.transforms import albef_train_transform
from vlalign.data.vqa import VqaCollator, build_answer_list, load_answer_list, load_vqa_json
from vlalign.evaluation.vqa import evaluate_vqa, majority_answer_baseline
from vlalign.hub import save_for_hub, training_args_summary
from vlalign.hub.push import card_kwargs, save_results
from vlalign.methods import Method, get_method, method_names, method_of
from vlalign.recipes.albef import learn_words
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

#: the methods with a VQA model
VQA_METHODS = [name for name in method_names() if get_method(name).family.question_answering_class is not None]

#: the official configs/VQA.yaml of ALBEF (SIMLA's is the same; CODIS released none and takes ALBEF's)
OFFICIAL_VQA = dict(
    learning_rate=2e-5,
    weight_decay=0.02,
    num_train_epochs=8,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=16,
    epoch_lr_schedule=True,
    warmup_lr=1e-5,
    warmup_steps=400,  # warmup_epochs 4 of the official scheduler, stepped every 100 iterations of epoch 0
    warmup_stages=4,
    min_lr=1e-6,
    max_grad_norm=0.0,  # no gradient clipping
    k_test=128,
    eval_strategy="no",  # the official run evaluates once, after the last epoch
    save_strategy="epoch",
    save_total_limit=2,
    logging_steps=50,
    ddp_find_unused_parameters=False,
)
VQA_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(OFFICIAL_VQA) for name in VQA_METHODS}
REAL_DATA_IMAGE_SIZE = 384
SYNTHETIC_IMAGE_SIZE = 64
DATASET_NAME = "vlalign synthetic VQA"
RESULT_FILE = "vqa_result.json"
NO_ROWS_FIX = "pass annotation files with questions (entries skipped with --on_error skip count as none)"


@dataclass
class ScriptArguments:
    method: str = field(
        default="albef",
        metadata={"help": "Method of the model; selects the model class and defaults.", "choices": VQA_METHODS},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A vlalign folder / Hub id of the method: a VQA model (`vlalign convert --task vqa`) or any other "
            "(its encoders start the VQA model). Required for real data; with synthetic data a tiny random model is "
            "used when omitted."
        },
    )
    train_json: list[str] | None = field(
        default=None, metadata={"help": "Official VQA / VG training files (vqa_train.json vqa_val.json vg_qa.json)."}
    )
    test_json: list[str] | None = field(default=None, metadata={"help": "Official test files (vqa_test.json)."})
    answer_list: str | None = field(
        default=None, metadata={"help": "The official answer_list.json (default: the training answers)."}
    )
    vqa_root: str = field(default="", metadata={"help": "Folder the VQA (COCO) image paths are relative to."})
    vg_root: str | None = field(default=None, metadata={"help": "Folder the Visual Genome image paths are under."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Config settings to change, 'name=value,...', e.g. SIMLA's 'answer_distillation=true'."},
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": f"Fine-tuning resolution (default: {REAL_DATA_IMAGE_SIZE} on real data, else the model's)."},
    )
    augment: bool | None = field(
        default=None,
        metadata={"help": "ALBEF's train augmentation (default: on for real data, off for synthetic data)."},
    )
    on_error: str = on_error_field()
    check_images: str = check_images_field()
    num_train: int = field(default=3000, metadata={"help": "Synthetic training images (3 questions each)."})
    num_test: int = field(default=200, metadata={"help": "Synthetic test images."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic data."})

    def __post_init__(self):
        if self.train_json and not self.model_name_or_path:
            raise ArgumentError(
                "real data needs --model_name_or_path (a converted or pretrained folder of the method)"
            )
        if self.train_json and not self.answer_list:
            raise ArgumentError("real data needs --answer_list (the official answer_list.json) to rank answers")


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, AlignmentTrainingArguments]:
    """The method's defaults, overridden by a recipe file (an optional first argument), overridden by the flags."""
    return parse_script_args((ScriptArguments, AlignmentTrainingArguments), VQA_DEFAULTS, argv)


def load_data(args: ScriptArguments) -> tuple[datasets.Dataset, datasets.Dataset | None, list[str] | None]:
    """(training questions, test questions or None, answer list or None)."""
    if not args.train_json:
        splits = make_synthetic_vqa_dataset(
            num_train=args.num_train, num_validation=0, num_test=args.num_test, image_size=SYNTHETIC_IMAGE_SIZE,
            seed=args.synthetic_seed,
        )  # fmt: skip
        test = splits["test"] if len(splits["test"]) else None
        return splits["train"], test, build_answer_list(splits["train"])
    roots = {"vqa": args.vqa_root, **({"vg": args.vg_root} if args.vg_root else {})}
    load = dict(on_error=args.on_error, check_images=args.check_images)
    train = load_vqa_json(args.train_json, roots, **load)
    check_not_empty(len(train), f"--train_json {' '.join(args.train_json)}", NO_ROWS_FIX)
    test = None
    if args.test_json:
        test = load_vqa_json(args.test_json, roots, **load)
        check_not_empty(len(test), f"--test_json {' '.join(args.test_json)}", NO_ROWS_FIX)
    return train, test, load_answer_list(args.answer_list)


def load_model(args: ScriptArguments, method: Method, train: datasets.Dataset, answers: list[str] | None):
    """(VQA model, processor): loaded as a VQA model, started from another model of the method, or a tiny random one
    (synthetic data); a closed vocabulary learns the synthetic questions' and answers' words."""
    texts = [*train["question"], *(answers or [])]
    if args.model_name_or_path is None:
        tokenizer = method.build_tokenizer(texts)
        processor = method.build_processor(tokenizer, SYNTHETIC_IMAGE_SIZE)
        config = apply_config_overrides(method.tiny_config(tokenizer, SYNTHETIC_IMAGE_SIZE), args.config_overrides)
        logger.warning("No --model_name_or_path: fine-tuning a tiny *randomly initialised* model (smoke run).")
        return method.family.question_answering_class(config), processor
    config = AutoConfig.from_pretrained(args.model_name_or_path)
    if method_of(config).name != method.name:
        raise ArgumentError(
            f"{args.model_name_or_path} holds a {method_of(config).name} model; pass --method {method_of(config).name}"
        )
    config = apply_config_overrides(config, args.config_overrides)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    model = load_vqa_model(args.model_name_or_path, config)
    if not args.train_json and (added := learn_words(model, processor, texts)):
        logger.info("Added %d words of the synthetic VQA set to the vocabulary", added)
    return model, processor


def main() -> None:
    script_args, training_args = parse_args()
    method = get_method(script_args.method)
    configure_logging(training_args, logger)
    set_seed(training_args.seed)

    synthetic = not script_args.train_json
    train, test, answer_list = load_data(script_args)
    logger.info("train: %d questions; test: %d; answer list: %d", len(train), len(test or []), len(answer_list))
    model, processor = load_model(script_args, method, train, answer_list)
    model_size = model.config.vision_config.image_size
    image_size = script_args.image_size or (model_size if synthetic else REAL_DATA_IMAGE_SIZE)
    processor = fit_image_size(model, processor, method, image_size, logger)
    augment = (not synthetic) if script_args.augment is None else script_args.augment
    collator = VqaCollator(processor, image_transform=albef_train_transform("train", image_size) if augment else None)
    trainer = AlignmentTrainer(
        model=model, args=training_args, train_dataset=train, data_collator=collator, processing_class=processor
    )
    train_and_finish(trainer, lambda: finish(trainer, train, test, answer_list, script_args, synthetic))


def finish(trainer, train, test, answer_list, script_args: ScriptArguments, synthetic: bool) -> None:
    """Answer the test questions (the official ranking over the answer list, `k_test` candidates), write the result
    file, and save the model with its processor, card and `eval_results.json`."""
    output_dir = Path(trainer.args.output_dir)
    model, processor = trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class
    name = DATASET_NAME if synthetic else "VQA v2"
    results: dict[str, Any] = {
        "dataset_name": name,
        "dataset_split": "test",
        "training_args": dict(training_args_summary(trainer)),
        "training_data": ", ".join(script_args.train_json or [f"{len(train)} synthetic questions"]),
    }
    if test is not None:
        answered = evaluate_vqa(
            model, processor, test, answer_list, k=trainer.args.k_test,
            batch_size=trainer.args.per_device_eval_batch_size, result_file=output_dir / RESULT_FILE,
            show_progress=not trainer.args.disable_tqdm,
        )  # fmt: skip
        vqa = {key: value for key, value in answered.items() if key != "predictions"}
        if "vqa_accuracy" in vqa:
            vqa["majority_baseline"] = majority_answer_baseline(train, test)
            trainer.log_metrics("test", {"vqa_accuracy": vqa["vqa_accuracy"]})
            results["vqa"] = vqa
        logger.info("Result file for the evaluation server: %s", output_dir / RESULT_FILE)
    save_for_hub(model, processor, output_dir, exist_ok=True, **card_kwargs(results))
    save_results(results, output_dir)


if __name__ == "__main__":
    run_script(main)
