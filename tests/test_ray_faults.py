"""A node removed while its cells run: they run again on another node, with the scores of an undisturbed run."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import rbln_eval.sim as sim

ray = pytest.importorskip("ray")
try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from sweephelpers import TASKS, metrics, two_models, write_plan  # noqa: E402

from rbln_eval.store import Store  # noqa: E402
from rbln_eval.sweep.sweep import load_plan, run_sweep  # noqa: E402


def test_cells_of_a_removed_node_finish_on_another_with_identical_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rayhelpers import add_node, start_cluster, stop_cluster

    plan = load_plan(write_plan(tmp_path / "plan.yaml", two_models()[:1], TASKS))
    store = Store(tmp_path / "store")
    undisturbed = run_sweep(plan, tmp_path / "local", store)

    monkeypatch.setenv("RBLN_EVAL_SIM_DEVICES", "2")
    monkeypatch.setenv("RBLN_EVAL_SIM_LATENCY_MS", "150")  # cells last seconds: long enough to lose a node under them
    # The head has no NPU (RBLN 0: not detected through the simulated rebel either); cells start on the doomed node.
    cluster = start_cluster({"num_cpus": 2, "resources": {"RBLN": 0}}, {"num_cpus": 1, "resources": {"RBLN": 2}})
    doomed = next(iter(cluster.worker_nodes))
    try:
        with_npus = [n["NodeID"] for n in ray.nodes() if n["Resources"].get("RBLN") and n["Alive"]]
        assert len(with_npus) == 1, ray.nodes()
        doomed_id = with_npus[0]
        outcome: dict = {}
        sweep = threading.Thread(
            target=lambda: outcome.update(result=run_sweep(plan, tmp_path / "ray", store, ray=cluster.address))
        )
        sweep.start()
        deadline = time.monotonic() + 120
        while not any((tmp_path / "ray" / "cells").glob("*/results.json")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the first cell finished on the doomed node: others are in flight there
        written_by_doomed = sorted(p.parent.name for p in (tmp_path / "ray" / "cells").glob("*/results.json"))
        add_node(cluster, {"num_cpus": 1, "resources": {"RBLN": 2}})
        cluster.remove_node(doomed)
        sweep.join(240)
        assert not sweep.is_alive()
        result = outcome["result"]
        assert not result.failed, [(c.task, c.error) for c in result.failed]
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("RBLN")}
        assert written_by_doomed and alive and doomed_id not in alive
        nodes = [c.node for c in result.cells]
        assert set(nodes) <= alive | {doomed_id} and set(nodes) & alive, nodes  # the lost cells ran again elsewhere
        assert metrics(result) == metrics(undisturbed)
    finally:
        stop_cluster(cluster)
        os.environ.pop("RBLN_EVAL_SIM_LATENCY_MS", None)
