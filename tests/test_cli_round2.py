"""The command line, round 2 (docs/bad_inputs.md): argument errors before torch is imported, `vlalign push` checking
the Hub and the token before it loads or writes anything, `--check-images` on every verb that reads images, atomic
model folders, and the unknown-word warning of `vlalign retrieve`."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from hub_server import DEFAULT_TOKEN, LocalHub, _HubError, _Response, patch_clients
from test_bad_inputs_cli import run
from transformers import AutoTokenizer

import vlalign_cli
from vlalign.cli import main
from vlalign.data.synthetic import make_synthetic_dataset
from vlalign.methods import get_method, method_names
from vlalign.recipes import dataset_captions
from vlalign.threads import ENV_VAR

REPO_ID = "user/tiny-pushed"
IMAGE_SIZE = 32


def assert_one_line(code: int, stderr: str, *phrases: str) -> None:
    """Exit code 1 and one `vlalign VERB: error:` line holding every phrase (after progress bars, if any)."""
    lines = stderr.strip().splitlines()
    assert code == 1, stderr
    assert "Traceback" not in stderr and lines[-1].startswith("vlalign ") and ": error: " in lines[-1], stderr
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, stderr)


# ---------------------------------------------------------------------------------------------------- fast parsing

#: (arguments, exit code, a phrase of the output) of usage errors and help
PARSE_CASES = [
    (["--wrong-flag"], 2, "the following arguments are required: command"),
    (["retrieve", "--wrong-flag"], 2, "the following arguments are required: --model"),
    (["retrieve", "--model", "m", "--images", "i"], 2, "the following arguments are required: --query"),
    (["quickstart", "--method", "nope"], 2, "invalid choice: 'nope'"),
    (["evaluate", "--model", "m", "--batch-size", "0"], 2, "must be a positive integer (1 or more), got 0"),
    (["index", "--model", "m", "--image-folder", "f", "--output", "o", "--check-images", "all"], 2, "invalid choice"),
    (["--help"], 0, "{convert,quickstart,evaluate,retrieve,index,push}"),
    (["evaluate", "--help"], 0, "--check-images {header,decode,none}"),
]

PARSE_ONLY = """
import contextlib, io, json, sys
import vlalign_cli
results = []
for args in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            vlalign_cli.main(args)
        except SystemExit as exit_:
            code = exit_.code
    results.append([code, out.getvalue(), sorted(m for m in ("torch", "transformers", "vlalign") if m in sys.modules)])
print(json.dumps(results))
"""


def test_argument_errors_and_help_come_before_torch_is_imported():
    """The console script (`vlalign_cli.main`) answers usage errors and --help with the standard library only: in a
    fresh interpreter neither torch, transformers nor vlalign is imported afterwards."""
    cases = json.dumps([args for args, _, _ in PARSE_CASES])
    result = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, cases], capture_output=True, text=True, timeout=60, check=True
    )
    for (args, expected_code, phrase), (code, output, heavy) in zip(
        PARSE_CASES, json.loads(result.stdout), strict=True
    ):
        assert code == expected_code, (args, output)
        assert phrase in " ".join(output.split()), (args, output)
        assert heavy == [], (args, heavy)


def test_the_console_script_and_the_registry_agree():
    (script,) = entry_points(group="console_scripts", name="vlalign")
    assert script.value == "vlalign_cli:main"
    assert vlalign_cli.METHOD_NAMES == tuple(method_names())
    assert vlalign_cli.NUM_THREADS_ENV_VAR == ENV_VAR


# ---------------------------------------------------------------------------------------------------- push checks


class TokenHub(LocalHub):
    """`LocalHub` whose `whoami` knows tokens: `hf_read` is read-only, `hf_fine` a fine-grained token without write
    permission, `hf_write` writes to `user` and the organisation `team`; any other token is invalid (401)."""

    ROLES = {"hf_read": "read", "hf_fine": "fineGrained", "hf_write": "write"}

    def _whoami(self, request):
        token = request.headers.get("authorization", "").partition(" ")[2]
        if token not in self.ROLES:
            raise _HubError(401, "Invalid credentials in Authorization header")
        access = {"displayName": "test", "role": self.ROLES[token]}
        if token == "hf_fine":
            access["fineGrained"] = {"global": ["discussion.write"], "scoped": [
                {"entity": {"type": "user", "name": self.username}, "permissions": ["repo.content.read"]}
            ]}  # fmt: skip
        identity = {"type": "user", "name": self.username, "orgs": [{"name": "team"}], "auth": {"accessToken": access}}
        return _Response.json(identity)


@pytest.fixture
def hub(tmp_path):
    with TokenHub(tmp_path / "hub") as local_hub:
        yield local_hub


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """Not a model: the checks must fail before the folder is read."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "marker.txt").write_text("untouched")
    return folder


