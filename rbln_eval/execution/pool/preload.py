"""Imported once by the local data-parallel workers' fork server, so that each worker starts without re-importing.

Loading a bundle pulls in torch, transformers (its generation and auto-class modules, and what they import),
optimum.rbln and lm_eval: several seconds per process. A worker forked from a server that holds them starts
at once. Nothing here may fail the server: a module that does not import is simply left to the worker.

:func:`warm` imports what scoring a cell imports on first use (``scripts/bench_sweep.py`` times a Ray
worker's warm-up with it, apart from its cells); the fork server and the replicas do not need it.
"""

from __future__ import annotations

import importlib

MODULES = (
    "torch",
    "transformers.generation.utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "rbln_eval.execution.pool.worker",  # with rbln_eval: the simulator when RBLN_EVAL_SIMULATE asks for it, then lm_eval
    "rbln_eval.execution.loader",
    "optimum.rbln",
    "optimum.rbln.transformers.models.auto.modeling_auto",  # what loading a bundle imports (optimum.rbln is lazy)
)

for _name in MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - the worker imports it again and reports the error itself
        pass


def warm() -> None:
    """Import what scoring a cell imports on first use: lm_eval's evaluator, tasks and metrics."""
    for name in ("lm_eval.evaluator", "lm_eval.tasks", "lm_eval.api.metrics", "rbln_eval.evaluation.evaluate", "rbln_eval.sweep"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - imported again, with its error, where it is used
            pass
