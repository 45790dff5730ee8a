"""Durable writes: a file or a directory appears whole under its final name, or not at all.

Everything is written under a scratch name beside its target, flushed to stable storage, then renamed;
the rename is the commit point. :func:`publish_dir` renames only if the target does not exist yet.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename inside it) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (and ``root`` itself) to stable storage."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def scratch_path(target: Path) -> Path:
    """A unique hidden name beside ``target`` for writing it."""
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"


def write_atomic(target: Path, data: str | bytes) -> None:
    """Replace ``target`` with ``data`` (text is UTF-8): fsynced, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_path(target)
    try:
        with open(scratch, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(scratch, target)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename the fsynced directory ``tmp`` to ``final`` unless ``final`` exists; True if it was published.

    On POSIX, renaming a directory onto a non-empty directory fails, so two publishers of one name
    cannot both win, whatever any lock says.
    """
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or final.exists():
            return False
        raise
    fsync_dir(final.parent)
    return True