def folder_state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("token", "repo_id", "phrases"),
    [
        ("hf_nonsense", REPO_ID, ["rejects the token given as invalid or expired (401)", "--token", "HF_TOKEN"]),
        ("hf_read", REPO_ID, ["the token of user is read-only", "create a token with write access"]),
        ("hf_fine", REPO_ID, ["the token of user is read-only"]),
        ("hf_write", "someone-else/model", ["user may not write to the namespace 'someone-else'", "team, user"]),
    ],
)
def test_push_refuses_a_token_that_cannot_write_before_anything_else(
    token, repo_id, phrases, hub, tmp_path, model_dir, capsys, monkeypatch
):
    patch_clients(hub, monkeypatch, tmp_path / "hf_home")
    before = folder_state(tmp_path)
    code, err = run(
        "push", "--model", str(model_dir), "--repo-id", repo_id, "--token", token, "--eval-dataset", "synthetic",
        capsys=capsys,
    )  # fmt: skip
    assert_one_line(code, err, f"vlalign push: error: Pushing to {repo_id}", *phrases)
    assert hub.requests == [("GET", "/api/whoami-v2")] and hub.commits == []
    assert folder_state(tmp_path) == before  # nothing loaded, evaluated or written


def test_push_accepts_a_write_token_for_the_user_and_its_organisations(hub, tmp_path, monkeypatch):
    from vlalign.hub import check_write_access

    patch_clients(hub, monkeypatch, tmp_path / "hf_home", token="hf_write")
    assert check_write_access("team/model") == check_write_access("model") == "user"


