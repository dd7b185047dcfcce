"""Smoke runs of the example scripts, for every registered method, as a user runs them: `python examples/x.py ...`
in a fresh interpreter on the built-in synthetic data (tiny model, a few steps, CPU, nothing downloaded)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import webdataset as wds
import yaml
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoModel

from vlalign.methods import get_method, method_names, method_of

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECALLS = [f"{side}_r{k}" for side in ("txt", "img") for k in (1, 5, 10)] + ["txt_r_mean", "img_r_mean", "r_mean"]
#: the smallest synthetic setting every script accepts: 16 training images, 8 per eval split, batches of 8
SMALL = ["--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "8", "--num_train", "16"]

# The official settings of each recipe in examples/configs/, written out from the specs (independently of the scripts'
# own defaults), so that the recipes, the scripts' per-method defaults and the specs cannot drift apart.
_ADAMW = dict(adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=0.0)  # torch defaults, no clipping
ALBEF_PRETRAIN = dict(  # docs/reproducing.md, Pretrain.yaml (SIMLA's Pretrain.yaml is the same: docs/reproducing.md)
    learning_rate=1e-4, weight_decay=0.02, num_train_epochs=30, per_device_train_batch_size=64, epoch_lr_schedule=True,
    warmup_steps=2000, warmup_lr=1e-5, min_lr=1e-5, image_size=256, **_ADAMW,
)  # fmt: skip
ALBEF_COCO = dict(  # docs/reproducing.md, Retrieval_coco.yaml
    learning_rate=1e-5, weight_decay=0.02, num_train_epochs=5, per_device_train_batch_size=32,
    per_device_eval_batch_size=64, epoch_lr_schedule=True, min_lr=1e-6, image_size=384, k_test=256, **_ADAMW,
)  # fmt: skip
ALBEF_VQA = dict(  # VQA.yaml (ALBEF's and SIMLA's): a 4-stage warm-up over 400 steps (the scheduler steps every 100)
    learning_rate=2e-5, weight_decay=0.02, num_train_epochs=8, per_device_train_batch_size=32,
    per_device_eval_batch_size=16, epoch_lr_schedule=True, warmup_lr=1e-5, warmup_steps=400, warmup_stages=4,
    min_lr=1e-6, image_size=384, k_test=128, **_ADAMW,
)  # fmt: skip
FLICKR = dict(num_train_epochs=10, k_test=128)  # Retrieval_flickr.yaml: COCO's recipe, longer, fewer ITM candidates
FDT_FINETUNE = dict(  # no released recipe: FDT's pretraining optimizer with ALBEF's fine-tuning lr and lengths
    learning_rate=1e-5, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-8, max_grad_norm=0.0,
    num_train_epochs=5, per_device_train_batch_size=128, lr_scheduler_type="cosine", warmup_steps=0, image_size=224,
)  # fmt: skip
RECIPE_SPECS: dict[str, dict[str, dict]] = {
    "albef": dict(
        pretrain=ALBEF_PRETRAIN,
        finetune_coco=ALBEF_COCO,
        finetune_flickr30k={**ALBEF_COCO, **FLICKR},
        finetune_vqa=ALBEF_VQA,
    ),
    "codis": dict(  # docs/reproducing.md: ALBEF's recipes
        pretrain=ALBEF_PRETRAIN,
        finetune_coco=ALBEF_COCO,
        finetune_flickr30k={**ALBEF_COCO, **FLICKR},
        finetune_vqa=ALBEF_VQA,
    ),
    "simla": dict(  # docs/reproducing.md: ALBEF's, evaluation batch 32 (COCO) / 64 (Flickr)
        pretrain=ALBEF_PRETRAIN,
        finetune_coco={**ALBEF_COCO, "per_device_eval_batch_size": 32},
        finetune_flickr30k={**ALBEF_COCO, **FLICKR, "per_device_eval_batch_size": 64},
        finetune_vqa=ALBEF_VQA,
    ),
    "fdt": dict(
        pretrain=dict(  # docs/reproducing.md, config_cc3m.yaml
            learning_rate=1e-3,
            warmup_lr=1e-4,
            min_lr=0.0,
            warmup_steps=2500,
            fdt_lr_schedule=True,
            epoch_lr_schedule=False,
            weight_decay=0.1,
            adam_beta1=0.9,
            adam_beta2=0.98,
            adam_epsilon=1e-8,
            max_grad_norm=0.0,
            num_train_epochs=32,
            per_device_train_batch_size=128,
            image_size=224,
            seed=0,
            save_steps=2700,
        ),  # fmt: skip
        finetune_coco=FDT_FINETUNE,
        finetune_flickr30k={**FDT_FINETUNE, "num_train_epochs": 10},
    ),
}
RECIPES = EXAMPLES / "configs"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through the module
    spec.loader.exec_module(module)
    return module


def assert_recalls(metrics: dict, prefix: str = "") -> None:
    for key in RECALLS:
        assert 0.0 <= metrics[prefix + key] <= 100.0, (prefix + key, metrics[prefix + key])


def assert_loads(folder: Path, method: str) -> None:
    model = AutoModel.from_pretrained(folder)
    assert method_of(model).name == method
    assert type(model).__name__.endswith("Model")


@pytest.fixture(scope="module", params=method_names())
def pretrained(request, tmp_path_factory) -> tuple[str, Path]:
    """`examples/pretrain.py --tiny` for 2 steps, evaluated on 8 synthetic test images."""
    method = request.param
    out = tmp_path_factory.mktemp(f"pretrain_{method}")
    run_example(
        "pretrain.py", "--method", method, "--tiny", "--output_dir", str(out), *SMALL,
        "--max_steps", "2", "--num_test", "8", "--save_strategy", "no",
    )  # fmt: skip
    return method, out


def test_pretrain(pretrained):
    method, out = pretrained
    metrics = json.loads((out / "eval_results.json").read_text())
    assert_recalls(metrics, "eval_")
    assert metrics["eval_num_images"] == 8
    assert json.loads((out / "train_results.json").read_text())["train_loss"] > 0
    assert_loads(out, method)
    # methods with masked image modelling save the fitted built-in image tokenizer with the run
    pretrain = load_script("pretrain")
    assert (out / "image_tokenizer").is_dir() == pretrain.has_image_tokenizer(get_method(method))


def test_evaluate_retrieval(pretrained, tmp_path):
    method, folder = pretrained
    output = tmp_path / "retrieval.json"
    run_example(
        "evaluate_retrieval.py", "--model_name_or_path", str(folder), "--num_test", "8", "--k_test", "4",
        "--use_cpu", "--output_file", str(output),
    )  # fmt: skip
    result = json.loads(output.read_text())
    assert result["method"] == method
    assert_recalls(result["metrics"])
    assert result["metrics"]["num_images"] == 8
    assert (result["metrics"]["num_itm_pairs"] > 0) == get_method(method).supports_itm_rerank  # re-rank only with ITM


def test_finetune_retrieval(pretrained, tmp_path):
    method, folder = pretrained
    out = tmp_path / "finetune"
    run_example(
        "finetune_retrieval.py", "--method", method, "--model_name_or_path", str(folder), "--output_dir", str(out),
        *SMALL, "--num_validation", "8", "--num_test", "8", "--max_steps", "2", "--learning_rate", "1e-4",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    )  # fmt: skip
    metrics = json.loads((out / "eval_results.json").read_text())
    for split in ("val", "test"):
        assert_recalls(metrics, f"eval_{split}_")
    assert_loads(out, method)


@pytest.mark.parametrize("method", method_names())
def test_official_defaults_per_method(method, monkeypatch, tmp_path):
    """`--method` selects that method's official settings as defaults; flags still override them."""
    pretrain = load_script("pretrain")
    assert set(pretrain.PRETRAIN_DEFAULTS) == set(method_names()) == set(pretrain.TRAIN_TRANSFORMS)
    argv = ["pretrain.py", "--method", method, "--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"]
    monkeypatch.setattr(sys, "argv", argv)
    script_args, training_args = pretrain.parse_args()
    assert script_args.method == method
    for name, value in pretrain.PRETRAIN_DEFAULTS[method].items():
        args = script_args if hasattr(script_args, name) else training_args
        assert getattr(args, name) == value, name
    if method == "fdt":  # spec §4.1: AdamW (0.9, 0.98), eps 1e-8, wd 0.1, 128/GPU, 32 epochs, 1e-4 -> 1e-3 in 2500
        assert (training_args.adam_beta1, training_args.adam_beta2, training_args.adam_epsilon) == (0.9, 0.98, 1e-8)
        assert (training_args.weight_decay, training_args.per_device_train_batch_size) == (0.1, 128)
        assert (training_args.num_train_epochs, training_args.warmup_steps) == (32, 2500)
        assert (training_args.warmup_lr, training_args.learning_rate, training_args.min_lr) == (1e-4, 1e-3, 0.0)
        assert script_args.fdt_lr_schedule and not training_args.epoch_lr_schedule
    monkeypatch.setattr(sys, "argv", [*argv, "--learning_rate", "3e-4"])
    assert pretrain.parse_args()[1].learning_rate == 3e-4

    finetune = load_script("finetune_retrieval")
    assert set(finetune.RETRIEVAL_DEFAULTS) == set(method_names()) == set(finetune.TRAIN_TRANSFORMS)


