"""Hashing: canonical JSON and its sha256, and file hashing with a small persistent cache keyed by path, size and modification time.

A 16 GB checkpoint should be hashed once, not on every run: :class:`HashCache` remembers each file's
digest under ``(absolute path, size, mtime_ns)`` in a JSON file in the user cache directory
(``$RBLN_EVAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/rbln-eval``, else ``~/.cache/rbln-eval``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from rbln_eval.util.atomic import write_atomic
from rbln_eval.util.constants import CACHE_DIR_ENV

CHUNK_SIZE = 8 * 1024 * 1024
_MAX_CACHE_ENTRIES = 20_000


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and fixed separators: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_json(value: Any) -> str:
    """sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Directory for rbln-eval's per-user caches."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rbln-eval"


class HashCache:
    """Persistent map from ``(path, size, mtime_ns)`` to sha256; stale entries never match."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "file-hashes.json"
        self._entries: dict[str, str] | None = None
        self._dirty: dict[str, str] = {}

    @staticmethod
    def _entry_key(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    def _load(self) -> dict[str, str]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text())
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def sha256(self, path: Path) -> str:
        """sha256 of ``path``, from the cache when its size and mtime are unchanged."""
        key = self._entry_key(path)
        cached = self._load().get(key)
        if cached is not None:
            return cached
        value = sha256_file(path)
        self._load()[key] = value
        self._dirty[key] = value
        return value

    def flush(self) -> None:
        """Merge new entries into the cache file (best effort: a read-only cache is not an error)."""
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=30):
                try:
                    on_disk = json.loads(self.path.read_text())
                    if not isinstance(on_disk, dict):
                        on_disk = {}
                except (OSError, ValueError):
                    on_disk = {}
                on_disk.update(self._dirty)
                if len(on_disk) > _MAX_CACHE_ENTRIES:
                    on_disk = dict(list(on_disk.items())[-_MAX_CACHE_ENTRIES:])
                write_atomic(self.path, json.dumps(on_disk))
            self._dirty.clear()
        except OSError:
            pass
