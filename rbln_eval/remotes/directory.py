"""A directory (an NFS share on a cluster) as a remote.

Layout: the bundle store layout plus an index::

    <dir>/bundles/<digest>/     one bundle directory (optimum-rbln files + rbln-eval-manifest.json)
    <dir>/index.json            digest -> revision ("bundles/<digest>"), manifest sha256, key fields
    <dir>/tmp/, <dir>/locks/    pushes in progress and per-key locks

A push copies the bundle into ``tmp/``, checks every file against the manifest, then renames it into
``bundles/`` if no bundle of that digest is there yet, exactly as the local store publishes builds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from rbln_eval.util.atomic import write_atomic
from rbln_eval.store import MANIFEST_NAME, Bundle, Store
from rbln_eval.errors import BundleRefusedError, RemoteError
from rbln_eval.remotes.base import (
    RemoteBundle,
    check_listed_manifest,
    dump_index,
    index_entry,
    match_index,
    parse_index,
)
from rbln_eval.remotes.progress import copy_file, transfer

INDEX_NAME = "index.json"


class DirectoryRemote:
    """Bundles shared through a directory."""

    kind = "dir"

    def __init__(self, name: str, path: str | os.PathLike[str]) -> None:
        self.name = name
        self.root = Path(path)
        self.store = Store(self.root)

    @property
    def location(self) -> str:
        return str(self.root)

    def _check(self) -> None:
        if not self.root.is_dir():
            raise RemoteError(f"remote {self.name}: {self.root} is not a directory (is the share mounted?)")

    def read_index(self) -> dict[str, Any]:
        try:
            text = (self.root / INDEX_NAME).read_bytes()
        except FileNotFoundError:
            text = None
        except OSError as exc:
            raise RemoteError(f"remote {self.name}: cannot read {self.root / INDEX_NAME} ({exc.strerror})") from None
        return parse_index(text, str(self.root))

    def _make(self, digest: str, entry: dict[str, Any]) -> RemoteBundle:
        revision = f"bundles/{digest}"
        return RemoteBundle(
            remote=self.name, digest=digest, revision=revision, location=str(self.root / revision),
            manifest_sha256=entry.get("manifest_sha256"), size=entry.get("size"), alias=entry.get("alias"),
        )

    def find(self, digest: str) -> RemoteBundle | None:
        self._check()
        if not (self.store.bundle_path(digest) / MANIFEST_NAME).is_file():
            return None
        entry = self.read_index().get("bundles", {}).get(digest)
        return self._make(digest, entry if isinstance(entry, dict) else {})

    def resolve(self, ref: str) -> RemoteBundle | None:
        self._check()
        index = self.read_index()
        for digest in self.store.digests():  # bundles pushed by hand are found too
            index["bundles"].setdefault(digest, {})
        return match_index(index, ref, str(self.root), self._make)

    # pull ---------------------------------------------------------------------------------------
    def fetch(self, found: RemoteBundle, store: Store) -> Bundle:
        source = self.store.bundle_path(found.digest)
        where = str(source)
        try:
            text = (source / MANIFEST_NAME).read_bytes()
        except OSError as exc:
            raise RemoteError(f"remote {self.name}: cannot read {source / MANIFEST_NAME} ({exc.strerror})") from None
        manifest = check_listed_manifest(text, found, where)
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise BundleRefusedError(f"refused {where}: {rel} is not a regular file; nothing was stored")
            if path.is_file() and rel != MANIFEST_NAME and rel not in manifest.files:
                raise BundleRefusedError(f"refused {where}: {rel} is not in the manifest; nothing was stored")

        def fill(tmp: Path) -> None:
            with transfer(f"pull {found.digest[:12]}", manifest.total_size) as advance:
                for name, entry in sorted(manifest.files.items()):
                    try:
                        size, digest = copy_file(source / name, tmp / name, advance)
                    except FileNotFoundError:
                        raise BundleRefusedError(f"refused {where}: {name} is missing; nothing was stored") from None
                    if (size, digest) != (entry.size, entry.sha256):
                        reason = f"size {size} != {entry.size}" if size != entry.size else "sha256 mismatch"
                        raise BundleRefusedError(f"refused {where}: {name}: {reason}; nothing was stored")

        return store.adopt(manifest, fill, manifest_text=text.decode()).bundle

    # push ---------------------------------------------------------------------------------------
    def push(self, bundle: Bundle) -> tuple[RemoteBundle, bool]:
        self._check()
        manifest_text = (bundle.path / MANIFEST_NAME).read_text()

        def fill(tmp: Path) -> None:
            with transfer(f"push {bundle.digest[:12]}", bundle.manifest.total_size) as advance:
                for name in sorted(bundle.manifest.files):
                    copy_file(bundle.path / name, tmp / name, advance)

        try:
            result = self.store.adopt(bundle.manifest, fill, manifest_text=manifest_text)
        except OSError as exc:
            raise RemoteError(f"remote {self.name}: cannot write to {self.root} ({exc.strerror or exc})") from None
        entry = index_entry(bundle.manifest, manifest_text, f"bundles/{bundle.digest}")
        self._update_index(bundle.digest, entry)
        return self._make(bundle.digest, entry), result.built

    def _update_index(self, digest: str, entry: dict[str, Any]) -> None:
        with FileLock(str(self.store.locks_dir / "index.lock")):
            index = self.read_index()
            if index["bundles"].get(digest) == entry:
                return
            index["bundles"][digest] = entry
            write_atomic(self.root / INDEX_NAME, dump_index(index))


__all__ = ["DirectoryRemote", "INDEX_NAME"]
