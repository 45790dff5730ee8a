"""The local store of content-addressed bundles: layout, manifests, atomic publishing, references, gc."""

from rbln_eval.store.store import (
    BUILD_LOG_NAME,
    MANIFEST_NAME,
    BuildContext,
    BuildResult,
    Bundle,
    Manifest,
    Store,
    default_store_path,
)

__all__ = [
    "BUILD_LOG_NAME", "MANIFEST_NAME", "BuildContext", "BuildResult", "Bundle", "Manifest", "Store", "default_store_path",
]
