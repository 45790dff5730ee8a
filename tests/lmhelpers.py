"""Bundles of the embedded demo models, compiled once per test session on the simulator."""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any

from rbln_eval import demo
from rbln_eval.api import CompileOptions
from rbln_eval.store import Bundle, Store
from rbln_eval.build.workflow import compile_bundle, plan_compile

MODEL_DIRS = {"causal": demo.causal_model_dir(), "seq2seq": demo.seq2seq_model_dir()}
TASKS_DIR = str(demo.tasks_dir())


@functools.lru_cache(maxsize=None)
def demo_bundle(store_root: str, model_class: str, batch_size: int, logits: str = "all") -> Bundle:
    request = plan_compile(str(MODEL_DIRS[model_class]), CompileOptions(batch_size=batch_size, logits=logits))
    return compile_bundle(request, Store(store_root)).bundle


def shared_bundle(tmp_path_factory: Any) -> Bundle:
    """The demo causal bundle (batch 2), compiled once per session into the session's base temp directory."""
    return demo_bundle(str(tmp_path_factory.getbasetemp() / "shared-store"), "causal", 2)


def sample_values(results: dict[str, Any]) -> dict[str, list[Any]]:
    """Per task, every logged sample's raw model responses, in document order."""
    values: dict[str, list[Any]] = {}
    for task, samples in results["samples"].items():
        ordered = sorted(samples, key=lambda s: s["doc_id"])
        values[task] = [[r[0] for r in s["resps"]] for s in ordered]
    return values


def cli_in_process(*args: str) -> tuple[int, str, str]:
    """``rbln-eval ARGS`` in this process, outside any capture: exit status, stdout, stderr. The ``lm_eval`` logger is
    left as it was (lm_eval's ``setup_logging`` gives it a handler and stops it propagating, once per process)."""
    import logging

    from rbln_eval.cli import main

    lm_eval_logger = logging.getLogger("lm_eval")
    handlers, propagate, level = list(lm_eval_logger.handlers), lm_eval_logger.propagate, lm_eval_logger.level
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        lm_eval_logger.handlers[:] = handlers
        lm_eval_logger.propagate, lm_eval_logger.level = propagate, level
    return code, out.getvalue(), err.getvalue()

