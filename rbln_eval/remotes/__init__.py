"""Remotes: share bundles through an HF Hub repo or a directory.

A remote holds bundles by digest plus an index (digest -> where the bundle is, its manifest's sha256 and
key fields), so a bundle is found by key without listing files. Pulls verify every file against the
manifest before the bundle appears in the local store.
"""

from __future__ import annotations

from ..store import Store
from .base import BundleRefusedError, Remote, RemoteBundle, RemoteConfigError, RemoteError
from .config import HF_SCHEME, RemoteSpec, add_spec, get_spec, load_specs, remove_spec, spec_from_location


def open_remote(spec: RemoteSpec) -> Remote:
    """The remote a configuration entry describes."""
    if spec.kind == "hf":
        from .hub import HubRemote

        return HubRemote(spec.name, spec.repo or "", private=spec.private)
    from .directory import DirectoryRemote

    return DirectoryRemote(spec.name, spec.path or "")


def configured_remotes(store: Store, only: str | None = None) -> list[Remote]:
    """The store's remotes in order (just ``only`` if given)."""
    if only is not None:
        return [open_remote(get_spec(store, only))]
    return [open_remote(spec) for spec in load_specs(store)]


__all__ = [
    "HF_SCHEME",
    "BundleRefusedError",
    "Remote",
    "RemoteBundle",
    "RemoteConfigError",
    "RemoteError",
    "RemoteSpec",
    "add_spec",
    "configured_remotes",
    "get_spec",
    "load_specs",
    "open_remote",
    "remove_spec",
    "spec_from_location",
]