def test_push_without_a_token_or_offline_names_the_fix(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, err = run("push", "--model", str(model_dir), "--repo-id", REPO_ID, "--token", "hf_x", capsys=capsys)
    assert_one_line(code, err, "needs the Hub, but offline mode is on (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))
    code, err = run("push", "--model", str(model_dir), "--repo-id", REPO_ID, capsys=capsys)
    assert_one_line(code, err, "needs a Hub token with write access, and none was found", "--token", "hf auth login")
    assert folder_state(model_dir) == {"marker.txt": b"untouched"}


def test_push_without_network_fails_in_one_line_before_saving(tmp_path, model_dir):
    """What a user without network sees, in a fresh process: the endpoint refuses connections."""
    env = {
        **os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_TOKEN": DEFAULT_TOKEN,
        "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "vlalign", "push", "--model", str(model_dir), "--repo-id", REPO_ID],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert_one_line(
        result.returncode, result.stderr, "the Hub at http://127.0.0.1:9 is unreachable (ConnectError",
        "check the network connection",
    )  # fmt: skip
    assert folder_state(model_dir) == {"marker.txt": b"untouched"}


# ---------------------------------------------------------------------------------------------------- image checks


@pytest.fixture(scope="module")
def test_split() -> datasets.Dataset:
    return make_synthetic_dataset(num_train=0, num_validation=0, num_test=4, seed=0)["test"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, test_split) -> Path:
    """A tiny ALBEF folder whose tokenizer knows the synthetic captions."""
    method = get_method("albef")
    processor = method.build_processor(method.build_tokenizer(dataset_captions({"test": test_split})), IMAGE_SIZE)
    torch.manual_seed(0)
    model = method.model_class(method.tiny_config(processor.tokenizer, IMAGE_SIZE, **method.test_overrides)).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, test_split) -> Path:
    """Four synthetic images, one of them truncated (its header reads, its pixels do not) and one not an image."""
    folder = tmp_path_factory.mktemp("images")
    encoded = [png_bytes(image) for image in test_split["image"]]
    (folder / "a.png").write_bytes(encoded[0])
    (folder / "b.png").write_bytes(encoded[1])
    (folder / "c_truncated.png").write_bytes(encoded[2][: len(encoded[2]) // 2])
    (folder / "d_garbage.jpg").write_bytes(b"not an image at all")
    return folder


def test_retrieve_checks_images_and_counts_what_it_skips(saved_model, image_folder, capsys):
    query = ["retrieve", "--model", str(saved_model), "--images", str(image_folder), "--query", "a red circle"]
    code, err = run(*query, capsys=capsys)  # default: headers checked; the truncated body is not read
    assert_one_line(code, err, f"--images {image_folder}: 1 of 4 images are unreadable (1 unreadable image(s):",
                    "d_garbage.jpg (not a recognized image format)", "--on-error skip")  # fmt: skip
    code, err = run(*query, "--check-images", "decode", capsys=capsys)
    assert_one_line(code, err, "2 of 4 images are unreadable", "c_truncated.png (", "d_garbage.jpg (")

    code = main([*query, "--check-images", "decode", "--on-error", "skip", "--json", "--top-k", "4"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.strip() == (
        f"vlalign retrieve: warning: --images {image_folder}: skipped 2 of 4 images: 2 unreadable image(s): "
        f"{image_folder / 'c_truncated.png'} (" + captured.err.split("c_truncated.png (")[1].strip()
    )
    assert sorted(Path(hit["path"]).name for hit in json.loads(captured.out)) == ["a.png", "b.png"]


def test_index_checks_the_images_of_a_folder_and_of_a_dataset(saved_model, image_folder, test_split, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    index = ["index", "--model", str(saved_model), "--output", str(gallery), "--check-images", "decode"]
    code, err = run(*index, "--image-folder", str(image_folder), capsys=capsys)
    assert_one_line(code, err, "--image-folder", "2 of 4 images are unreadable")
    assert not gallery.exists()
    assert main([*index, "--image-folder", str(image_folder), "--on-error", "skip"]) == 0
    assert "Indexed 2 images" in capsys.readouterr().out

    broken = [png_bytes(image) for image in test_split["image"]]
    broken[1] = broken[1][:40]
    dataset_dir = tmp_path / "dataset"
    rows = {"image": [{"bytes": b, "path": None} for b in broken], "captions": test_split["captions"]}
    features = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(dataset_dir)
    code, err = run(*index, "--dataset-dir", str(dataset_dir), "--output", str(tmp_path / "g2"), capsys=capsys)
    assert_one_line(code, err, f"--dataset-dir {dataset_dir}: 1 of 4 images are unreadable", "row 1 (")

    evaluate = ["evaluate", "--model", str(saved_model), "--dataset-dir", str(dataset_dir), "--check-images", "decode"]
    code, err = run(*evaluate, capsys=capsys)
    assert_one_line(code, err, "vlalign evaluate: error: --dataset-dir", "1 of 4 images are unreadable", "row 1 (")
    assert main([*evaluate, "--on-error", "skip", "--itc-only"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_images"] == 3
    assert "vlalign evaluate: warning: --dataset-dir" in captured.err and "skipped 1 of 4 images" in captured.err


def huge_png(width: int, height: int) -> bytes:
    """A PNG that declares `width`×`height` pixels (its header; no pixel data): what PIL's size limit looks at."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("check", ["header", "none"])
def test_an_oversized_image_is_one_clear_line(check, saved_model, image_folder, tmp_path, capsys):
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "a.png").write_bytes((image_folder / "a.png").read_bytes())
    (folder / "huge.png").write_bytes(huge_png(20000, 20000))
    for verb in (
        ["retrieve", "--images", str(folder), "--query", "a red circle"],
        ["index", "--image-folder", str(folder), "--output", str(tmp_path / "gallery")],
    ):
        code, err = run(*verb, "--model", str(saved_model), "--check-images", check, capsys=capsys)
        assert_one_line(code, err, "huge.png", "20000")


# ---------------------------------------------------------------------------------------------------- atomic saves


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_full_disk_during_save_for_hub_keeps_the_previous_folder(saved_model, tmp_path, monkeypatch):
    import transformers.modeling_utils

    from vlalign.files import FolderWriteError
    from vlalign.hub import save_for_hub
    from vlalign.sources import load_saved_model

    model, processor = load_saved_model(saved_model)
    folder = tmp_path / "out" / "model"
    save_for_hub(model, processor, folder, metrics=None, dataset_name="first")
    (folder / "notes.txt").write_text("mine")
    previous = folder_state(folder)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(FolderWriteError) as caught:
        save_for_hub(model, processor, folder, metrics=None, dataset_name="second", exist_ok=True)
    assert str(caught.value) == (
        f"Could not write {folder}: No space left on device (ENOSPC); free space on that disk, or write to a folder "
        "on another disk. Nothing was changed: the previous folder is kept as it was."
    )
    assert caught.value.errno == errno.ENOSPC
    assert folder_state(folder) == previous and leftovers(folder.parent) == []

    new_folder = tmp_path / "out" / "new"
    with pytest.raises(FolderWriteError, match="Nothing was changed: no partial folder was left"):
        save_for_hub(model, processor, new_folder, metrics=None, dataset_name="second")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["model"]

    monkeypatch.undo()
    save_for_hub(model, processor, folder, metrics=None, dataset_name="second", exist_ok=True)
    assert (folder / "notes.txt").read_text() == "mine" and "second" in (folder / "README.md").read_text()
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())
    assert leftovers(folder.parent) == []


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_full_disk_during_index_is_one_line_and_leaves_no_folder(saved_model, image_folder, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    gallery = tmp_path / "gallery"
    code, err = run(
        "index", "--model", str(saved_model), "--image-folder", str(image_folder), "--output", str(gallery),
        "--check-images", "decode", "--on-error", "skip", capsys=capsys,
    )  # fmt: skip
    assert_one_line(code, err, f"vlalign index: error: Could not write {gallery}: No space left on device (ENOSPC)",
                    "no partial folder was left")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_convert_keeps_the_previous_conversion(tmp_path, monkeypatch, capsys):
    import transformers.modeling_utils
    from conftest import ALBEF_FIXTURES

    original = ALBEF_FIXTURES / "original"
    output = tmp_path / "converted"
    convert = [
        "convert", "--method", "albef", "--checkpoint", str(original / "checkpoint.pth"), "--config",
        str(original / "Pretrain.yaml"), "--config", str(original / "config_bert.json"), "--output", str(output),
    ]  # fmt: skip
    assert main(convert) == 0
    previous = folder_state(output)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    code, err = run(*convert, capsys=capsys)
    assert_one_line(code, err, f"vlalign convert: error: Could not write {output}: No space left on device (ENOSPC)",
                    "the previous folder is kept as it was")  # fmt: skip
    assert folder_state(output) == previous and leftovers(tmp_path) == []


def test_safetensors_write_errors_are_named_by_their_os_error():
    from safetensors import SafetensorError

    from vlalign.files import FolderWriteError, atomic_folder

    with pytest.raises(FolderWriteError, match=r"No space left on device \(ENOSPC\)"), atomic_folder("/tmp/x-y-z"):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
    with pytest.raises(SafetensorError, match="header"), atomic_folder("/tmp/x-y-z"):
        raise SafetensorError("Error while deserializing header")  # not a write error: as it is
    assert not Path("/tmp/x-y-z").exists()


# ---------------------------------------------------------------------------------------------------- unknown words


def test_retrieve_warns_when_most_query_words_are_unknown(saved_model, image_folder, test_split, capsys):
    query = ["retrieve", "--model", str(saved_model), "--images", str(image_folder), "--check-images", "decode",
             "--on-error", "skip", "--query"]  # fmt: skip
    assert main([*query, "zebra giraffe elephant"]) == 0
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if "Query" in line]
    vocabulary = len(AutoTokenizer.from_pretrained(saved_model))  # built from the synthetic captions
    assert warnings_printed == [
        "vlalign retrieve: warning: Query 'zebra giraffe elephant': 3 of 3 word pieces (100%) are the tokenizer's "
        f"unknown token [UNK]: its vocabulary ({vocabulary} tokens) does not cover these words, so the ranking rests "
        "on the few known pieces, if any. Rephrase the query with words the model was trained on."
    ]
    assert main([*query, test_split["captions"][0][0]]) == 0
    assert "Query" not in capsys.readouterr().err


def test_the_pipeline_warns_python_users_too(saved_model, image_folder, test_split):
    import warnings

    from transformers import pipeline

    from vlalign.pipelines.retrieval import TASK
    from vlalign.sources import load_saved_model

    model, processor = load_saved_model(saved_model)
    retriever = pipeline(TASK, model=model, processor=processor)
    images = [str(image_folder / "a.png"), str(image_folder / "b.png")]
    with pytest.warns(UserWarning, match=r"Query 'zebra giraffe': 2 of 2 word pieces \(100%\)") as caught:
        retriever(["a zebra", "zebra giraffe"], candidate_images=images)
    assert [str(w.message).split(":")[0] for w in caught] == ["Query 'zebra giraffe'"]  # 'a zebra': 1 of 2, not most
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retriever(test_split["captions"][0][0], candidate_images=images)
