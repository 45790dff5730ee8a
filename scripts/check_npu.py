#!/usr/bin/env python
"""Check this machine for Rebellions NPUs: toolchain, devices (rebel, rbln-stat), CUDA, store, remotes.

Same report as ``rbln-eval doctor``.

Usage::

    python scripts/check_npu.py            # a readable report
    python scripts/check_npu.py --json     # the same as JSON
"""

from __future__ import annotations

import sys

from rbln_eval.execution.doctor import main

if __name__ == "__main__":
    sys.exit(main())
