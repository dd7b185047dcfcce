"""The package's layering, as users meet it: `import vlalign` loads the models and the Auto registrations only, and
what upper layers ask of a model is the model's own attribute (the import-linter contract in pyproject.toml checks
the imports themselves)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlalign.auto import MODEL_FAMILIES
from vlalign.methods import all_methods, get_method


def test_import_vlalign_loads_no_trainer_plots_hub_or_registry():
    probe = (
        "import sys, vlalign\n"
        "heavy = ('transformers.trainer', 'matplotlib', 'vlalign.hub', 'vlalign.methods', 'vlalign.training',\n"
        "         'vlalign.evaluation', 'vlalign.convert')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_submodules_load_on_first_use():
    probe = "import vlalign\nprint(vlalign.methods.get_method('albef').name)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "albef"


def test_registry_points_at_the_registered_families():
    assert sorted(MODEL_FAMILIES) == [method.name for method in all_methods()]
    for method in all_methods():
        assert method.family is MODEL_FAMILIES[method.name]
        assert method.config_class.model_type == method.name
        assert method.title == method.config_class.method_title
        assert method.supports_itm_rerank == method.model_class.supports_itm_rerank


@pytest.mark.parametrize("name", sorted(MODEL_FAMILIES))
def test_capabilities_are_class_attributes(name):
    family = MODEL_FAMILIES[name]
    for model_class in (family.model_class, *family.training_classes):
        assert model_class.supports_itm_rerank is (name != "fdt"), model_class
        assert callable(model_class.optimizer_parameter_groups)
    for attribute in ("method_title", "method_paper", "hub_tags"):
        assert getattr(family.config_class, attribute)
    assert family.remote_code_files[1] == f"modeling_{name}.py"


def test_deprecated_registry_flag_warns_and_answers():
    method = get_method("fdt")
    with pytest.warns(FutureWarning, match="supports_itm_rerank"):
        assert method.supports_itm is False


def test_deprecated_training_names_warn_and_work(tmp_path):
    from vlalign.training import optim
    from vlalign.training.trainer import AlignmentTrainingArguments

    with pytest.warns(FutureWarning, match="epoch_lr_schedule"):
        args = AlignmentTrainingArguments(output_dir=str(tmp_path), albef_lr_schedule=True, report_to=[])
    assert args.epoch_lr_schedule is True
    with pytest.warns(FutureWarning, match="get_epoch_schedule"):
        assert optim.get_albef_schedule is optim.get_epoch_schedule
    with pytest.warns(FutureWarning, match="EpochScheduleLambda"):
        assert optim.AlbefLRLambda is optim.EpochScheduleLambda


def test_deprecated_parameter_groups_of_the_registry_ask_the_model():
    from vlalign.recipes import build_tokenizer, tiny_albef_config

    method = get_method("albef")
    model = method.pretraining_class(tiny_albef_config(build_tokenizer(["a red circle"]), **method.test_overrides))
    with pytest.warns(FutureWarning, match="optimizer_parameter_groups"):
        groups = method.parameter_groups(model, 0.02)
    expected = model.optimizer_parameter_groups(0.02)
    assert [group["param_names"] for group in groups] == [group["param_names"] for group in expected]


def test_deprecated_registry_fields_point_at_the_classes():
    method = get_method("simla")
    with pytest.warns(FutureWarning, match="method_paper"):
        assert method.paper == method.config_class.method_paper
    with pytest.warns(FutureWarning, match="hub_tags"):
        assert method.tags == ("simla", "albef")
    with pytest.warns(FutureWarning, match="config_rows"):
        from vlalign.hub.summaries import config_rows

        assert method.card_config_rows is config_rows


def test_deprecated_module_locations_warn_and_work():
    probe = (
        "import warnings\n"
        "warnings.simplefilter('error', FutureWarning)\n"
        "try:\n"
        "    import vlalign.hub.sources\n"
        "except FutureWarning as warning:\n"
        "    print(warning)\n"
        "warnings.simplefilter('ignore', FutureWarning)\n"
        "import vlalign.hub.sources, vlalign.sources, vlalign.methods\n"
        "print(vlalign.hub.sources.resolve_pretrained is vlalign.sources.resolve_pretrained)\n"
        "vlalign.methods.register_auto_classes()\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["vlalign.hub.sources is deprecated; import vlalign.sources.", "True"]
