"""Imported once by the data-parallel workers' fork server, so that each worker starts without re-importing.

Loading a bundle pulls in torch, transformers (its generation and auto-class modules, and what they import),
optimum.rbln and lm_eval: several seconds per process. A worker forked from a server that holds them starts
at once. Nothing here may fail the server: a module that does not import is simply left to the worker.
"""

from __future__ import annotations

import importlib

MODULES = (
    "torch",
    "transformers.generation.utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "rbln_eval.parallel",  # with rbln_eval: the simulator when RBLN_EVAL_SIMULATE asks for it, then lm_eval
    "rbln_eval.loader",
    "optimum.rbln",
)

for _name in MODULES:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - the worker imports it again and reports the error itself
        pass
