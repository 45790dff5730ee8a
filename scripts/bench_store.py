"""Time bundle lookup for a 1 GB bundle and a 1 MB one: lookup must not grow with bundle bytes.

Usage: python scripts/bench_store.py [--repeat 200] [--big-mb 1024]

Builds two bundles in a temporary store (the large one as a sparse file), then times ``Store.lookup``
(manifest + stat), ``Store.resolve`` by digest prefix, and, for contrast, ``Store.verify`` (full sha256).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rbln_eval.identity import BundleKey, ModelSource
from rbln_eval.store import BuildContext, Store

TOOLCHAIN = {"rebel-compiler": "bench", "optimum-rbln": "bench", "torch": "bench", "transformers": "bench"}


def sparse_builder(size: int):
    def build(ctx: BuildContext) -> None:
        (ctx.path / "config.json").write_text("{}")
        with open(ctx.path / "model.rbln", "wb") as fh:
            fh.truncate(size)

    return build


def timed(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--big-mb", type=int, default=1024)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        for label, size in (("1 MB", 1 << 20), (f"{args.big_mb} MB", args.big_mb << 20)):
            key = BundleKey.build(
                ModelSource(kind="hub", id=f"bench/{size}", revision="0" * 40), "causal", {}, "SIM-BENCH",
                toolchain=TOOLCHAIN,
            )
            build_start = time.perf_counter()
            bundle = store.get_or_build(key, sparse_builder(size)).bundle
            build = time.perf_counter() - build_start
            lookup = timed(lambda: store.lookup(key.digest), args.repeat)
            resolve = timed(lambda: store.resolve(key.digest[:8]), args.repeat)
            verify = timed(lambda: store.verify(bundle), 1)
            rows.append((label, build, lookup, resolve, verify))
    print(f"{'bundle':>9} | {'build+hash s':>12} | {'lookup µs':>10} | {'resolve µs':>10} | {'verify s':>9}")
    print("-" * 62)
    for label, build, lookup, resolve, verify in rows:
        print(f"{label:>9} | {build:12.3f} | {lookup * 1e6:10.1f} | {resolve * 1e6:10.1f} | {verify:9.3f}")
    ratio = rows[1][2] / rows[0][2]
    print(f"lookup time ratio large/small: {ratio:.2f} (bytes ratio {args.big_mb}x)")


if __name__ == "__main__":
    main()
