"""A small local stand-in for the Hugging Face Hub HTTP API, for tests.

`LocalHub` is a threaded stdlib HTTP server bound to 127.0.0.1 (ephemeral port) that answers the
requests the real `huggingface_hub` client (2.x, httpx based) sends for pushing and pulling small
repos, and keeps the files of each repo as plain files on disk::

    <storage>/<namespace>/<name>/<path_in_repo>            (model repos)
    <storage>/datasets/<namespace>/<name>/<path_in_repo>   (dataset repos; "spaces/" for spaces)

Emulated (see `_ROUTES` for the exact list):

* ``GET  /api/whoami-v2``                                    -> a fixed user (``LocalHub.username``)
* ``POST /api/repos/create`` / ``DELETE /api/repos/delete``  -> create (409 + url when it exists) / delete
* ``GET  /api/{type}s/{repo}[/revision/{rev}]``              -> repo info (``sha``, ``siblings``, ...)
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``           -> tree listing (``recursive`` supported)
* ``POST /api/{type}s/{repo}/preupload/{rev}``               -> always ``"regular"`` upload mode, plus the
  remote git oid of files that already exist (the client then skips unchanged files, like on the Hub)
* ``POST /api/{type}s/{repo}/commit/{rev}``                  -> NDJSON commit: ``header``, ``file`` (base64),
  ``deletedFile``, ``deletedFolder``; ``parentCommit`` is checked (412 when stale)
* ``GET|HEAD /[{type}s/]{repo}/resolve/{rev}/{path}``         -> file download with ``X-Repo-Commit``,
  ``ETag`` (git blob sha1) and ``Content-Length``; 404s carry ``X-Error-Code`` like the Hub's
* ``POST /api/validate-yaml``                                -> README front matter must be a YAML mapping

Not emulated: LFS / Xet transfers (every file is a "regular" git blob, so nothing is ever uploaded
outside the commit call - which also keeps `upload_folder`'s Xet pipeline on its regular-file path even
with `hf_xet` installed), branches / tags / pull requests (only ``main`` and the current head sha are
known revisions; ``create_pr`` is rejected), history (only the latest tree is kept), access control
(write calls just require an ``Authorization: Bearer <anything>`` header; private repos stay readable),
pagination, ``paths-info``, range requests, ``.gitattributes`` on repo creation.  Requests to anything
else get a 404 and are recorded in `LocalHub.unhandled`.

Pointing clients at it:

* `HfApi(endpoint=hub.endpoint, token="hf_test")` works directly.
* `huggingface_hub` reads ``HF_ENDPOINT`` (and ``HF_HOME`` & co) at import time, and `transformers` caches one
  shared `HfApi`. In-process, call `patch_clients(hub, monkeypatch, hf_home)`: it patches the
  `huggingface_hub` constants (endpoint, resolve-URL template, caches, offline, telemetry), the default `HfApi`
  behind the module-level functions, and resets `transformers.utils.hub._hf_api`, so that `push_to_hub`,
  `from_pretrained` and `hf_hub_download` talk to the stand-in (token: ``HF_TOKEN``).
* In a subprocess, add `client_env(hub, hf_home)` to the environment (``HF_ENDPOINT``, ``HF_HOME``,
  ``HF_HUB_CACHE``, ``HF_TOKEN``, ...): exactly how a user points the libraries at a Hub mirror.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    import pytest

__all__ = ["DEFAULT_TOKEN", "CommitRecord", "LocalHub", "client_env", "git_blob_sha", "patch_clients"]

DEFAULT_TOKEN = "hf_test"
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_STORAGE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME = r"[\w.\-]+"
_API_REPO = rf"^/api/(?P<type>models|datasets|spaces)/(?P<repo>{_NAME}/{_NAME})"
# (method, path regex, handler method name, needs a Bearer token)
_ROUTES: list[tuple[str, re.Pattern[str], str, bool]] = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "_whoami", True),
    ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml", False),
    ("POST", re.compile(r"^/api/repos/create$"), "_create_repo", True),
    ("DELETE", re.compile(r"^/api/repos/delete$"), "_delete_repo", True),
    ("GET", re.compile(_API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$"), "_repo_info", False),
    ("GET", re.compile(_API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "_tree", False),
    ("POST", re.compile(_API_REPO + r"/preupload/(?P<rev>[^/]+)$"), "_preupload", True),
    ("POST", re.compile(_API_REPO + r"/commit/(?P<rev>[^/]+)$"), "_commit", True),
    (
        "GET",
        re.compile(
            rf"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>{_NAME}/{_NAME})/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
        ),
        "_resolve",
        False,
    ),
]


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob: what the Hub uses as oid / ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class CommitRecord:
    """One commit accepted by the stand-in."""

    repo_id: str
    repo_type: str
    oid: str
    summary: str
    added: list[str]
    deleted: list[str]


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise _HubError(400, f"Invalid JSON body: {e}") from None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


class _HubError(Exception):
    """An error answered the way the Hub does: JSON ``{"error": ...}`` plus ``X-Error-*`` headers."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra

    def response(self) -> _Response:
        # Header values must be one latin-1 line: escape the rest (the JSON body keeps the full message).
        header_message = " ".join(self.message.split()).encode("ascii", "backslashreplace").decode()
        headers = {"X-Error-Message": header_message}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        headers.update(self.extra.pop("headers", {}))
        return _Response.json({"error": self.message, **self.extra}, self.status, headers)


