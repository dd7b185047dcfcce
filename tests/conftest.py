"""Shared test fixtures: paths to the golden data, tiny configs, and ALBEF folders converted through the CLI."""

from __future__ import annotations

import os

# Nothing in the test suite may reach the Hugging Face Hub; tests that talk to the local stand-in opt back in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
import io
import subprocess
from pathlib import Path

import pytest  # noqa: E402
import torch  # noqa: E402

import vlalign  # noqa: E402
from vlalign.cli import main as cli_main  # noqa: E402
from vlalign.methods import get_method  # noqa: E402
from vlalign.recipes import tiny_albef_config as tiny_albef_recipe  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
ALBEF_FIXTURES = FIXTURES / "albef"


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `vlalign ...` through `vlalign.cli.main` in this interpreter, its output captured and torch's thread count
    restored: the CLI's behaviour without a fresh interpreter's ~5 s of imports per call. The console entry point
    itself runs in fresh interpreters in `test_bad_inputs_cli.py`."""
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = cli_main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            returncode = exit.code if isinstance(exit.code, int) else 1
        finally:
            torch.set_num_threads(threads)
    result = subprocess.CompletedProcess(["vlalign", *args], returncode, stdout.getvalue(), stderr.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"vlalign {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


#: the text side of `tiny_albef_config` (the fixture's BERT shape, dropout off)
TINY_TEXT_CONFIG = dict(
    vocab_size=245,
    hidden_size=32,
    num_hidden_layers=4,
    fusion_layer=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    cls_token_id=2,
    mask_token_id=4,
)


def tiny_albef_config(**overrides) -> vlalign.AlbefConfig:
    """A 2+2-layer ALBEF small enough for unit tests (the fixture's shape, with dropout off)."""
    settings = dict(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32
        ),
        text_config=dict(TINY_TEXT_CONFIG),
        embed_dim=16,
        queue_size=8,
    )
    settings.update(overrides)
    return vlalign.AlbefConfig(**settings)


def micro_albef_config(tokenizer, image_size: int = 32, **overrides) -> vlalign.AlbefConfig:
    """The recipes' tiny ALBEF shrunk by the registry's test size caps (32 wide, 1 ViT layer, 1+1 BERT layers)."""
    return tiny_albef_recipe(tokenizer, image_size, **{**get_method("albef").test_overrides, **overrides})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared CPU their spinning costs several times the work; a module
    opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config() -> vlalign.AlbefConfig:
    return tiny_albef_config()


@pytest.fixture
def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 245, (4, 9), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    input_ids[1, 6:] = 0
    return {
        "pixel_values": torch.randn(4, 3, 32, 32, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }


@pytest.fixture(scope="session")
def converted_pretrain_dir(tmp_path_factory) -> Path:
    """The fixture's official pretraining checkpoint converted with `vlalign convert`."""
    output = tmp_path_factory.mktemp("albef_pretrain")
    original = ALBEF_FIXTURES / "original"
    run_cli(
        "convert",
        "--method",
        "albef",
        "--checkpoint",
        str(original / "checkpoint.pth"),
        "--config",
        str(original / "Pretrain.yaml"),
        "--config",
        str(original / "config_bert.json"),
        "--tokenizer",
        str(original),
        "--output",
        str(output),
    )
    return output


@pytest.fixture(scope="session")
def converted_retrieval_dirs(tmp_path_factory) -> dict[int, Path]:
    """The same checkpoint converted for retrieval at 32 px (native) and 48 px (position embeddings interpolated),
    as the official Retrieval.py loads it."""
    dirs = {}
    for resolution in (32, 48):
        output = tmp_path_factory.mktemp(f"albef_retrieval_{resolution}")
        run_cli(
            "convert",
            "--method",
            "albef",
            "--checkpoint",
            str(ALBEF_FIXTURES / "original" / "checkpoint.pth"),
            "--config",
            str(ALBEF_FIXTURES / "retrieval" / f"Retrieval_res{resolution}.yaml"),
            "--output",
            str(output),
        )
        dirs[resolution] = output
    return dirs
