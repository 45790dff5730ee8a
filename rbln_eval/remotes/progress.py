"""Byte progress bars for push and pull (rich, on stderr, shown on a terminal only)."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from tqdm import tqdm

Advance = Callable[[int], None]
_CHUNK = 8 * 1024 * 1024


@contextmanager
def transfer(label: str, total: int) -> Iterator[Advance]:
    """A bar over ``total`` bytes; yields the function that advances it."""
    console = Console(stderr=True)
    with Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def tqdm_into(advance: Advance) -> type[tqdm]:
    """A silent tqdm class for huggingface_hub that feeds its byte counts into ``advance``."""

    class _Forward(tqdm):  # type: ignore[misc]
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            advance(int(n or 0))
            return super().update(n)

    return _Forward


def copy_file(src: Path, dst: Path, advance: Advance) -> tuple[int, str]:
    """Copy bytes (not links or metadata) from ``src`` to a new file ``dst``; returns (size, sha256)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            advance(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


__all__ = ["Advance", "copy_file", "tqdm_into", "transfer"]