class LocalHub:
    """Threaded local Hub stand-in; use as a context manager (or `start()` / `stop()`).

    Attributes:
        storage: root directory of the repos' files (a temporary directory, removed on `stop()`, if None).
        username: namespace used for repo ids without one, and returned by ``whoami``.
        requests: ``(method, path)`` of every request received (path without query string).
        unhandled: the subset of `requests` that matched no emulated route (answered 404).
        commits: every commit accepted, in order.
    """

    def __init__(self, storage: str | os.PathLike[str] | None = None, *, username: str = "user") -> None:
        self._own_storage = storage is None
        self.storage = Path(tempfile.mkdtemp(prefix="localhub-") if storage is None else storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.username = username
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.commits: list[CommitRecord] = []
        self._heads: dict[Path, str] = {}
        self._private: dict[Path, bool] = {}
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._server is None:
            raise RuntimeError("LocalHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        self.storage.mkdir(parents=True, exist_ok=True)
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="localhub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections, join all threads; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection helpers

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        """Directory holding the files of `repo_id` (it exists iff the repo exists)."""
        if "/" not in repo_id:
            repo_id = f"{self.username}/{repo_id}"
        return self.storage / f"{_STORAGE_PREFIX[repo_type]}{repo_id}"

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        """``{path_in_repo: content}`` of every file currently in the repo."""
        root = self.repo_dir(repo_id, repo_type)
        return {p: (root / p).read_bytes() for p in self._list_files(root)}

    def head(self, repo_id: str, repo_type: str = "model") -> str | None:
        """Current commit sha of the repo's ``main``, or None if the repo does not exist."""
        root = self.repo_dir(repo_id, repo_type)
        with self._lock:
            return self._head(root) if root.is_dir() else None

    # ------------------------------------------------------------------ request dispatch

    def _dispatch(self, request: _Request) -> _Response:
        self.requests.append((request.method, request.path))
        method = "GET" if request.method == "HEAD" else request.method
        try:
            for route_method, pattern, handler_name, needs_auth in _ROUTES:
                match = pattern.match(request.path)
                if match is None or route_method != method:
                    continue
                if needs_auth:
                    _require_bearer(request)
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with self._lock:
                    return getattr(self, handler_name)(request, **args)
            self.unhandled.append((request.method, request.path))
            raise _HubError(404, f"LocalHub does not emulate {request.method} {request.path}")
        except _HubError as e:
            return e.response()
        except Exception as e:  # a bug in the stand-in: answer 500 (the client raises it) and show the traceback
            traceback.print_exc()
            return _HubError(500, f"LocalHub internal error: {e!r}").response()

    # ------------------------------------------------------------------ routes

    def _whoami(self, request: _Request) -> _Response:
        return _Response.json(
            {
                "type": "user",
                "name": self.username,
                "fullname": self.username,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}},
            }
        )

    def _validate_yaml(self, request: _Request) -> _Response:
        """Check that the README front matter (if any) is a YAML mapping; the Hub also checks its schema."""
        import yaml

        content = (request.json() or {}).get("content") or ""
        match = re.match(r"^---\r?\n(.*?)\r?\n---(?:\r?\n|$)", content, re.DOTALL)
        error = None
        if match is not None:
            try:
                if not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                    error = "metadata must be a YAML mapping"
            except yaml.YAMLError as e:
                error = f"invalid YAML: {e}"
        if error is not None:
            return _Response.json({"errors": [{"message": error}], "warnings": []}, 400)
        return _Response.json({"errors": [], "warnings": []})

    def _create_repo(self, request: _Request) -> _Response:
        payload = request.json() or {}
        repo_type = payload.get("type") or "model"
        if repo_type not in _STORAGE_PREFIX or not payload.get("name"):
            raise _HubError(400, f"Invalid repo creation payload: {payload}")
        repo_id = f"{payload.get('organization') or self.username}/{payload['name']}"
        if not re.fullmatch(rf"{_NAME}/{_NAME}", repo_id):
            raise _HubError(400, f"Invalid repo id: {repo_id!r}")
        root = self.repo_dir(repo_id, repo_type)
        url = self._repo_url(repo_id, repo_type)
        if root.is_dir():
            # Same as the Hub: 409, but with the url so that `exist_ok=True` clients can carry on.
            raise _HubError(409, f"You already created this {repo_type} repo", url=url)
        root.mkdir(parents=True)
        self._private[root] = bool(payload.get("private")) or payload.get("visibility") == "private"
        self._heads[root] = _new_sha("create", repo_id, repo_type, time.time_ns())
        return _Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, request: _Request) -> _Response:
        payload = request.json() or {}
        repo_id = f"{payload.get('organization') or self.username}/{payload.get('name')}"
        root = self._existing_repo(payload.get("type") or "model", repo_id)
        shutil.rmtree(root)
        self._heads.pop(root, None)
        self._private.pop(root, None)
        return _Response(200)

    def _repo_info(self, request: _Request, type: str, repo: str, rev: str = "main") -> _Response:
        root = self._existing_repo(_API_TYPES[type], repo)
        sha = self._check_revision(root, rev)
        blobs = _flag(request, "blobs")
        siblings = []
        for path in self._list_files(root):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                data = (root / path).read_bytes()
                sibling.update(size=len(data), blobId=git_blob_sha(data))
            siblings.append(sibling)
        namespace = repo.split("/")[0]
        return _Response.json(
            {
                "id": repo,
                "author": namespace,
                "sha": sha,
                "private": self._private.get(root, False),
                "gated": False,
                "disabled": False,
                "lastModified": _iso(root.stat().st_mtime),
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, request: _Request, type: str, repo: str, rev: str, path: str = "") -> _Response:
        root = self._existing_repo(_API_TYPES[type], repo)
        self._check_revision(root, rev)
        path = path.strip("/")
        base = root / path if path else root
        if not base.is_dir():
            raise _HubError(404, f"{path!r} is not a directory of {repo}", "EntryNotFound")
        recursive = _flag(request, "recursive")
        entries: list[dict[str, Any]] = []
        for child in sorted(base.rglob("*") if recursive else base.iterdir()):
            rel = child.relative_to(root).as_posix()
            if child.is_dir():
                listing = "\n".join(sorted(self._list_files(child)))
                entries.append({"type": "directory", "oid": git_blob_sha(listing.encode()), "path": rel})
            elif not child.name.startswith(".localhub-tmp-"):
                data = child.read_bytes()
                entries.append({"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": rel})
        return _Response.json(entries)

    def _preupload(self, request: _Request, type: str, repo: str, rev: str) -> _Response:
        root = self._existing_repo(_API_TYPES[type], repo)
        self._check_revision(root, rev, writable=True)
        files = (request.json() or {}).get("files")
        if not isinstance(files, list):
            raise _HubError(400, "preupload payload must contain a 'files' list")
        answer = []
        for entry in files:
            path = _clean_path(entry.get("path"))
            target = root / path
            answer.append(
                {
                    "path": entry["path"],
                    "uploadMode": "regular",  # never "lfs": no LFS / Xet transfer is ever needed
                    "shouldIgnore": False,
                    "oid": git_blob_sha(target.read_bytes()) if target.is_file() else None,
                }
            )
        return _Response.json({"files": answer, "commitOid": self._head(root)})

    def _commit(self, request: _Request, type: str, repo: str, rev: str) -> _Response:
        repo_type = _API_TYPES[type]
        root = self._existing_repo(repo_type, repo)
        if _flag(request, "create_pr"):
            raise _HubError(400, "LocalHub does not emulate pull requests (create_pr)")
        head = self._check_revision(root, rev, writable=True)

        header: dict[str, Any] = {}
        staged: dict[str, bytes | None] = {p: b"" for p in self._list_files(root)}  # b"" = unchanged
        added: list[str] = []
        deleted: list[str] = []
        for line in request.body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if not isinstance(value, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise _HubError(400, f"Invalid NDJSON commit line: {line[:200]!r}") from None
            if key == "header":
                header = value
            elif key == "file":
                path = _clean_path(value.get("path"))
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding for {path!r}: {value.get('encoding')!r}")
                try:
                    staged[path] = base64.b64decode(value["content"], validate=True)
                except (binascii.Error, KeyError):
                    raise _HubError(400, f"Invalid base64 content for {path!r}") from None
                added.append(path)
            elif key == "deletedFile":
                path = _clean_path(value.get("path"))
                if staged.get(path, None) is None:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                staged[path] = None
                deleted.append(path)
            elif key == "deletedFolder":
                folder = _clean_path(str(value.get("path") or "").rstrip("/"))
                hits = [p for p, c in staged.items() if c is not None and p.startswith(folder + "/")]
                if not hits:
                    raise _HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for path in hits:
                    staged[path] = None
                deleted.extend(hits)
            else:  # "lfsFile" cannot happen since preupload never answers "lfs"
                raise _HubError(400, f"LocalHub does not emulate commit operations of kind {key!r}")
        if not header.get("summary"):
            raise _HubError(400, "Commit header with a non-empty 'summary' is required")
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            raise _HubError(412, f"Parent commit {parent} is not the head of {rev} ({head})")

        for path, content in staged.items():
            if content is None:
                (root / path).unlink(missing_ok=True)
            elif path in added:
                _atomic_write(root / path, content)
        _prune_empty_dirs(root)
        oid = _new_sha(head, header["summary"], sorted(added), sorted(deleted), time.time_ns())
        self._heads[root] = oid
        self.commits.append(CommitRecord(repo, repo_type, oid, header["summary"], added, deleted))
        return _Response.json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self._repo_url(repo, repo_type)}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    def _resolve(self, request: _Request, repo: str, rev: str, path: str, type: str = "models") -> _Response:
        root = self._existing_repo(_API_TYPES[type], repo)
        sha = self._check_revision(root, rev)
        target = root / _clean_path(path)
        if not target.is_file():
            raise _HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        data = target.read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": sha,
        }
        return _Response(200, data, headers)

    # ------------------------------------------------------------------ internals

    def _repo_url(self, repo_id: str, repo_type: str) -> str:
        return f"{self.endpoint}/{_STORAGE_PREFIX[repo_type]}{repo_id}"

    def _existing_repo(self, repo_type: str, repo_id: str) -> Path:
        root = self.repo_dir(repo_id, repo_type)
        if not root.is_dir():
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return root

    def _head(self, root: Path) -> str:
        if root not in self._heads:  # a repo seeded directly on disk: derive a stable sha from its content
            listing = [(p, git_blob_sha((root / p).read_bytes())) for p in self._list_files(root)]
            self._heads[root] = _new_sha("seeded", listing)
        return self._heads[root]

    def _check_revision(self, root: Path, rev: str, writable: bool = False) -> str:
        head = self._head(root)
        if rev == "main" or (not writable and rev == head):
            return head
        raise _HubError(404, f"Invalid rev id: {rev} (LocalHub only knows 'main')", "RevisionNotFound")

    @staticmethod
    def _list_files(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        return sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".localhub-tmp-")
        )


