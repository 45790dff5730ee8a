"""A bundle that answers in one forward pass (a classifier, an extractive QA model) over its executor.

:class:`BundleClassifier` is to dataset tasks what :class:`~rbln_eval.core.lm.BundleLM` is to lm_eval's tasks:
it sends examples (their prepared inputs) to the executor's replicas as
:class:`~rbln_eval.core.work.ForwardWork` items, packed into the compiled batch rows (one replica here, or
data-parallel workers), and accounts the time and device work they took.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from rbln_eval.core.lm import provenance
from rbln_eval.core.work import Executor, ForwardWork, Media
from rbln_eval.errors import ConfigError


class BundleClassifier:
    """Forward passes of a bundle's model over its executor; ``with`` closes the replicas."""

    #: Not an lm_eval model: its bundles are scored on dataset tasks (``rbln-eval run``).
    MODEL_NAME: str | None = None
    MODEL_ARGS: tuple[str, ...] = ()

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> None:
        if args:
            raise ConfigError(f"--model_args {', '.join(sorted(args))}: a dataset task's model takes none")

    def __init__(self, executor: Executor, compiled_now: bool = False) -> None:
        self.executor = executor
        self.bundle = executor.bundle
        self.family = executor.family
        self.shape = executor.shape
        self.compiled_now = compiled_now
        self.seconds = 0.0
        self.examples = 0

    @property
    def batch_size(self) -> int:
        return self.shape.batch_size

    @property
    def data_parallel(self) -> int:
        return len(self.executor.groups or [None])

    def forward(self, examples: Sequence[Media], on_done: Callable[[int], None] | None = None) -> list[Any]:
        """The model's outputs for each example, in order (each a tensor or a tuple of tensors)."""
        if not examples:
            return []
        started = time.monotonic()
        items = [ForwardWork(media) for media in examples]
        try:
            return self.executor.run(items, [1] * len(items), [1] * len(items), on_done or (lambda _: None))
        finally:
            self.seconds += time.monotonic() - started
            self.examples += len(items)

    def info(self) -> dict[str, Any]:
        """What results record in ``config.rbln``."""
        return provenance(self.executor, self.compiled_now, {"forward": self.seconds}, self.examples)

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> "BundleClassifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
