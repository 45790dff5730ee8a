"""What every remote is: the protocol, the handle of a remote bundle, the errors and the index format."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from rbln_eval.util.constants import MIN_PREFIX
from rbln_eval.errors import CorruptBundleError
from rbln_eval.store.refs import match_reference
from rbln_eval.store import Bundle, Manifest, Store
from rbln_eval.errors import BundleRefusedError, RemoteError

INDEX_SCHEMA = 1


@dataclass(frozen=True)
class RemoteBundle:
    """A bundle a remote holds, as its index describes it."""

    remote: str
    digest: str
    revision: str
    location: str
    manifest_sha256: str | None = None
    commit: str | None = None
    size: int | None = None
    alias: str | None = None


class Remote(Protocol):
    """A place bundles are shared through: an HF Hub repo or a directory."""

    name: str
    kind: str

    @property
    def location(self) -> str: ...

    def find(self, digest: str) -> RemoteBundle | None:
        """The remote's bundle of ``digest``, or ``None``; reads the index, never lists every file."""

    def resolve(self, ref: str) -> RemoteBundle | None:
        """A bundle by full digest, unique digest prefix or alias (from the index)."""

    def fetch(self, found: RemoteBundle, store: Store) -> Bundle:
        """Download, verify against the manifest and publish into ``store``; refuse anything that does not match."""

    def push(self, bundle: Bundle) -> tuple[RemoteBundle, bool]:
        """Publish ``bundle`` (immutable per digest); returns it and whether it was uploaded now."""


# --------------------------------------------------------------------------------------------------
# Manifests and the index
# --------------------------------------------------------------------------------------------------


def parse_remote_manifest(text: bytes | str, where: str, expected_digest: str | None = None) -> Manifest:
    """Parse a manifest read from a remote; anything malformed or unsafe is refused with one line."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BundleRefusedError(f"refused {where}: the manifest is not JSON ({exc}); nothing was stored") from None
    try:
        manifest = Manifest.from_json(data, where)
    except CorruptBundleError as exc:
        raise BundleRefusedError(f"refused {exc.what}; nothing was stored") from None
    if expected_digest is not None and manifest.digest != expected_digest:
        raise BundleRefusedError(
            f"refused {where}: it holds bundle {manifest.digest[:12]}, not {expected_digest[:12]}; nothing was stored"
        )
    return manifest


def check_listed_manifest(text: bytes, found: RemoteBundle, where: str) -> Manifest:
    """The manifest of a bundle a remote's index lists: it must hash as the index says and be that bundle's."""
    if found.manifest_sha256 and sha256_text(text) != found.manifest_sha256:
        raise BundleRefusedError(f"refused {where}: its manifest does not match the index; nothing was stored")
    return parse_remote_manifest(text, where, found.digest)


def sha256_text(text: bytes | str) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def index_entry(manifest: Manifest, manifest_text: str, revision: str, commit: str | None = None) -> dict[str, Any]:
    """One index record: where the bundle is, what its manifest hashes to, and its key fields."""
    entry: dict[str, Any] = {
        "revision": revision,
        "manifest_sha256": sha256_text(manifest_text),
        "key": manifest.key.fields(),
        "size": manifest.total_size,
        "files": len(manifest.files),
        "created": manifest.created,
        "model": manifest.info.get("model"),
        "alias": manifest.info.get("alias"),
    }
    if commit is not None:
        entry["commit"] = commit
    return entry


def empty_index() -> dict[str, Any]:
    return {"schema": INDEX_SCHEMA, "bundles": {}}


def parse_index(text: bytes | str | None, where: str) -> dict[str, Any]:
    if text is None:
        return empty_index()
    try:
        data = json.loads(text)
    except ValueError:
        raise RemoteError(f"the index of {where} is not JSON: fix or delete it") from None
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA or not isinstance(data.get("bundles"), dict):
        raise RemoteError(f"the index of {where} has an unsupported format (schema {data.get('schema')!r})")
    return data


def dump_index(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


def match_index(
    index: dict[str, Any], ref: str, where: str, make: Callable[[str, dict[str, Any]], RemoteBundle]
) -> RemoteBundle | None:
    """Find ``ref`` (full digest, unique prefix of at least 4 characters, or alias) in an index."""
    bundles = {d: e for d, e in index.get("bundles", {}).items() if isinstance(e, dict)}
    ref = ref.strip()
    if len(ref) < MIN_PREFIX and not any(e.get("alias") == ref for e in bundles.values()):
        return None  # too short to be a prefix, and no alias: another remote may know it
    digest = match_reference(ref, bundles, lambda alias: sorted(d for d, e in bundles.items() if e.get("alias") == alias), f" on {where}")
    return None if digest is None else make(digest, bundles[digest])
