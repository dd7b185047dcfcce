"""File-system helpers every writer of model folders shares (conversion, publishing, the CLI)."""

from __future__ import annotations

import os
from pathlib import Path


def normalize_permissions(folder: str | Path) -> None:
    """Give everything under `folder` the permissions a new file or folder gets (0644 / 0755 under the usual umask
    022). Some writers (safetensors, via a temporary file) leave weights readable by their owner only (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


__all__ = ["normalize_permissions"]
