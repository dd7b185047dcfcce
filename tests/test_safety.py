"""Nothing vlalign ships runs code it reads: no unrestricted unpickling, no eval/exec, no remote code in library paths;
converted and saved weights are safetensors only; loading a saved folder with vlalign installed needs no remote code."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALBEF_FIXTURES, run_cli

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "examples", "benchmarks")

#: (file, finding) → why it is safe. Every entry names the file it applies to; nothing is allowed repo-wide.
ALLOWED = {
    ("src/vlalign/convert/restricted_unpickle.py", "pickle.Unpickler"): (
        "`_LegacyUnpickler` reads torch's legacy (pre-zip) checkpoint format with a `find_class` that resolves only an "
        "explicit allow-list of torch storage types and inert stand-in classes (`PickledObject`), raising "
        "UnpicklingError for any other global; no pickled code runs. The zip format goes through "
        "torch.load(weights_only=True)."
    ),
}


def findings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, finding) for every risky construct: `torch.load` without `weights_only=True`, `pickle`/`marshal`
    loading, `cloudpickle`/`dill`/`joblib`, builtin `eval`/`exec`, `yaml.load`/`unsafe_load`/`full_load`,
    `numpy.load(allow_pickle=True)`, `trust_remote_code=True`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                (node.lineno, f"import {m}") for m in modules if m.split(".")[0] in ("cloudpickle", "dill", "joblib")
            ]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.load", "marshal.loads"):
                found.append((node.lineno, name))
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                found.append((node.lineno, name))
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            found.append((node.lineno, f"{node.func.id}("))
        func = ast.unparse(node.func)
        weights_only = keywords.get("weights_only")
        if func == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        allow_pickle = keywords.get("allow_pickle")
        if func in ("np.load", "numpy.load") and isinstance(allow_pickle, ast.Constant) and allow_pickle.value:
            found.append((node.lineno, "numpy.load(allow_pickle=True)"))
        remote = keywords.get("trust_remote_code")
        if isinstance(remote, ast.Constant) and remote.value is True:
            found.append((node.lineno, "trust_remote_code=True"))
    return sorted(found, key=lambda item: item[0])


def test_shipped_code_never_unpickles_evaluates_or_trusts_remote_code():
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 40
    violations, used = [], set()
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        for line, finding in findings(ast.parse(path.read_text(), filename=relative)):
            if (relative, finding) in ALLOWED:
                used.add((relative, finding))
            else:
                violations.append(f"{relative}:{line}: {finding}")
    assert not violations, "\n".join(violations)
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"


def test_the_scanner_finds_each_risky_construct():
    source = """
import dill
torch.load(f)
torch.load(f, weights_only=False)
torch.load(f, weights_only=True)
pickle.loads(b)
yaml.load(text)
yaml.safe_load(text)
eval(text)
model.eval()
AutoModel.from_pretrained(name, trust_remote_code=True)
np.load(f, allow_pickle=True)
"""
    assert [finding for _, finding in findings(ast.parse(source))] == [
        "import dill",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "pickle.loads",
        "yaml.load",
        "eval(",
        "trust_remote_code=True",
        "numpy.load(allow_pickle=True)",
    ]


def test_converted_folders_hold_safetensors_only(tmp_path):
    original = ALBEF_FIXTURES / "original"
    output = tmp_path / "converted"
    run_cli("convert", "--method", "albef", "--checkpoint", str(original / "checkpoint.pth"), "--config",
            str(original / "Pretrain.yaml"), "--config", str(original / "config_bert.json"), "--output", str(output))  # fmt: skip
    names = {path.name for path in output.iterdir()}
    assert "model.safetensors" in names
    assert not {name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}, names


@pytest.fixture(scope="module", params=method_names())
def saved(request, tmp_path_factory) -> tuple[str, Path]:
    method = get_method(request.param)
    dataset = make_synthetic_dataset(num_train=0, num_validation=0, num_test=4, seed=0)
    processor = method.build_processor(method.build_tokenizer(dataset_captions(dataset)), 32)
    torch.manual_seed(0)
    for model_class in (method.pretraining_class, method.model_class):
        model = model_class(method.tiny_config(processor.tokenizer, 32, **method.test_overrides))
        folder = tmp_path_factory.mktemp(f"{method.name}_{model_class.__name__}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    return method.name, folder


def test_saved_folders_hold_safetensors_only(saved):
    _, folder = saved
    names = {path.name for path in folder.iterdir()}
    assert "model.safetensors" in names
    assert not {name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}, names


def test_loading_with_vlalign_installed_runs_no_remote_code(saved, monkeypatch):
    """The Auto classes resolve every method from vlalign's registration: the folder's `auto_map` (its copied
    modelling files) is never consulted, so no `trust_remote_code` is needed and no dynamic module is imported."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    def refuse(*args, **kwargs):
        raise AssertionError(f"remote code was requested: {args}")

    for module in [m for n, m in sys.modules.items() if n.startswith("transformers") and m is not None]:
        for function in ("get_class_from_dynamic_module", "get_class_in_module"):
            if hasattr(module, function):
                monkeypatch.setattr(module, function, refuse)
    name, folder = saved
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model = AutoModel.from_pretrained(folder, trust_remote_code=False)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=False)
    assert config.model_type == name
    assert type(model).__module__.startswith("vlalign.models.")
    assert type(processor).__module__.startswith("vlalign.models.")
    assert type(processor.tokenizer).__module__.startswith("vlalign.models.")