# ---------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: LocalHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on idle keep-alive connections (the client pools them)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response has a Content-Length
    timeout = 30  # seconds an idle keep-alive connection is kept
    server: _Server

    def _handle(self) -> None:
        url = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
        )
        response = self.server.hub._dispatch(request)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet; see LocalHub.requests
        pass


# ---------------------------------------------------------------------- helpers


def _require_bearer(request: _Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HubError(401, "LocalHub requires an 'Authorization: Bearer <token>' header for this call")


def _flag(request: _Request, name: str) -> bool:
    return request.query.get(name, ["false"])[-1].lower() in ("1", "true")


def _clean_path(path: Any) -> str:
    """Validate a path in repo (relative, no '..', no '.git'), like the Hub does."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".", ".git") for part in parts) or path.endswith("/"):
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return "/".join(parts)


def _new_sha(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"  # the Hub's format


def _atomic_write(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".localhub-tmp-{target.name}")
    tmp.write_bytes(content)
    os.replace(tmp, target)


def _prune_empty_dirs(root: Path) -> None:
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()


# ---------------------------------------------------------------------- pointing clients at a LocalHub


def client_env(hub: LocalHub, hf_home: str | os.PathLike[str], token: str = DEFAULT_TOKEN) -> dict[str, str]:
    """Environment for a *subprocess* whose `huggingface_hub` / `transformers` should use `hub`.

    ``HF_ENDPOINT`` is read when `huggingface_hub` is imported, hence a fresh process. `hf_home` keeps the
    download cache (``<hf_home>/hub``) and hf_xet's files (``<hf_home>/xet``) out of the user's home.
    """
    home = Path(hf_home)
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": os.fspath(home),
        "HF_HUB_CACHE": os.fspath(home / "hub"),
        "HF_XET_CACHE": os.fspath(home / "xet"),
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def patch_clients(
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    hf_home: str | os.PathLike[str],
    token: str = DEFAULT_TOKEN,
    disable_xet: bool = False,
) -> None:
    """Point the in-process `huggingface_hub` (and `transformers`, if installed) at `hub`.

    Everything is undone by `monkeypatch` at the end of the test. Sets the `client_env` variables too (read
    at call time: ``HF_TOKEN``; and inherited by subprocesses), and patches what was computed from them at
    import time: the endpoint, the resolve-URL template, the hub cache dir, offline / telemetry flags, the
    default `HfApi` behind ``huggingface_hub.create_repo`` & co, and transformers' shared `HfApi`.
    Not redirected in-process: other paths derived from ``HF_HOME`` at import (e.g. the token file).
    ``disable_xet=True`` acts like ``HF_HUB_DISABLE_XET=1`` (legacy single-commit upload path); not needed,
    since the stand-in only answers "regular" uploads.
    """
    from huggingface_hub import constants, hf_api

    env = client_env(hub, hf_home, token)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_XET_CACHE", env["HF_XET_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    if disable_xet:
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # The default HfApi behind `huggingface_hub.create_repo`, `upload_folder`, ... captured the endpoint at import.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    # transformers shares one lazily-built HfApi, created with the endpoint current at its first use: reset it
    # (imported here, ~1 s without torch, so that a later import cannot build one that outlives the test).
    if importlib.util.find_spec("transformers") is not None:
        transformers_hub = importlib.import_module("transformers.utils.hub")
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
