"""File-system helpers every writer of model folders shares (conversion, publishing, the CLI, the trainer)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

#: name of the lock file `folder_lock` keeps in a folder while a run writes into it
LOCK_NAME = ".vlalign.lock"


def normalize_permissions(folder: str | Path) -> None:
    """Give everything under `folder` the permissions a new file or folder gets (0644 / 0755 under the usual umask
    022). Some writers (safetensors, via a temporary file) leave weights readable by their owner only (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


class FolderLockedError(RuntimeError):
    """Another process holds a folder's lock (see [`folder_lock`])."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) while the block runs: `fcntl.flock` on
    `<folder>/.vlalign.lock`, which holds the holder's pid and host. The operating system releases the lock when
    the holder exits or dies, so a killed run never leaves the folder locked. A second holder, in this process or
    another, gets a `FolderLockedError` naming the folder, the holder and the fix. The lock file is removed on
    release. Yields the lock file's path."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (held open until the block ends)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderLockedError(
                f"{folder} is in use by another run ({holder}); two runs writing into one output folder overwrite "
                "each other's checkpoints. Wait for that run to finish or stop it, or choose another output folder."
            ) from None
        if _same_file(handle, path):
            break
        handle.close()  # the holder before us removed the file after we opened it: lock the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock, so nobody else holds this file
        handle.close()


def _same_file(handle, path: Path) -> bool:
    """Whether the open `handle` is still the file at `path` (a releasing holder may have removed it)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


class FolderWriteError(OSError):
    """A folder could not be written (disk full, read-only disk, no permission, ...); see [`atomic_folder`].
    `errno` is the system's error number, `strerror` (and `str()`) the whole message, `filename` the folder."""

    def __str__(self) -> str:
        return self.strerror


#: errors of writing that the user fixes on their side, and how
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk, or write to a folder on another disk",
    errno.EDQUOT: "free space within your disk quota, or write to a folder on another disk",
    errno.EFBIG: "write to a file system that allows larger files",
    errno.EROFS: "write to a folder on a disk that is not read-only",
    errno.EACCES: "write to a folder you may write to, or fix its permissions",
    errno.EPERM: "write to a folder you may write to, or fix its permissions",
    errno.EIO: "check the disk (a hardware or network file-system error), then try again",
}


@contextlib.contextmanager
def atomic_folder(target: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Write a folder completely or not at all.

    Yields a new, empty sibling of `target` (`.<name>.tmp-…`) to write into. When the block succeeds, every file
    is flushed to disk (fsync) and the new folder is renamed to `target`; a previous `target` stays in place until
    then, and is removed afterwards. When the block or the swap fails, the temporary folder is removed and `target`
    is left as it was, so a full disk never leaves a folder without its weights. Write errors (`_WRITE_FIXES`: disk
    full, over quota, read-only, no permission, I/O error; safetensors reports them as `SafetensorError`) are
    raised as a [`FolderWriteError`] naming `target`, the system's reason and the fix; other errors as they are.

    Args:
        target: the folder to write; its parent is created.
        keep_existing: start from a copy of `target`'s files, for writers that update a folder (files of the same
            name are replaced, the others stay).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is an existing file, not a folder; pass a folder path (new or existing).")
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        if keep_existing and target.is_dir():
            shutil.copytree(target, staging, dirs_exist_ok=True)
        yield staging
        _fsync_tree(staging)
        _replace_folder(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        code = _write_errno(error)
        if code not in _WRITE_FIXES:
            raise
        previous = "the previous folder is kept as it was" if target.is_dir() else "no partial folder was left"
        message = (
            f"Could not write {target}: {os.strerror(code)} ({errno.errorcode[code]}); {_WRITE_FIXES[code]}. "
            f"Nothing was changed: {previous}."
        )
        raise FolderWriteError(code, message, str(target)) from error


def _write_errno(error: BaseException) -> int | None:
    """The errno of a failed write: an `OSError`'s, or the OS error code a `SafetensorError` quotes."""
    if isinstance(error, OSError):
        return error.errno
    if type(error).__name__ == "SafetensorError" and (match := re.search(r"code: (\d+)", str(error))):
        return int(match.group(1))
    return None


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders' entries, to disk."""
    for path in [*folder.rglob("*"), folder]:
        if not path.is_symlink():
            _fsync(path)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` is moved aside first and removed once `new` is in place (moved
    back if the rename fails)."""
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    had_target = target.is_dir()
    if had_target:
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if had_target:
            os.rename(old, target)
        raise
    _fsync(target.parent)  # the rename itself
    if had_target:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "FolderLockedError",
    "FolderWriteError",
    "LOCK_NAME",
    "atomic_folder",
    "folder_lock",
    "normalize_permissions",
]
