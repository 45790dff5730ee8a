"""The local store of content-addressed bundles: layout, manifests, atomic publishing, aliases, upkeep."""

from rbln_eval.store.bundle import BUILD_LOG_NAME, MANIFEST_NAME, Bundle, Manifest
from rbln_eval.store.store import BuildContext, BuildResult, Store, default_store_path

__all__ = [
    "BUILD_LOG_NAME", "MANIFEST_NAME", "BuildContext", "BuildResult", "Bundle", "Manifest", "Store", "default_store_path",
]
