"""Replicas on a Ray cluster of simulated NPU nodes: placement by Ray's RBLN resource, RBLN_DEVICES
honoured, scores identical to one local replica."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import rbln_eval.sim as sim

ray = pytest.importorskip("ray")
try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from demomodels import model_dirs  # noqa: E402
from lmhelpers import TASKS_DIR, sample_values  # noqa: E402
from rbln_eval.api import open_lm  # noqa: E402
from rbln_eval.compiler import CompileOptions  # noqa: E402
from rbln_eval.devices import DevicePlacementError, plan_replicas  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402
from rbln_eval.workflow import compile_bundle, plan_compile  # noqa: E402

TASKS = ["demo_mc", "demo_gen"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """Two nodes of four simulated NPUs each (the head takes the driver's CPU)."""
    from rayhelpers import start_cluster, stop_cluster

    os.environ["RBLN_EVAL_SIM_DEVICES"] = "4"
    cluster = start_cluster({"num_cpus": 1, "resources": {"RBLN": 4}}, {"num_cpus": 1, "resources": {"RBLN": 4}})
    yield cluster
    stop_cluster(cluster)
    os.environ.pop("RBLN_EVAL_SIM_DEVICES", None)


@pytest.fixture(scope="module")
def tp2(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    scratch = tmp_path_factory.mktemp("ray")
    causal = model_dirs(str(scratch / "models"))["causal"]
    return compile_bundle(plan_compile(str(causal), CompileOptions(batch_size=2, tp=2)), Store(scratch / "store")).bundle


def evaluate(lm: Any) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with lm:
        return simple_evaluate(
            model=lm, tasks=TASKS, limit=4, log_samples=True,
            task_manager=TaskManager(include_path=TASKS_DIR, include_defaults=False),
        )


def test_rbln_devices_limits_local_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBLN_DEVICES", "4,5,6,7")
    assert plan_replicas(2, data_parallel=2) == [[4, 5], [6, 7]]
    with pytest.raises(DevicePlacementError, match=r"^npu:2-3 is outside RBLN_DEVICES=4,5,6,7: choose among those NPUs"):
        plan_replicas(2, devices="2-5")
    from rbln_eval.sim.devices import DeviceError, resolve_devices

    assert resolve_devices(None, 2, "RBLN-CA25") == [4, 5]
    with pytest.raises(DeviceError, match=r"NPU device 0 is not among this process's devices \(RBLN_DEVICES=4,5,6,7\)"):
        resolve_devices([0, 1], 2, "RBLN-CA25")


def test_four_tp2_replicas_on_two_nodes_take_their_rbln_devices(cluster, tp2: Bundle) -> None:
    single = evaluate(open_lm(tp2, device="0-1"))
    results = evaluate(open_lm(tp2, data_parallel=4, ray=cluster.address))
    info = results["config"]["rbln"]
    workers = info["workers"]
    assert info["data_parallel"] == 4 and len(workers) == 4
    by_node: dict[str, list[list[int]]] = {}
    for worker in workers:
        by_node.setdefault(worker["node"], []).append(worker["devices"])
    assert len(by_node) == 2, by_node
    for groups in by_node.values():
        assert sorted(groups) == [[0, 1], [2, 3]], by_node  # disjoint pairs on each node
    assert sum(w["requests"] for w in workers) == single["config"]["rbln"]["requests"]
    assert {t: r for t, r in results["results"].items()} == {t: r for t, r in single["results"].items()}
    assert sample_values(results) == sample_values(single)


def test_a_sweep_on_the_cluster_equals_the_local_sweep(cluster, tmp_path: Path) -> None:
    from sweephelpers import cell_samples, metrics, two_models, write_plan

    from rbln_eval.sweep import load_plan, run_sweep

    from sweephelpers import TASKS

    plan = load_plan(write_plan(tmp_path / "plan.yaml", two_models(), TASKS[:2]))
    store = Store(tmp_path / "store")
    on_ray = run_sweep(plan, tmp_path / "ray", store, ray=cluster.address)
    assert on_ray.compiled == 2 and not on_ray.failed  # compiled as Ray tasks, once per key
    local = run_sweep(plan, tmp_path / "local", store)  # the same bundles, scored here
    assert local.compiled == 0
    assert metrics(on_ray) == metrics(local)
    for cell in local.cells:
        assert cell_samples(tmp_path / "ray", cell.model, cell.task) == cell_samples(tmp_path / "local", cell.model, cell.task)
    nodes = {c.node for c in on_ray.cells}
    assert len(nodes) == 2, nodes  # cells ran side by side on both nodes
    assert all(len(c.devices) == 1 for c in on_ray.cells)
