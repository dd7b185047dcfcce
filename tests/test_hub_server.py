"""End-to-end checks of the `LocalHub` stand-in (tests/hub_server.py) with the real clients, over HTTP.

Fixtures (move them to a ``conftest.py`` to share them; ``tests/`` is on ``sys.path`` under pytest's default
rootdir-based import mode, hence ``from hub_server import ...``):

* ``hub``: a running `LocalHub` keeping its repos under ``tmp_path / "hub"``; stopped after the test.
  Talk to it with ``HfApi(endpoint=hub.endpoint, token="hf_test")``.
* ``hub_clients``: ``hub`` plus `patch_clients`, so that code which does not take an endpoint argument
  (``model.push_to_hub(...)``, ``Model.from_pretrained(repo_id)``, ``hf_hub_download``) talks to it too:
  ``huggingface_hub.constants.ENDPOINT`` / resolve-URL template / cache dir are monkeypatched, and
  ``transformers.utils.hub._hf_api`` (transformers' shared `HfApi`, built with the endpoint of its first use)
  is reset. ``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_TOKEN`` are also set for subprocesses; a *fresh*
  process is the only place where the plain ``HF_ENDPOINT`` variable works, because `huggingface_hub` reads it
  at import time (see `test_from_pretrained_in_subprocess_via_hf_endpoint`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import DEFAULT_TOKEN, LocalHub, client_env, git_blob_sha, patch_clients
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from transformers import BertConfig, BertModel


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub") as local_hub:
        yield local_hub


@pytest.fixture
def hub_clients(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalHub:
    patch_clients(hub, monkeypatch, hf_home=tmp_path / "hf-home")
    return hub


@pytest.fixture
def api(hub: LocalHub, monkeypatch: pytest.MonkeyPatch) -> HfApi:
    # conftest turns offline mode on for the whole suite; talking to the loopback stand-in is the exception
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return HfApi(endpoint=hub.endpoint, token=DEFAULT_TOKEN)


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=99
    )
    return BertModel(config).eval()


def _assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def _downloaded(hub: LocalHub, repo_id: str) -> set[str]:
    """Files of `repo_id` fetched with GET /{repo_id}/resolve/{revision}/{path} (any revision: main or a sha)."""
    prefix = f"/{repo_id}/resolve/"
    return {
        path[len(prefix) :].split("/", 1)[1]
        for method, path in hub.requests
        if method == "GET" and path.startswith(prefix)
    }


def test_server_lifecycle_and_unknown_routes(tmp_path: Path) -> None:
    import httpx2

    hub = LocalHub(tmp_path / "hub").start()
    endpoint = hub.endpoint
    assert endpoint.startswith("http://127.0.0.1:")
    with httpx2.Client() as client:  # a pooled keep-alive connection must not block `stop()`
        response = client.get(f"{endpoint}/api/spaces-hardware")
        assert response.status_code == 404
        assert "does not emulate" in response.json()["error"]
        hub.stop()
    assert hub.unhandled == [("GET", "/api/spaces-hardware")]
    with pytest.raises(RuntimeError):
        hub.endpoint  # noqa: B018
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{endpoint}/api/whoami-v2", headers={"Authorization": "Bearer x"})


def test_create_repo_whoami_and_auth(hub: LocalHub, api: HfApi) -> None:
    assert api.whoami()["name"] == "user"

    url = api.create_repo("user/demo", private=True)
    assert (url.repo_id, url.endpoint) == ("user/demo", hub.endpoint)
    assert hub.repo_dir("user/demo").is_dir() and hub.files("user/demo") == {}

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("user/demo")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("user/demo", exist_ok=True).repo_id == "user/demo"
    assert api.create_repo("solo", exist_ok=True).repo_id == "user/solo"  # no namespace -> whoami's
    assert api.repo_info("user/demo").private is True
    assert api.repo_exists("user/demo") and not api.repo_exists("user/missing")

    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(endpoint=hub.endpoint, token=False).create_repo("user/anonymous")
    assert unauthorized.value.response.status_code == 401
    assert not hub.repo_dir("user/anonymous").exists()

    api.delete_repo("user/solo")
    assert not hub.repo_dir("user/solo").exists()


@pytest.mark.parametrize("disable_xet", [False, True], ids=["xet-pipeline", "legacy-create-commit"])
def test_upload_folder_stores_exact_files(
    hub: LocalHub, api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disable_xet: bool
) -> None:
    from huggingface_hub import constants

    # With hf_xet installed, `upload_folder` goes through the Xet pipeline; our "regular" preupload answer keeps it
    # off Xet entirely. HF_HUB_DISABLE_XET=1 selects the legacy `create_commit` path: both must work.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", disable_xet)
    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet"))  # hf_xet's session logs, if it is created here
    expected = {
        "README.md": b"---\nlicense: apache-2.0\ntags:\n- test\n---\n# Demo\n",
        "config.json": json.dumps({"hidden_size": 32}).encode(),
        "nested/dir/notes.txt": "caf\u00e9 \u2615\n".encode(),
        "weights.bin": bytes(range(256)) * 3 + b"\x00\xff" * 50,
        "empty.txt": b"",
    }
    folder = tmp_path / "folder"
    for rel, content in expected.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)

    api.create_repo("user/files", exist_ok=True)
    info = api.upload_folder(repo_id="user/files", folder_path=folder, commit_message="add files")

    assert hub.files("user/files") == expected
    assert sorted(
        p.relative_to(hub.repo_dir("user/files")).as_posix() for p in hub.storage.rglob("*") if p.is_file()
    ) == sorted(expected)
    assert [(c.summary, sorted(c.added)) for c in hub.commits] == [("add files", sorted(expected))]
    assert info.oid == hub.head("user/files") and info.repo_url.repo_id == "user/files"
    assert ("POST", "/api/models/user/files/preupload/main") in hub.requests
    assert ("POST", "/api/models/user/files/commit/main") in hub.requests
    assert hub.unhandled == []

    # The listing / metadata the client reads back matches what is on disk.
    assert sorted(api.list_repo_files("user/files")) == sorted(expected)
    siblings = {s.rfilename: s for s in api.model_info("user/files", files_metadata=True).siblings}
    assert {name: (s.size, s.blob_id) for name, s in siblings.items()} == {
        name: (len(data), git_blob_sha(data)) for name, data in expected.items()
    }

    # Re-uploading unchanged files is a no-op (preupload reports the remote oids), like on the Hub.
    again = api.upload_folder(repo_id="user/files", folder_path=folder)
    assert again.oid == info.oid and len(hub.commits) == 1

    # Deletions go through the same commit endpoint.
    api.delete_file("weights.bin", repo_id="user/files")
    assert sorted(hub.files("user/files")) == sorted(set(expected) - {"weights.bin"})


def test_commit_checks_and_dataset_repos(hub: LocalHub, api: HfApi) -> None:
    import httpx2
    from huggingface_hub import CommitOperationAdd

    api.create_repo("org/data", repo_type="dataset")
    first = api.upload_file(
        path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id="org/data", repo_type="dataset"
    )
    assert (hub.storage / "datasets" / "org" / "data" / "train.csv").read_bytes() == b"a,b\n1,2\n"
    assert first.repo_url.repo_type == "dataset"

    api.upload_file(path_or_fileobj=b"v2", path_in_repo="train.csv", repo_id="org/data", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as stale:  # parent_commit is no longer the head
        api.create_commit(
            "org/data",
            [CommitOperationAdd("late.txt", b"late")],
            commit_message="late",
            repo_type="dataset",
            parent_commit=first.oid,
        )
    assert stale.value.response.status_code == 412
    assert hub.files("org/data", "dataset") == {"train.csv": b"v2"}

    # Paths escaping the repo are refused even from a client that does not validate them.
    line = {"key": "file", "value": {"path": "../escape.txt", "content": "eA==", "encoding": "base64"}}
    body = json.dumps({"key": "header", "value": {"summary": "x"}}) + "\n" + json.dumps(line) + "\n"
    response = httpx2.post(
        f"{hub.endpoint}/api/datasets/org/data/commit/main", content=body, headers={"Authorization": "Bearer t"}
    )
    assert response.status_code == 400
    assert not (hub.storage / "datasets" / "org" / "escape.txt").exists()


def test_downloads_are_served(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("user/dl")
    api.upload_file(path_or_fileobj=b"\x00binary\xff", path_in_repo="sub/blob.bin", repo_id="user/dl")
    cache = tmp_path / "cache"

    path = api.hf_hub_download("user/dl", "sub/blob.bin", cache_dir=cache)
    assert Path(path).read_bytes() == b"\x00binary\xff"
    assert Path(path).parent.parent.name == hub.head("user/dl")  # snapshots/<X-Repo-Commit>/sub/blob.bin

    snapshot = Path(api.snapshot_download("user/dl", cache_dir=tmp_path / "snap"))
    assert (snapshot / "sub" / "blob.bin").read_bytes() == b"\x00binary\xff"
    assert api.file_exists("user/dl", "sub/blob.bin") and not api.file_exists("user/dl", "nope.txt")
    assert hub.unhandled == []


def test_push_to_hub_then_from_pretrained(hub_clients: LocalHub) -> None:
    hub = hub_clients
    model = _tiny_bert()

    commit = model.push_to_hub("user/tiny-bert", commit_message="tiny bert")

    stored = hub.files("user/tiny-bert")
    assert {"config.json", "model.safetensors"} <= set(stored)
    assert json.loads(stored["config.json"])["hidden_size"] == 32
    _assert_same_weights(model.state_dict(), load_safetensors(stored["model.safetensors"]))
    assert commit.oid == hub.head("user/tiny-bert")
    assert [c.summary for c in hub.commits] == ["tiny bert"]
    assert hub.unhandled == []

    # A second push finds the README (model card) on the hub and nothing changed: no new commit, like on the Hub.
    assert model.push_to_hub("user/tiny-bert").oid == commit.oid
    assert len(hub.commits) == 1

    reloaded = BertModel.from_pretrained("user/tiny-bert")
    _assert_same_weights(model.state_dict(), reloaded.state_dict())
    assert _downloaded(hub, "user/tiny-bert") >= {"config.json", "model.safetensors"}
    assert hub.unhandled == []


def test_processor_push_to_hub_then_from_pretrained(hub_clients: LocalHub, tmp_path: Path) -> None:
    from transformers import AutoProcessor, BertTokenizer, BlipImageProcessor, BlipProcessor

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat"]) + "\n")
    processor = BlipProcessor(BlipImageProcessor(image_size={"height": 32, "width": 32}), BertTokenizer(str(vocab)))

    processor.push_to_hub("user/tiny-processor")

    stored = hub_clients.files("user/tiny-processor")
    assert {"processor_config.json", "tokenizer_config.json"} <= set(stored)
    reloaded = AutoProcessor.from_pretrained("user/tiny-processor")
    assert isinstance(reloaded, BlipProcessor)
    text = "a photo of a cat"
    assert reloaded.tokenizer(text).input_ids == processor.tokenizer(text).input_ids
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert hub_clients.unhandled == []


def test_from_pretrained_in_subprocess_via_hf_endpoint(hub: LocalHub, api: HfApi, tmp_path: Path) -> None:
    model = _tiny_bert()
    model.save_pretrained(tmp_path / "saved")
    api.create_repo("user/tiny-bert")
    api.upload_folder(repo_id="user/tiny-bert", folder_path=tmp_path / "saved")

    out = tmp_path / "reloaded.safetensors"
    script = textwrap.dedent(
        f"""
        from safetensors.torch import save_file
        from transformers import BertModel
        model = BertModel.from_pretrained("user/tiny-bert")
        save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, {str(out)!r})
        """
    )
    env = {**os.environ, **client_env(hub, tmp_path / "subprocess-hf-home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    _assert_same_weights(model.state_dict(), load_file(out))
    assert _downloaded(hub, "user/tiny-bert") >= {"config.json", "model.safetensors"}
    assert hub.unhandled == []
