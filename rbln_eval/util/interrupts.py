"""Reliable Ctrl-C.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT is handled; if that is a
finalizer (a ``__del__`` run by the garbage collector, e.g. while transformers imports its model configs),
the exception is printed as "Exception ignored" and dropped, and the command goes on as if nothing
happened. :func:`install` re-delivers such a swallowed interrupt a moment later, outside the finalizer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

REDELIVER_AFTER = 0.02
_installed = False


def _redeliver() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def install() -> None:
    """Make a KeyboardInterrupt that a finalizer swallowed happen again in the main thread (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            timer = threading.Timer(REDELIVER_AFTER, _redeliver)
            timer.daemon = True
            timer.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
