"""Sweep wall time on 1 vs 2 simulated NPU nodes of Ray, and Ray's start-up against the local worker pool's.

2 models (two compile configs of the demo Llama) × the 4 demo tasks, every device call taking
``--latency-ms`` of simulated device time. Bundles are compiled first (the compile stage is timed apart);
then the same cells are scored on a cluster of one node with 2 NPUs and of two such nodes, and every score
must be identical. Each cluster's worker processes are started and warmed (imports) before the sweep is
timed: the start-up is reported on its own, against the local worker pool's. Prints a table.

    python scripts/bench_sweep.py            # every document of the demo tasks
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulated device time per call")
    return parser.parse_args()


def plan_file(directory: Path, limit: int) -> Path:
    import yaml

    from rbln_eval import demo

    model = str(demo.causal_model_dir())
    tasks = [{"task": name, "limit": limit, "include_path": str(demo.tasks_dir())} for name in demo.TASK_NAMES]
    plan = {
        "models": [{"model": model, "name": "llama-bs2", "batch_size": 2}, {"model": model, "name": "llama-bs4", "batch_size": 4}],
        "tasks": tasks,
    }
    path = directory / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def _warm() -> str:
    """A cell's imports, done once in a worker process (Ray reuses it for the cells that follow)."""
    import time as clock

    import rbln_eval.execution.pool.preload as preload

    preload.warm()
    clock.sleep(1.0)  # hold the NPU slot, so every slot gets its own worker
    return "ok"


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all the host's cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def cluster(nodes: int):
    """A cluster of ``nodes`` nodes with 2 NPUs each; returns it, its start-up and its workers' warm-up seconds."""
    import ray
    from ray.cluster_utils import Cluster

    from rbln_eval.execution.pool import forwarded_env

    started = time.monotonic()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"RBLN": 2}, "node_ip_address": "127.0.0.1"})
    for _ in range(nodes - 1):
        head.add_node(num_cpus=1, resources={"RBLN": 2}, node_ip_address="127.0.0.1")
    head.wait_for_nodes()
    ray.init(address=head.address, log_to_driver=False)
    startup = time.monotonic() - started
    started = time.monotonic()
    warm = ray.remote(_warm).options(resources={"RBLN": 1}, num_cpus=0, runtime_env={"env_vars": forwarded_env()})
    ray.get([warm.remote() for _ in range(2 * nodes)])
    return head, startup, time.monotonic() - started


def main() -> int:
    args = parse_args()
    import ray

    from rbln_eval.store import Store
    from rbln_eval.sweep import load_plan, run_sweep

    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    store = Store(work / "store")
    plan = load_plan(plan_file(work, args.limit))
    started = time.monotonic()
    run_sweep(load_plan(plan_file(work, 1)), work / "warm", store)  # compiles both keys, once
    compile_seconds = time.monotonic() - started

    os.environ["RBLN_EVAL_SIM_DEVICES"] = "2"
    os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(args.latency_ms)
    rows = []
    baseline = None
    for nodes in (1, 2):
        head, startup, warmup = cluster(nodes)
        try:
            started, ticks = time.monotonic(), cpu_ticks()
            result = run_sweep(plan, work / f"ray-{nodes}", store, ray=head.address, force=True)
            wall = time.monotonic() - started
            busy = (cpu_ticks()[0] - ticks[0]) / max(1, cpu_ticks()[1] - ticks[1])
        finally:
            ray.shutdown()
            head.shutdown()
        if result.failed:
            print(f"{nodes} node(s): failed cells {[(c.model, c.task, c.error) for c in result.failed]}", file=sys.stderr)
            return 1
        scores = {(c.model, c.task): c.metrics for c in result.cells}
        if baseline is None:
            baseline = (scores, wall)
        elif scores != baseline[0]:
            print(f"{nodes} node(s): scores differ from 1 node", file=sys.stderr)
            return 1
        used = len({c.node for c in result.cells})
        cell_seconds = sum(c.seconds for c in result.cells)
        grown = sum(1 for c in result.cells if len(c.replicas) > 1)
        rows.append((nodes, nodes * 2, startup, warmup, wall, baseline[1] / wall, used, cell_seconds, busy, grown))

    from rbln_eval.api import open_lm

    bundle = store.resolve(next(c.digest for c in result.cells if c.digest))
    started = time.monotonic()
    with open_lm(bundle, devices="0,1"):
        pool_startup = time.monotonic() - started

    limit = "every document" if args.limit is None else f"limit {args.limit}"
    print(f"sweep: 2 models x {len(plan.tasks)} demo tasks, {limit}, {args.latency_ms:g} ms per device call; "
          f"compile stage {compile_seconds:.1f} s (2 keys, once)")
    print(f"{'nodes':>5} | {'NPUs':>4} | {'cluster start s':>15} | {'worker warm-up s':>16} | {'sweep wall s':>12} | "
          f"{'speedup':>7} | nodes used | {'sum of cell s':>13} | host CPU busy | cells grown")
    for nodes, npus, startup, warmup, wall, speedup, used, cell_seconds, busy, grown in rows:
        print(f"{nodes:>5} | {npus:>4} | {startup:>15.1f} | {warmup:>16.1f} | {wall:>12.1f} | {speedup:>6.2f}x | "
              f"{used:>10} | {cell_seconds:>13.1f} | {busy:>12.0%} | {grown:>11}")
    print(f"every cell's scores identical on 1 and 2 nodes; host: {os.cpu_count()} cores for every node's NPUs and cells")
    print(f"start-up: Ray, 1 node + 2 warm workers {rows[0][2] + rows[0][3]:.1f} s; 2 nodes + 4 workers "
          f"{rows[1][2] + rows[1][3]:.1f} s; the local pool of 2 workers {pool_startup:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
