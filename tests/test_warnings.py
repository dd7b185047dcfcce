"""Honest output: the README's commands, run on the installed package, print no warning that is not in `ALLOWED`
(each entry with its reason). Reduced so that it runs in well under a minute: the quick start with a few steps
(`QuickstartSettings`), every Python block of the README, and the README's `vlalign retrieve`, `evaluate`, `index` and
gallery `retrieve` on the quick start's output, through the `vlalign` console script's entry point. (`vlalign push`
needs the Hub; `vlalign convert` an official checkpoint.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoImageProcessor, AutoProcessor
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions

README = Path(__file__).resolve().parent.parent / "README.md"

#: pattern of a warning line that may appear -> why it is honest (none today; an entry needs its reason)
ALLOWED: dict[str, str] = {}

#: a progress bar's line (tqdm: "12%|█  | 3/25 [00:01<...]"), which is output, not a warning
PROGRESS = re.compile(r"\d+%\|.*\|")

DRIVER = textwrap.dedent(
    """
    import re
    import sys
    from importlib.metadata import entry_points
    from pathlib import Path

    from vlalign.data.synthetic import make_synthetic_dataset
    from vlalign.quickstart import QuickstartSettings, run_quickstart

    settings = QuickstartSettings(num_train=64, num_test=12, batch_size=8, max_steps=4, warmup_steps=1, k_test=4)
    run_quickstart("quickstart_output", settings)
    readme = Path(sys.argv[1]).read_text()
    for number, code in enumerate(
        code for language, code in re.findall(r"^```(\\w+)\\n(.*?)^```$", readme, re.M | re.S) if language == "python"
    ):
        exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "__readme__"})
    photos = Path("photos")
    photos.mkdir()
    for number, image in enumerate(make_synthetic_dataset(0, 0, 6, seed=1)["test"]["image"]):
        image.save(photos / f"{number}.png")
    vlalign = entry_points(group="console_scripts")["vlalign"].load()
    model = ["--model", "quickstart_output/model"]
    assert vlalign(["retrieve", *model, "--images", "photos/", "--query", "a red circle", "--top-k", "5", "--rerank"]) == 0
    assert vlalign(["evaluate", *model, "--synthetic-size", "12", "--k-test", "4"]) == 0
    assert vlalign(["index", *model, "--image-folder", "photos/", "--output", "gallery", "--index-type", "hnsw"]) == 0
    assert vlalign(["retrieve", *model, "--gallery", "gallery", "--query", "a red circle", "--top-k", "5", "--rerank"]) == 0
    """
)


def warnings_in(stderr: str) -> list[str]:
    """The warnings a run printed: every stderr line that is not a progress bar, blank, or the indented source line
    Python prints under a warning. Logged warnings ("[transformers] ...", a logger's message) and Python warnings
    ("file:line: UserWarning: ...") alike."""
    lines = [line.rstrip() for line in re.split(r"[\r\n]", stderr)]
    return [line for line in lines if line.strip() and not line.startswith(" ") and not PROGRESS.search(line)]


def unexplained(found: list[str]) -> list[str]:
    return [line for line in found if not any(re.search(pattern, line) for pattern in ALLOWED)]


def test_the_collector_sees_python_and_logged_warnings():
    stderr = (
        "Loading weights:   0%|          | 0/140 [00:00<?, ?it/s]\rLoading weights: 100%|██| 140/140 [00:00<00:00]\n"
        "/x/y.py:3: UserWarning: something odd\n  warnings.warn('something odd')\n"
        "[transformers] Requested torchvision backend is not available. Falling back to pil backend.\n"
        "     \n"
    )
    assert warnings_in(stderr) == [
        "/x/y.py:3: UserWarning: something odd",
        "[transformers] Requested torchvision backend is not available. Falling back to pil backend.",
    ]


def test_readme_commands_print_no_unexplained_warning(tmp_path):
    env = {
        **os.environ,
        "PYTHONWARNINGS": "default",  # DeprecationWarnings too, once per place
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    result = subprocess.run(
        [sys.executable, str(driver), str(README)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert "photos/" in result.stdout and '"txt_r1"' in result.stdout and "Indexed 6 images" in result.stdout
    assert unexplained(warnings_in(result.stderr)) == []


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny model folder (config + processor) per method."""
    captions = dataset_captions(make_synthetic_dataset(8, 0, 0))
    folders = {}
    for name in method_names():
        method = get_method(name)
        tokenizer = method.build_tokenizer(captions)
        folders[name] = tmp_path_factory.mktemp(name)
        method.tiny_config(tokenizer, 64).save_pretrained(folders[name])
        method.build_processor(tokenizer, 64).save_pretrained(folders[name])
    return folders


@pytest.mark.parametrize("method", method_names())
def test_processors_load_without_a_backend_warning(method, saved_folders):
    """Our image processors are PIL processors, registered for the PIL backend only, and are declared PIL by
    default: loading one without `backend=` takes PIL without "Requested torchvision backend is not available"
    (torchvision is installed). An explicit request for torchvision is still told it gets PIL."""
    logger = transformers_logging.get_logger("transformers.models.auto.image_processing_auto")
    logger.warning_once.cache_clear()  # a warning given earlier in this process must be given again
    with CaptureLogger(logger) as captured:
        processor = AutoProcessor.from_pretrained(saved_folders[method])
        image_processor = AutoImageProcessor.from_pretrained(saved_folders[method])
    assert processor.image_processor.backend == image_processor.backend == "pil"
    assert captured.out == ""
    with CaptureLogger(logger) as captured:
        AutoImageProcessor.from_pretrained(saved_folders[method], backend="torchvision")
    assert "Requested torchvision backend is not available. Falling back to pil backend." in captured.out
