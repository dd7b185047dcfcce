"""The command line, round 2 (docs/bad_inputs.md): argument errors before torch is imported, `vlalign push` checking
the Hub and the token before it loads or writes anything, `--check-images` on every verb that reads images, atomic
model folders, and the unknown-word warning of `vlalign retrieve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import huggingface_hub
import pytest
from hub_server import DEFAULT_TOKEN, LocalHub, _HubError, _Response, patch_clients

import vlalign_cli
from vlalign.cli import main
from vlalign.methods import method_names
from vlalign.threads import ENV_VAR

REPO_ID = "user/tiny-pushed"


def run(*args: str, capsys) -> tuple[int, str]:
    """`vlalign ARGS` in this process: (exit code, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, stderr: str, *phrases: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 1, stderr
    assert len(lines) == 1 and "Traceback" not in stderr and lines[0].startswith("vlalign "), stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, stderr)


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
