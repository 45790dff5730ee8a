"""lm_eval's logging, kept to what a user of rbln-eval acts on (the CLI and every sweep cell call this)."""

from __future__ import annotations

import logging

#: lm_eval's advice to its own CLI's users, logged as a warning for every task built (the demo tasks among
#: them); shown only when lm_eval logs at INFO or DEBUG.
LM_EVAL_ADVICE = ("Custom kwargs can be passed to `--metadata`",)


class LmEvalAdviceFilter(logging.Filter):
    """Drops lm_eval's advice lines unless the ``lm_eval`` logger is at INFO or below."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(advice in record.getMessage() for advice in LM_EVAL_ADVICE):
            return logging.getLogger("lm_eval").getEffectiveLevel() <= logging.INFO
        return True


def quiet_lm_eval(verbosity: str | None = None) -> None:
    """Keep lm_eval's advice lines out of the output unless ``verbosity`` (or lm_eval's own logging level,
    e.g. ``LMEVAL_LOG_LEVEL`` or lm_eval's ``--verbosity``) is INFO or DEBUG. Idempotent."""
    task_logger = logging.getLogger("lm_eval.api.task")
    if not any(isinstance(existing, LmEvalAdviceFilter) for existing in task_logger.filters):
        task_logger.addFilter(LmEvalAdviceFilter())
    if verbosity:
        logging.getLogger("lm_eval").setLevel(verbosity.upper())
