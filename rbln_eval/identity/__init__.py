"""What a bundle is: the pinned model source, the normalized compile config, the toolchain, the target, the key."""

from rbln_eval.identity.config import TP_KEY, normalize_compile_config
from rbln_eval.identity.key import BundleKey, FieldDiff, diff_keys
from rbln_eval.identity.source import ModelSource, local_model_digest, resolve_source
from rbln_eval.identity.toolchain import TOOLCHAIN_PACKAGES, package_version, toolchain_versions

__all__ = [
    "TOOLCHAIN_PACKAGES", "TP_KEY", "BundleKey", "FieldDiff", "ModelSource", "diff_keys", "local_model_digest",
    "normalize_compile_config", "package_version", "resolve_source", "toolchain_versions",
]