def test_config_overrides_are_applied_and_checked():
    """`--config_overrides 'name=value,...'` (both training scripts) changes config fields with their types, and the
    rebuilt config runs its own checks again: a bad choice, an unknown name or an inconsistent pair is refused."""
    method = get_method("codis")
    for script in ("pretrain", "finetune_retrieval"):
        apply = load_script(script).apply_config_overrides  # the scripts use vlalign.training.script_helpers
        assert apply(method.config_class(), None).to_dict() == method.config_class().to_dict()
        config = apply(
            method.config_class(), "code_loss_type=assignment_contrast,ot_loss_weight=0,sinkhorn_joint=true"
        )
        assert type(config) is method.config_class
        assert (config.code_loss_type, config.ot_loss_weight, config.sinkhorn_joint) == (
            "assignment_contrast",
            0,
            True,
        )
        for bad in ("code_loss_type=kmeans", "no_such_field=1", "sinkhorn_use_queue=true,sinkhorn_queue_rows=0"):
            with pytest.raises((ValueError, TypeError, StrictDataclassFieldValidationError)):
                apply(method.config_class(), bad)
        wants_teacher_view = load_script(script).wants_teacher_view
        teacher = apply(method.config_class(), "teacher_image_view=augmented")
        assert wants_teacher_view(teacher, augment=True) and not wants_teacher_view(config, augment=False)
        with pytest.raises(ValueError, match="--augment true"):
            wants_teacher_view(teacher, augment=False)


