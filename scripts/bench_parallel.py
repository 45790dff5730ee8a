#!/usr/bin/env python
"""Data-parallel speedup on the simulated node: K = 1, 2, 4 replicas of the demo bundle.

Every runtime call takes a simulated device time (``RBLN_EVAL_SIM_LATENCY_MS``, 50 ms by default here),
as NPU calls dominate a real evaluation; the simulator's arithmetic runs inside it. K=1 is the in-process
replica that ``rbln-eval run`` uses; K>1 are worker processes (``run --data-parallel K``). Worker start-up
is reported apart from evaluation time. The script fails if any K gives a different score or logged sample
than K=1.

The tasks are the demo's four: loglikelihood (cloze), multiple choice, rolling perplexity and generation,
every document of each unless ``--limit`` says otherwise. "Busiest worker" is the largest share of the
device calls any one worker made (1/K is a perfect balance). A second table splits the scoring time by
request type (lm_eval hands the model one call per type, so each ends when its slowest worker does).

Usage::

    python scripts/bench_parallel.py                       # demo model, every document
    python scripts/bench_parallel.py --model DIR --limit 24
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASKS = ["demo_cloze", "demo_mc", "demo_ppl", "demo_gen"]


def parse_args() -> argparse.Namespace:
    from rbln_eval import demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(demo.causal_model_dir()), help="causal model directory (default: the demo model)")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulated device time per runtime call (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="compiled batch size (default: %(default)s)")
    parser.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    return parser.parse_args()


def samples(results: dict) -> dict:
    return {
        task: [[r[0] for r in s["resps"]] for s in sorted(items, key=lambda s: s["doc_id"])]
        for task, items in results["samples"].items()
    }


def main() -> int:
    args = parse_args()
    os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(args.latency_ms)
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from rbln_eval import demo
    from rbln_eval.api import CompileOptions
    from rbln_eval.api import open_lm
    from rbln_eval.store import Store
    from rbln_eval.build.workflow import compile_bundle, plan_compile

    if not os.path.isdir(args.model):
        print(f"no model at {args.model}: run scripts/train_demo_models.py or pass --model DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # as each worker does on this host
    store = Store(args.store or tempfile.mkdtemp(prefix="bench-parallel-"))
    bundle = compile_bundle(plan_compile(args.model, CompileOptions(batch_size=args.batch_size)), store).bundle
    manager = TaskManager(include_path=str(demo.tasks_dir()), include_defaults=False)

    def evaluate(lm) -> tuple[dict, float]:
        started = time.monotonic()
        results = simple_evaluate(model=lm, tasks=TASKS, limit=args.limit, log_samples=True, task_manager=manager)
        return results, time.monotonic() - started

    rows = []
    baseline = None
    for k in (1, 2, 4):
        started = time.monotonic()
        lm = open_lm(bundle, device=0) if k == 1 else open_lm(bundle, devices=f"0-{k - 1}")
        startup = time.monotonic() - started
        try:
            results, seconds = evaluate(lm)
        finally:
            lm.close()
        counters = results["config"]["rbln"]["device_counters"]
        calls = sum(c["calls"] for c in counters.values())
        scores = {t: {m: v for m, v in r.items() if "stderr" not in m} for t, r in results["results"].items()}
        if baseline is None:
            baseline = (scores, samples(results), seconds)
        elif (scores, samples(results)) != baseline[:2]:
            print(f"K={k} scores differ from K=1", file=sys.stderr)
            return 1
        scoring = results["config"]["rbln"]["eval_seconds"]
        if len(baseline) == 3:
            baseline = (*baseline, scoring)
        workers = results["config"]["rbln"].get("workers") or [{"device_counters": counters}]
        busiest = max(sum(c["calls"] for c in w["device_counters"].values()) for w in workers) / calls
        by_type = results["config"]["rbln"]["eval_seconds_by_request_type"]
        rows.append((k, startup, seconds, scoring, calls, busiest, baseline[2] / seconds, baseline[3] / scoring, by_type))
        print(f"K={k}: {seconds:.1f}s", file=sys.stderr)

    requests = results["config"]["rbln"]["requests"]
    documents = "every document" if args.limit is None else f"limit {args.limit}"
    print(f"{', '.join(TASKS)}; {documents}; {requests} requests; "
          f"{args.latency_ms:g} ms per call; batch {args.batch_size}; scores identical for every K")
    print("start-up: loading the replicas (the first pool, K=2, also starts the workers' fork server, which K=4 reuses); "
          "wall: simple_evaluate; scoring: time in the model's request calls")
    header = (f"{'K':>3} | {'start-up s':>10} | {'wall s':>7} | {'scoring s':>9} | {'device calls':>12} | "
              f"{'busiest worker':>14} | {'wall speedup':>12} | {'scoring speedup':>15}")
    print(header)
    print("-" * len(header))
    for k, startup, seconds, scoring, calls, busiest, speedup, scoring_speedup, _ in rows:
        print(f"{k:>3} | {startup:>10.1f} | {seconds:>7.1f} | {scoring:>9.1f} | {calls:>12} | {busiest:>14.1%} | "
              f"{speedup:>11.2f}x | {scoring_speedup:>14.2f}x")
    types = list(rows[0][-1])
    print()
    print("scoring seconds by request type (speedup over K=1)")
    print(" K | " + " | ".join(f"{t:>24}" for t in types))
    for k, *_, by_type in rows:
        cells = [f"{by_type[t]:>6.1f} s ({rows[0][-1][t] / by_type[t]:>4.2f}x)" for t in types]
        print(f"{k:>2} | " + " | ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
