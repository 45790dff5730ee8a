"""Names and defaults used across rbln-eval, and every environment variable it reads.

Each variable is documented in the README's table. The simulator's own variables live in
:mod:`rbln_eval.sim` (it knows nothing of the rest of the package) and are re-exported here.
"""

from __future__ import annotations

import os
import re

from rbln_eval.sim import ENV_SIMULATE as SIMULATE_ENV
from rbln_eval.sim._version import SIM_TARGET_PREFIX

#: The bundle store directory (default ``./artifacts``).
STORE_ENV = "RBLN_EVAL_STORE"
DEFAULT_STORE = "artifacts"
#: rbln-eval's per-user cache directory (file hashes); default ``$XDG_CACHE_HOME/rbln-eval``.
CACHE_DIR_ENV = "RBLN_EVAL_CACHE_DIR"
#: The NPU to compile for when none is given and none is installed (e.g. ``RBLN-CA25``).
NPU_ENV = "RBLN_EVAL_NPU"

#: The NPUs this process may use (``4,5,6,7``), as the SDK reads it; Ray sets it for each task and actor.
RBLN_DEVICES_ENV = "RBLN_DEVICES"

#: A bundle digest: sha256 in lower-case hex.
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
#: A git commit sha (a Hub revision pinned to a commit).
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
#: A digest prefix.
HEX_RE = re.compile(r"^[0-9a-f]+$")
#: The shortest digest prefix a reference may use.
MIN_PREFIX = 4

__all__ = [
    "CACHE_DIR_ENV",
    "COMMIT_RE",
    "DEFAULT_STORE",
    "DIGEST_RE",
    "HEX_RE",
    "MIN_PREFIX",
    "NPU_ENV",
    "RBLN_DEVICES_ENV",
    "SIMULATE_ENV",
    "SIM_TARGET_PREFIX",
    "STORE_ENV",
    "env_value",
]


def env_value(name: str) -> str | None:
    """The stripped value of environment variable ``name``, ``None`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None
