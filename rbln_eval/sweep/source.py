"""Where an evaluating node gets a bundle: its own store, else the sweep's remote (verified on pull)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Bundle, Store


@dataclass(frozen=True)
class BundleSource:
    """One bundle as a node finds it: in the store at ``store`` (a path on that node), else on ``remote``."""

    digest: str
    store: str
    remote: Any = None  # a RemoteSpec

    def fetch(self) -> Bundle:
        store = Store(self.store)
        bundle = store.lookup(self.digest)
        if bundle is None and self.remote is not None:
            from rbln_eval.remotes import open_remote
            from rbln_eval.remotes.pull import pull_digest

            pulled = pull_digest(self.digest, store, [open_remote(self.remote)])
            bundle = pulled.bundle if pulled is not None else None
        if bundle is None:
            where = f" nor on remote {self.remote.name}" if self.remote is not None else ""
            raise RblnEvalError(
                f"bundle {self.digest[:12]} is neither in this node's store {store.root}{where}",
                "put the store on a filesystem every node mounts, or give the sweep a remote to share the bundles through",
            )
        return bundle
