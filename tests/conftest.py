"""Shared set-up: the simulated NPU, an isolated hash cache for every test, store helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: one thread per process is faster than two fighting over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray clusters of the tests live on the loopback address only (read when ray is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import rbln_eval.sim as sim  # noqa: E402

# Every test runs on the simulated NPU (and so do the CLI processes they start: activation sets
# RBLN_EVAL_SIMULATE for children). With a real rebel SDK installed the simulator refuses to shadow it.
sim.activate()


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBLN_EVAL_CACHE_DIR", str(tmp_path_factory.mktemp("rbln-eval-cache")))
    monkeypatch.delenv("RBLN_EVAL_STORE", raising=False)


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove a command changed nothing)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
