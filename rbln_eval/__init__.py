"""rbln-eval: evaluate language models on Rebellions NPUs, compiling each model once."""

__version__ = "0.1.0"

# RBLN_EVAL_SIMULATE=1 serves the `rebel` SDK from the CPU simulator; it must be in place before
# anything imports optimum.rbln. Without the variable nothing happens and a real SDK is used.
from rbln_eval import sim as _sim  # noqa: E402

_sim.activate_from_env()