@pytest.mark.parametrize("pretrained", ["codis"], indirect=True)
def test_finetune_codis_with_switched_choices(pretrained, tmp_path):
    """CODIS open choices switched from the command line reach the loaded model and the saved folder; TCL's teacher
    view gets its second augmented image from the collator."""
    method, folder = pretrained
    out = tmp_path / "finetune"
    run_example(
        "finetune_retrieval.py", "--method", method, "--model_name_or_path", str(folder), "--output_dir", str(out),
        *SMALL, "--num_validation", "8", "--num_test", "0", "--max_steps", "1", "--learning_rate", "1e-4",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--config_overrides", "finetune_objective=albef,teacher_image_view=augmented", "--augment", "true",
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert (config["finetune_objective"], config["teacher_image_view"]) == ("albef", "augmented")
    assert_loads(out, method)


@pytest.mark.parametrize("pretrained", ["simla"], indirect=True)
def test_pretrain_simla_with_dalle_image_tokenizer(pretrained, tmp_path):
    """`--image_tokenizer DIR` (a converted DALL-E dVAE folder, here a tiny random `FlavaImageCodebook` whose 64-px
    inputs give the tiny ViT's 8 × 8 patch grid) supplies SIMLA's MIM targets, read from the augmented tokenizer view;
    the new model predicts its codes. Methods without MIM refuse the flag; the built-in tokenizer saved by a run is
    what a resumed run reloads."""
    from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

    dvae = tmp_path / "dvae"
    FlavaImageCodebook(FlavaImageCodebookConfig(hidden_size=8, num_blocks_per_group=1, vocab_size=16)).save_pretrained(
        dvae
    )
    out = tmp_path / "pretrain"
    run_example(
        "pretrain.py", "--method", "simla", "--tiny", "--output_dir", str(out), *SMALL, "--max_steps", "2",
        "--num_test", "0", "--save_strategy", "no", "--image_tokenizer", str(dvae), "--augment", "true",
        "--logging_steps", "1",
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["mim_vocab_size"] == 16
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any(row.get("loss_mim", 0) > 0 for row in logged), logged
    assert not (out / "image_tokenizer").exists()  # the dVAE is an input of the run, not saved with it

    with pytest.raises(AssertionError, match="--image_tokenizer is for methods with masked image modelling"):
        run_example(
            "pretrain.py", "--method", "albef", "--tiny", "--output_dir", str(tmp_path / "albef"), *SMALL,
            "--max_steps", "1", "--num_test", "0", "--image_tokenizer", str(dvae),
        )  # fmt: skip

    pretrain = load_script("pretrain")
    _, folder = pretrained
    saved = pretrain.saved_image_tokenizer([None, str(tmp_path), str(folder)])
    assert isinstance(saved, pretrain.PatchCodebookImageTokenizer)
    fitted = pretrain.PatchCodebookImageTokenizer.from_pretrained(folder / "image_tokenizer")
    assert (saved.grid, saved.vocab_size) == (8, json.loads((folder / "config.json").read_text())["mim_vocab_size"])
    assert saved.codebook.equal(fitted.codebook) and saved.codebook.abs().sum() > 0


def parse_recipe(recipe: Path, *flags: str) -> dict:
    """The arguments the recipe's script parses from `python SCRIPT RECIPE FLAGS...`, as one dict."""
    script = load_script("pretrain" if recipe.stem == "pretrain" else "finetune_retrieval")
    script_args, training_args = script.parse_args([str(recipe), *flags])
    return {**vars(training_args), **vars(script_args)}


def test_recipes_cover_every_method():
    found = {(path.parent.name, path.stem) for path in RECIPES.glob("*/*.yaml")}
    assert found == {(method, recipe) for method in method_names() for recipe in RECIPE_SPECS[method]}


@pytest.mark.parametrize("recipe", ["pretrain", "finetune_coco", "finetune_flickr30k"])
@pytest.mark.parametrize("method", method_names())
def test_recipe_equals_the_spec_and_the_script_defaults(method, recipe):
    """Every recipe key reaches the parsed arguments unchanged, and the recipe, the official values (specs) and the
    script's own per-method defaults agree (a Flickr30K recipe differs from the COCO defaults only where its spec
    does)."""
    path = RECIPES / method / f"{recipe}.yaml"
    values = yaml.safe_load(path.read_text())
    parsed = parse_recipe(path)
    assert values["method"] == parsed["method"] == method
    for name, value in values.items():
        assert parsed[name] == value, name
    spec = RECIPE_SPECS[method][recipe]
    for name, value in spec.items():
        assert parsed[name] == value, name
    if recipe == "pretrain":
        defaults = load_script("pretrain").PRETRAIN_DEFAULTS[method]
    else:
        defaults = load_script("finetune_retrieval").RETRIEVAL_DEFAULTS[method]
    if recipe == "finetune_flickr30k":  # the defaults are the COCO recipe; Flickr30K changes what its spec changes
        defaults = {**defaults, **spec}
    for name, value in defaults.items():
        assert parsed[name] == value == spec.get(name, value), name


def test_recipe_flags_override_and_unknown_keys_are_refused(tmp_path):
    """`SCRIPT RECIPE --flag value`: the flag wins over the recipe, which wins over the method's defaults; a JSON
    recipe works the same; a key that is no argument of the script is refused by name."""
    coco = RECIPES / "simla" / "finetune_coco.yaml"
    parsed = parse_recipe(coco, "--learning_rate", "3e-5", "--k_test", "64")
    assert (parsed["learning_rate"], parsed["k_test"], parsed["num_train_epochs"]) == (3e-5, 64, 5)
    assert parse_recipe(coco, "--method", "albef")["per_device_eval_batch_size"] == 32  # the recipe's, not ALBEF's

    as_json = tmp_path / "recipe.json"
    as_json.write_text(json.dumps({"method": "fdt", "num_train_epochs": 2}))
    parsed = parse_recipe(as_json, "--output_dir", str(tmp_path))
    assert (parsed["method"], parsed["num_train_epochs"], parsed["weight_decay"]) == ("fdt", 2, 0.1)

    typo = tmp_path / "typo.yaml"
    typo.write_text("method: albef\nlearning_rte: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rte"):
        parse_recipe(typo)


def test_pretrain_runs_from_a_recipe_file(tmp_path):
    """`python examples/pretrain.py recipe.yaml --flag ...` as a user runs it, on the synthetic data."""
    out = tmp_path / "out"
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump({"method": "albef", "tiny": True, "output_dir": str(out), "max_steps": 50, "num_test": 0})
    )
    run_example("pretrain.py", str(recipe), *SMALL, "--max_steps", "1", "--save_strategy", "no")
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert_loads(out, "albef")


def test_accelerate_configs():
    """The launch configs load as Accelerate reads them, run fp32 on 8 processes as the official runs, and FSDP wraps
    layer classes the ALBEF-family models declare (`_no_split_modules`). The old path still points to DDP's."""
    from accelerate.commands.config.config_args import ClusterConfig

    configs = {path.stem: ClusterConfig.from_yaml_file(path) for path in (EXAMPLES / "accelerate").glob("*.yaml")}
    assert {name: config.distributed_type.name for name, config in configs.items()} == {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed_zero2": "DEEPSPEED",
    }
    for config in configs.values():
        assert (config.num_processes, config.mixed_precision) == (8, "no")
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    for method in ("albef", "codis", "simla"):
        declared = get_method(method).pretraining_class._no_split_modules
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",") == declared
    assert configs["deepspeed_zero2"].deepspeed_config["zero_stage"] == 2


