"""README.md's code runs as written: every Python block, in a fresh namespace, from a folder where
`quickstart_output/model` is a saved tiny model (what `vlalign quickstart` leaves there, made here without training);
every shell command other than the quick start's two (run by tests/test_quickstart.py and .ci/run) names a program
and flags that exist (`--help`)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method
from vlalign.recipes import dataset_captions

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: the quick start's two commands: each sets up .venv, then runs the quick start or the test suite
QUICK_START = (
    "bash scripts/setup.sh && .venv/bin/vlalign quickstart",
    "bash scripts/setup.sh && .venv/bin/python -m pytest",
)
#: commands that install or lint: run by scripts/setup.sh and .ci/run, not here
SETUP_AND_CHECKS = (
    "pip install",
    "bash scripts/setup.sh",
    ".venv/bin/ruff",
    ".venv/bin/lint-imports",
    ".venv/bin/python -m pytest",
)


def code_blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README.read_text()) if lang == language]


def shell_commands() -> list[str]:
    """The commands of the README's bash blocks: comments dropped, continuation lines joined."""
    commands = []
    for block in code_blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            command = line.split(" #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory) -> Path:
    """A folder holding `quickstart_output/model`: a tiny random ALBEF model and processor, as the quick start saves."""
    folder = tmp_path_factory.mktemp("readme")
    method = get_method("albef")
    tokenizer = method.build_tokenizer(dataset_captions(make_synthetic_dataset(16, 0, 0)))
    model_dir = folder / "quickstart_output" / "model"
    method.model_class(method.tiny_config(tokenizer, 64)).save_pretrained(model_dir)
    method.build_processor(tokenizer, 64).save_pretrained(model_dir)
    return folder


def test_the_readme_has_code():
    assert len(code_blocks("python")) == 4
    assert any(command.startswith("vlalign retrieve") for command in shell_commands())


@pytest.mark.parametrize("number", range(4))
def test_python_block_runs_as_written(number, quickstart_folder, monkeypatch, request):
    """Each block on its own (its imports and data included), as a reader copies it."""
    code = code_blocks("python")[number]
    monkeypatch.chdir(quickstart_folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md python block {number}", "exec"), namespace)
    if "trainer" in namespace:  # the Train block trained and evaluated
        assert namespace["trainer"].state.global_step == 10
    if "image_embeds" in namespace:
        embed_dim = namespace["model"].config.embed_dim
        assert namespace["image_embeds"].shape == namespace["text_embeds"].shape == (1, embed_dim)


def help_command(command: str) -> tuple[list[str], list[str]] | None:
    """The `--help` call that checks `command`, and the flags `command` uses; None for the quick start's commands and
    for setup and lint commands (run elsewhere)."""
    if command.startswith(QUICK_START) or command.startswith(SETUP_AND_CHECKS):
        return None
    words = shlex.split(command)
    flags = [word.split("=")[0] for word in words if word.startswith("--")]
    if words[0] == "vlalign":
        return [str(Path(sys.executable).parent / "vlalign"), words[1], "--help"], flags
    if words[:2] == ["accelerate", "launch"]:  # the launch config must exist; the script's own flags are checked
        config = words[words.index("--config_file") + 1]
        assert (ROOT / config).is_file(), config
        script = next(word for word in words if word.endswith(".py"))
        recipe = [word for word in words if word.endswith(".yaml") and word != config]
        assert all((ROOT / path).is_file() for path in recipe), recipe
        return [sys.executable, str(ROOT / script), "--help"], flags[flags.index("--config_file") + 1 :]
    raise AssertionError(f"README command {command!r}: no check for {words[0]!r}; add one here")


def test_shell_commands_name_real_flags():
    """`vlalign VERB --help` (and the example script's) lists every flag the README passes."""
    flags_by_call: dict[tuple[str, ...], list[str]] = {}
    for command in shell_commands():
        if (check := help_command(command)) is not None:
            flags_by_call.setdefault(tuple(check[0]), []).extend(check[1])
    assert len(flags_by_call) >= 6
    for call, flags in flags_by_call.items():
        result = subprocess.run(call, capture_output=True, text=True, timeout=300, cwd=ROOT, env=os.environ)
        assert result.returncode == 0, (call, result.stderr[-2000:])
        missing = sorted({flag for flag in flags if flag not in result.stdout})
        assert not missing, f"README passes {missing}, which `{' '.join(call[-2:])}` does not list"
