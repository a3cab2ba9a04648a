"""Small file helpers: atomic writes so an interrupted run never leaves half a file.

A write that fails because of the disk (full, read-only, no permission) is a one-line
``DiskError`` naming the file that was being written (never its temporary name) and the
fix; the file it would have replaced is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipsam_lib.errors import DiskError

_REASONS = {
    errno.ENOSPC: "no space is left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}
# torch.save reports a full disk as RuntimeError("[enforce fail at inline_container.cc...
# PytorchStreamWriter failed writing file ...]"), not as an OSError.
_TORCH_WRITE_FAILURE = ("inline_container", "PytorchStreamWriter failed writing")


def disk_error(path: Path, err: BaseException) -> DiskError | None:
    """The DiskError for a failed write of ``path``, or None if ``err`` is not the disk's."""
    if isinstance(err, OSError) and err.errno in _REASONS:
        reason = _REASONS[err.errno]
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURE):
        reason = "the disk refused the write (most likely it is full)"
    else:
        return None
    return DiskError(
        f"Cannot write {path}: {reason}; free space or fix the permissions there, or point "
        "the profile's cache_dir / results_dir (or --out) at another folder (files already "
        "written are unchanged)."
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (disk_error(path, err) or err) from None
    os.close(fd)
    # mkstemp creates 0600; give the final file the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except (OSError, RuntimeError) as err:
        translated = disk_error(path, err)
        if translated is None:
            raise
        raise translated from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Staging folders beside a dataset root: a download's extraction, a benchmark build, the
# old tree being swapped out. A killed run leaves them; the next run removes them.
STAGING_PATTERNS = (".{name}.extract-*", ".{name}.build-*", ".{name}.old-*")


def remove_stale_staging(root: str | Path, min_age_s: float = 600.0) -> list[str]:
    """Remove the staging folders a killed run left beside ``root``; describe each.

    A folder in which something changed during the last ``min_age_s`` seconds may belong
    to a run still going on (another process sharing the data folder): it is kept.
    """
    import shutil
    import time

    root = Path(root)
    removed: list[str] = []
    if not root.parent.is_dir():
        return removed
    for pattern in STAGING_PATTERNS:
        for stale in root.parent.glob(pattern.format(name=root.name)):
            if not stale.is_dir():
                continue
            files = [p for p in stale.rglob("*") if p.is_file()]
            newest = max([stale.stat().st_mtime, *(p.stat().st_mtime for p in files)])
            if time.time() - newest < min_age_s:
                continue
            size = sum(p.stat().st_size for p in files)
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(f"{stale} ({size / 2**20:.1f} MiB), left by a killed download or "
                           "build")
    return removed


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() \
        else 0


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
