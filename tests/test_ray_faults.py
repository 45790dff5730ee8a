"""A node removed while a cell runs on it: the cell runs again on another node, with the scores of an undisturbed run."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import rbln_eval.sim as sim

ray = pytest.importorskip("ray")
try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from sweephelpers import TASKS, metrics, two_models, write_plan  # noqa: E402

import rbln_eval.sweep.runners as runners  # noqa: E402
from rbln_eval.store import Store  # noqa: E402
from rbln_eval.sweep import evaluate_cell, load_plan, run_sweep  # noqa: E402

GATE = "doomed-node-gate"
#: Bounds a wait on the cluster, so that a broken run fails instead of hanging (it is never what the test waits for).
HANG = 300.0


class Gate:
    """A Ray actor on the head node. The cells on the doomed node stop here once their first requests are
    scored — all but the first cell, which finishes there — until the gate is opened."""

    def __init__(self, doomed: str) -> None:
        self.doomed = doomed
        self.lock = threading.Lock()
        self.passed = False
        self.held = threading.Event()
        self.opened = threading.Event()

    def in_flight(self, node: str) -> None:
        if node != self.doomed:
            return
        with self.lock:
            first, self.passed = not self.passed, True
        if first:
            return
        self.held.set()
        self.opened.wait()

    def holding(self, timeout: float) -> bool:
        """Whether a cell is stopped at the gate, in flight on the doomed node (waiting up to ``timeout`` s)."""
        return self.held.wait(timeout)

    def open(self) -> None:
        self.opened.set()


def cell_through_gate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_cell`, stepping in from the cell's own progress: at its first scored requests it tells
    the gate on which node it runs, and goes on only when the gate lets it."""
    from rbln_eval.execution.pool import PoolExecutor, ray_node_id

    gate = ray.get_actor(GATE)
    run = PoolExecutor.run
    stepped_in: list[bool] = []

    def run_through_gate(pool: Any, items: Any, costs: Any, sizes: Any, on_done: Any = None) -> list[Any]:
        def done(count: int) -> None:
            if not stepped_in:
                stepped_in.append(True)
                ray.get(gate.in_flight.remote(ray_node_id()))
            if on_done is not None:
                on_done(count)

        return run(pool, items, costs, sizes, done)

    PoolExecutor.run = run_through_gate  # type: ignore[method-assign]
    try:
        return evaluate_cell(*args, **kwargs)
    finally:
        PoolExecutor.run = run  # type: ignore[method-assign]


def test_cells_of_a_removed_node_finish_on_another_with_identical_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from rayhelpers import add_node, start_cluster, stop_cluster

    plan = load_plan(write_plan(tmp_path / "plan.yaml", two_models()[:1], TASKS))
    store = Store(tmp_path / "store")
    undisturbed = run_sweep(plan, tmp_path / "local", store)

    monkeypatch.setenv("RBLN_EVAL_SIM_DEVICES", "2")
    # The head has no NPU (RBLN 0: not detected through the simulated rebel either); cells start on the doomed node.
    cluster = start_cluster({"num_cpus": 2, "resources": {"RBLN": 0}}, {"num_cpus": 1, "resources": {"RBLN": 2}})
    doomed = next(iter(cluster.worker_nodes))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Ray workers cannot import this module
    try:
        with_npus = [n["NodeID"] for n in ray.nodes() if n["Resources"].get("RBLN") and n["Alive"]]
        assert len(with_npus) == 1, ray.nodes()
        doomed_id = with_npus[0]
        head = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        gate = ray.remote(Gate).options(name=GATE, num_cpus=0, max_concurrency=8, scheduling_strategy=head).remote(doomed_id)
        monkeypatch.setattr(runners, "evaluate_cell", cell_through_gate)

        finished = threading.Event()  # a cell has finished: on the doomed node, the only one with NPUs so far
        outcome: dict = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "cells" and done:
                finished.set()

        sweep = threading.Thread(
            target=lambda: outcome.update(result=run_sweep(plan, tmp_path / "ray", store, ray=cluster.address, progress=progress))
        )
        sweep.start()
        assert finished.wait(HANG) and ray.get(gate.holding.remote(HANG))  # one cell done there, another in flight
        written_by_doomed = sorted(p.parent.name for p in (tmp_path / "ray" / "cells").glob("*/results.json"))
        add_node(cluster, {"num_cpus": 1, "resources": {"RBLN": 2}})
        cluster.remove_node(doomed)
        ray.get(gate.open.remote())  # nothing is left behind it: its cells went with their node
        sweep.join(HANG)
        assert not sweep.is_alive()
        result = outcome["result"]
        assert not result.failed, [(c.task, c.error) for c in result.failed]
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("RBLN")}
        assert written_by_doomed and alive and doomed_id not in alive
        nodes = [c.node for c in result.cells]
        assert set(nodes) <= alive | {doomed_id} and set(nodes) & alive, nodes  # the lost cells ran again elsewhere
        assert metrics(result) == metrics(undisturbed)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        stop_cluster(cluster)
