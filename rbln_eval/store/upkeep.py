"""What the store keeps about failed builds, and what it cleans up: failure records, removal, garbage collection."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import Timeout

from rbln_eval.errors import RblnEvalError
from rbln_eval.identity import BundleKey
from rbln_eval.store.aliases import ref_filename
from rbln_eval.store.bundle import BUILD_LOG_NAME, Bundle, VerifyProblem, check_files
from rbln_eval.util.atomic import write_atomic
from rbln_eval.util.constants import DIGEST_RE
from rbln_eval.util.units import utc_now

logger = logging.getLogger(__name__)

#: Lines of a failed build's log kept in its failure record.
LOG_TAIL_LINES = 200
#: Age after which a temporary directory whose owner cannot be told is abandoned.
STALE_TMP_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class GcItem:
    kind: str  # "tmp" | "failure" | "ref" | "bundle"
    path: Path


class Upkeep:
    """Failure records, removal and garbage collection (a mixin of :class:`~rbln_eval.store.store.Store`)."""

    def record_failure(self, key: BundleKey, tmp: Path, exc: BaseException) -> None:
        try:
            lines = (tmp / BUILD_LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        record = {
            "digest": key.digest,
            "key": key.fields(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exception(exc),
            "time": utc_now(),
            "log_tail": lines[-LOG_TAIL_LINES:],
        }
        try:
            self.failures_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.failures_dir / f"{key.digest}.json", json.dumps(record, indent=2))
        except OSError as write_error:
            logger.warning("could not record the failed build of %s: %s", key.digest[:12], write_error)

    def failure(self, digest: str) -> dict[str, Any] | None:
        path = self.failures_dir / f"{digest}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"error": "unreadable failure record"}

    def clear_failure(self, digest: str) -> None:
        (self.failures_dir / f"{digest}.json").unlink(missing_ok=True)

    def failures(self) -> dict[str, dict[str, Any]]:
        if not self.failures_dir.is_dir():
            return {}
        return {p.stem: self.failure(p.stem) or {} for p in sorted(self.failures_dir.glob("*.json"))}

    def verify(self, bundle: Bundle, on_bytes: Callable[[int], None] | None = None) -> list[VerifyProblem]:
        """Re-hash every file; list missing, resized, altered, unexpected and non-regular files."""
        return check_files(bundle.path, bundle.manifest, on_bytes)

    def remove(self, bundle: Bundle) -> list[str]:
        """Delete a stored bundle and the aliases that point to it; returns the removed aliases."""
        if bundle.path.parent != self.bundles_dir:
            raise RblnEvalError(f"{bundle.path} is not in store {self.root}; nothing removed")
        self.ensure_writable()
        removed = [alias for alias, digest in self.refs().items() if digest == bundle.digest]
        for alias in removed:
            self.remove_ref(alias)
        self._discard_dir(bundle.path)
        return removed

    def _discard_dir(self, path: Path) -> None:
        """Make ``path`` disappear atomically (rename into tmp), then delete it."""
        graveyard = self.tmp_dir / f"deleted.{path.name}.{secrets.token_hex(4)}"
        os.rename(path, graveyard)
        shutil.rmtree(graveyard, ignore_errors=True)

    def gc(self, *, unreferenced: bool = False, dry_run: bool = False) -> list[GcItem]:
        """Remove abandoned temporaries, failure records, dangling aliases and (optionally) unaliased bundles."""
        if not self.root.is_dir():
            return []
        if not dry_run:
            self.ensure_writable()
        items: list[GcItem] = []
        if self.tmp_dir.is_dir():
            for path in sorted(self.tmp_dir.iterdir()):
                if self._tmp_is_abandoned(path):
                    items.append(GcItem("tmp", path))
        items += [GcItem("failure", self.failures_dir / f"{d}.json") for d in self.failures()]
        live = set(self.digests())
        refs = self.refs()
        items += [GcItem("ref", self.refs_dir / ref_filename(a)) for a, d in refs.items() if d not in live]
        if unreferenced:
            referenced = set(refs.values())
            items += [GcItem("bundle", self.bundle_path(d)) for d in sorted(live - referenced)]
        if not dry_run:
            for item in items:
                if item.kind == "bundle":
                    self._discard_dir(item.path)
                elif item.path.is_dir():
                    shutil.rmtree(item.path, ignore_errors=True)
                else:
                    item.path.unlink(missing_ok=True)
        return items

    def _tmp_is_abandoned(self, path: Path) -> bool:
        if path.name.startswith(".probe."):
            return True
        if path.name.startswith("deleted."):
            return True
        digest = path.name.split(".", 1)[0]
        if not DIGEST_RE.match(digest):
            return time.time() - path.stat().st_mtime > STALE_TMP_SECONDS
        lock = self.lock(digest)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # its builder holds the lock: still running
        lock.release()
        return True

    def size_bytes(self) -> int:
        total = 0
        if self.root.is_dir():
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
        return total