def test_model_settings_the_recipes_leave_to_the_config():
    """What the recipes' comments say comes with the config (no flag sets it) is the official value."""
    for method in ("albef", "codis", "simla"):  # docs/reproducing.md
        config = get_method(method).config_class()
        official = (256, 65536, 0.995, 0.07, 0.4, 0.15, 256)
        assert (
            config.embed_dim, config.queue_size, config.momentum, config.temp, config.alpha, config.mlm_probability,
            config.vision_config.image_size,
        ) == official  # fmt: skip
    fdt = get_method("fdt").config_class()  # docs/reproducing.md
    assert (fdt.fdt_num_tokens, fdt.fdt_dim, fdt.fdt_temperature, fdt.vision_config.image_size) == (
        16384,
        512,
        1000,
        224,
    )


def test_pretrain_streams_webdataset_shards_and_resumes(tmp_path):
    """`--train_shards` on 2 real tar shards with a corrupt sample (SIMLA: its image codes are fitted on the stream):
    the stream's size sets max_steps from the epochs, the skip is counted in the logs, and a resume continues from the
    saved stream position. (Every method streams in tests/test_streaming.py.)"""
    method = "simla"
    from vlalign.data.synthetic import make_synthetic_dataset

    rows = make_synthetic_dataset(16, 0, 0, image_size=32, seed=3)["train"]
    tokenizer = get_method(method).build_tokenizer([caption for captions in rows["captions"] for caption in captions])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"part-{shard}.tar")) as writer:
            for item in range(8):
                image = io.BytesIO()
                rows[shard * 8 + item]["image"].save(image, "JPEG")
                data = image.getvalue()[:50] if (shard, item) == (1, 3) else image.getvalue()  # one truncated JPEG
                writer.write({"__key__": f"{shard}-{item}", "jpg": data, "txt": rows[shard * 8 + item]["captions"][0]})
    out = tmp_path / "out"
    args = [
        "--method", method, "--tiny", "--train_shards", str(tmp_path / "part-{0..1}.tar"), "--train_num_samples", "16",
        "--tokenizer_name", str(tmp_path / "tokenizer"), "--image_size", "32", "--output_dir", str(out),
        "--use_cpu", "--report_to", "none", "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
        "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1", "--on_error", "skip",
    ]  # fmt: skip
    run_example("pretrain.py", *args)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["max_steps"] == 4 and state["global_step"] == 4  # 16 samples / batch 4, one epoch
    assert state["log_history"][-2]["skipped_samples"] == 1
    stream_state = json.loads((out / "checkpoint-2" / "stream_state.json").read_text())
    skipped = sum(stream_state["skipped"].get("0", {}).values())
    assert sum(stream_state["consumed"].values()) - skipped == 8  # 2 steps of 4 trained on, past any skipped sample
    run_example("pretrain.py", *args, "--resume_from_checkpoint", str(out / "checkpoint-2"), "--num_train_epochs", "2")
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8
    assert_loads(out, method)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A saved tiny (random) ALBEF model with its processor: 64 px, 8-px patches."""
    from vlalign.data.synthetic import make_synthetic_dataset
    from vlalign.recipes import dataset_captions

    method = get_method("albef")
    tokenizer = method.build_tokenizer(dataset_captions(make_synthetic_dataset(8, 0, 0, image_size=64, seed=0)))
    folder = tmp_path_factory.mktemp("tiny_albef")
    method.model_class(method.tiny_config(tokenizer, 64)).save_pretrained(folder)
    method.build_processor(tokenizer, 64).save_pretrained(folder)
    return folder


def refusal(monkeypatch, capsys, script: str, *args: str) -> str:
    """Run `script`'s main as `python examples/<script>.py ARGS` in this process; the one stderr line it ends with
    (exit status 2, as argparse). Building a model fails the test: the arguments must be refused before that."""
    from transformers import PreTrainedModel

    def no_model(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} built before the arguments were refused")

    monkeypatch.setattr(PreTrainedModel, "post_init", no_model)
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
    with pytest.raises(SystemExit) as ended:
        module.run_script(module.main)
    assert ended.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: "), lines
    return lines[0].removeprefix(f"{script}.py: error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max_steps", "0"], "--max_steps 0: pass the number of optimizer steps (1 or more), or leave it out"),
        (["--max_steps", "-5", "--num_train_epochs", "0"], "--max_steps -5: pass the number of optimizer steps"),
        (["--num_train_epochs", "0"], "--num_train_epochs 0.0 without --max_steps trains no step"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be 1 or more."),
        (["--learning_rate", "inf", "--max_steps", "1"], "--learning_rate inf: must be a finite number above 0."),
        (
            ["--image_size", "60", "--max_steps", "1"],
            "--image_size 60: image_size=60 is not a multiple of patch_size=8: the patch grid would drop the last 4 "
            "pixel rows and columns of every image. Use 56 or 64.",
        ),
        (["--config_overrides", "queue_size=0", "--max_steps", "1"], "--config_overrides 'queue_size=0': queue_size"),
        (["--method", "fdt", "--fdt_lr_schedule", "true", "--epoch_lr_schedule", "true"], "--fdt_lr_schedule and"),
    ],
)
def test_pretrain_refuses_what_the_cli_refuses(args, message, tmp_path, monkeypatch, capsys):
    """Each bad value ends the script with one line naming the flag and the fix, before any model is built."""
    out = tmp_path / "out"
    line = refusal(
        monkeypatch, capsys, "pretrain", "--tiny", "--output_dir", str(out), *SMALL, "--num_test", "0", *args
    )
    assert line.startswith(message), line
    assert not out.exists()


def test_empty_annotation_files_are_refused(tmp_path, monkeypatch, capsys):
    """An annotation json without entries is refused by name (not torch's 'num_samples=0'), in every script."""
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = str(tmp_path / "out")
    line = refusal(monkeypatch, capsys, "pretrain", "--train_json", str(empty), "--output_dir", out, *SMALL)
    assert line.startswith(f"--train_json {empty} has no rows; pass annotation files with image-caption entries")
    line = refusal(
        monkeypatch, capsys, "finetune_retrieval", "--train_json", str(empty), "--model_name_or_path", "unused",
        "--output_dir", out, *SMALL,
    )  # fmt: skip
    assert line.startswith(f"--train_json {empty} has no rows; pass an annotation file with image-caption entries")


def test_finetune_and_evaluate_refuse_bad_values(tiny_folder, tmp_path, monkeypatch, capsys):
    """The fine-tuning and evaluation scripts run the same checks: run length, counts, a resolution the model's
    patch does not divide (checked against the folder's config before the model is loaded), an empty split."""
    out = str(tmp_path / "out")
    finetune = ["--model_name_or_path", str(tiny_folder), "--output_dir", out, *SMALL]
    assert refusal(monkeypatch, capsys, "finetune_retrieval", *finetune, "--max_steps", "0").startswith(
        "--max_steps 0: pass the number of optimizer steps"
    )
    assert refusal(monkeypatch, capsys, "finetune_retrieval", *finetune, "--image_size", "60").startswith(
        "--image_size 60: image_size=60 is not a multiple of patch_size=8"
    )
    evaluate = ["--model_name_or_path", str(tiny_folder), "--output_file", str(tmp_path / "r.json"), "--use_cpu"]
    assert refusal(monkeypatch, capsys, "evaluate_retrieval", *evaluate, "--batch_size", "0") == (
        "--batch_size 0: must be 1 or more."
    )
    assert refusal(monkeypatch, capsys, "evaluate_retrieval", *evaluate, "--image_size", "100").endswith(
        "Use 96 or 104."
    )
    assert refusal(monkeypatch, capsys, "evaluate_retrieval", *evaluate, "--num_test", "0").startswith(
        "synthetic test split (seed 0) has no rows; pass --num_test 1 or more"
    )


def test_a_refused_argument_exits_with_status_2():
    """As a user runs it: exit status 2 and one line on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "pretrain.py"), "--tiny", "--max_steps", "0", "--output_dir", "unused"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pretrain.py: error: --max_steps 0: pass the number of optimizer steps (1 or more), or leave it out to train "
        "for the given epochs."
    ]
