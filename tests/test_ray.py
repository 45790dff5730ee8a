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
from rbln_eval.api import CompileOptions  # noqa: E402
from rbln_eval.execution.devices import DevicePlacementError, plan_replicas  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402

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
    from sweephelpers import TASKS, cell_samples, metrics, two_models, write_plan

    from rbln_eval.remotes import add_spec, spec_from_location
    from rbln_eval.sweep import load_plan, run_sweep

    plan = load_plan(write_plan(tmp_path / "plan.yaml", two_models(), TASKS[:2]))
    store = Store(tmp_path / "store")
    (tmp_path / "shared").mkdir()
    add_spec(store, spec_from_location("shared", str(tmp_path / "shared")))
    nodes_store = tmp_path / "node-store"  # the NPU nodes' own store: bundles reach it through the remote only
    on_ray = run_sweep(plan, tmp_path / "ray", store, ray=cluster.address, remote="shared", node_store=nodes_store)
    assert on_ray.compiled == 2 and not on_ray.failed, [c.error for c in on_ray.failed]  # compiled as Ray tasks, once per key
    digests = sorted({c.digest for c in on_ray.cells})
    assert Store(nodes_store).digests() == digests  # pulled where evaluated, each file verified
    for digest in digests:
        Bundle.open(Store(nodes_store).bundle_path(digest), expected_digest=digest)
    local = run_sweep(plan, tmp_path / "local", store)  # the same bundles, scored here
    assert local.compiled == 0
    assert metrics(on_ray) == metrics(local)
    for cell in local.cells:
        assert cell_samples(tmp_path / "ray", cell.model, cell.task) == cell_samples(tmp_path / "local", cell.model, cell.task)
    nodes = {c.node for c in on_ray.cells}
    assert len(nodes) == 2, nodes  # cells ran side by side on both nodes
    assert all(len(c.devices) == 1 and c.replicas[0]["devices"] == c.devices for c in on_ray.cells)

    strays = Store(tmp_path / "stray")  # a node store that cannot get the bundles: the cells fail with the reason
    lost = run_sweep(plan, tmp_path / "lost", store, ray=cluster.address, node_store=strays.root)
    assert {c.status for c in lost.cells} == {"failed"}
    assert lost.cells[0].error == (
        f"bundle {lost.cells[0].digest[:12]} is neither in this node's store {strays.root.resolve()}: "
        "put the store on a filesystem every node mounts, or give the sweep a remote to share the bundles through"
    )

def test_a_qa_model_spreads_its_windows_over_replicas_on_both_nodes(cluster, tmp_path: Path) -> None:
    from qamodels import qa_tasks, tiny_qa_model

    from rbln_eval.api import evaluate_dataset_bundle, open_classifier
    from rbln_eval.evaluation.evaluate import EvalOptions

    model = tiny_qa_model(str(tmp_path / "models"), "distilbert")
    bundle = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=2)), Store(tmp_path / "store")).bundle
    options = EvalOptions(tasks=["qa_local_v2"], include_path=str(qa_tasks(str(tmp_path), 6)), log_samples=True)
    with open_classifier(bundle) as classifier:
        single = evaluate_dataset_bundle(classifier, options)
    with open_classifier(bundle, data_parallel=2, ray=cluster.address) as classifier:
        spread = evaluate_dataset_bundle(classifier, options)
    workers = spread["config"]["rbln"]["workers"]
    assert len(workers) == 2 and all(worker["requests"] > 0 for worker in workers)
    assert spread["results"] == single["results"] and spread["samples"] == single["samples"]


def test_a_pool_grows_while_it_runs_and_gives_a_lost_replicas_work_to_the_others(cluster, tp2: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    from rbln_eval.execution.pool import PoolExecutor, RayTransport

    requests = [(None, [5 + i % 7, 6 + i % 3, 7], [8 + i % 5, 9]) for i in range(80)]
    with open_lm(tp2, device="0-1") as lm:
        expected = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    monkeypatch.setenv("RBLN_EVAL_SIM_LATENCY_MS", "50")
    pool = PoolExecutor(tp2, [[]], RayTransport(cluster.address, 2))
    seen: dict = {"joined": [], "pending": []}
    run = pool.run

    def meddling_run(items, costs, sizes, on_done=None):  # type: ignore[no-untyped-def]
        def done(count: int) -> None:
            if not seen["joined"]:  # the first results: the call runs; let the two added replicas load now
                seen["joined"] = [ray.get(w.handle["actor"].loaded.remote(120.0)) for w in list(pool.joining)]
            elif len(pool.workers) == 3 and "victim" not in seen:  # both joined the running call: lose one
                seen["pending"] = pool.pending()
                seen["victim"] = pool.workers[2].where
                ray.kill(pool.workers[2].handle["actor"], no_restart=True)
            if on_done is not None:
                on_done(count)

        return run(items, costs, sizes, done)

    pool.run = meddling_run  # type: ignore[method-assign]
    with open_lm(tp2, executor=pool) as lm:
        pool.grow()
        pool.grow()
        assert len(pool.workers) == 1 and len(pool.joining) == 2
        scores = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        info = pool.describe()
    assert scores == expected
    assert seen["joined"] == [True, True] and seen["pending"] > 0, seen  # one was lost while work was still waiting
    assert [w["requests"] > 0 for w in info["workers"]] == [True, True]
    assert info["lost"] == [f"{seen['victim']}: its actor is gone: ActorDiedError"]

class _FakePool:
    """What Growing looks at: a call with work left, and how many replicas are loaded or joining."""

    def __init__(self, remaining: float) -> None:
        self.workers, self.joining, self.broken = ["w0"], [], None
        self.remaining = remaining
        self.bundle = type("B", (), {"key": type("K", (), {"tensor_parallel": 2})()})()

    def remaining_seconds(self) -> float:
        return self.remaining

    def grow(self) -> None:
        self.joining.append("new")


def test_growing_adds_one_replica_at_a_time_only_onto_free_npus_and_only_for_long_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import rbln_eval.execution.pool.growing as growing

    free = {"RBLN": 1.0}
    monkeypatch.setattr(growing, "free_npus", lambda: free["RBLN"])
    heard: list[int] = []
    pool = _FakePool(remaining=100.0)
    with growing.Growing(pool, every=0.01, min_seconds=30.0, on_change=heard.append):
        time.sleep(0.2)
        assert pool.joining == []  # 1 NPU free, the bundle needs 2
        free["RBLN"] = 2.0
        time.sleep(0.2)
        assert pool.joining == ["new"]  # one at a time: the next waits until this one has loaded
        pool.workers.append(pool.joining.pop())
        pool.remaining = 10.0  # less work left than a new replica takes to start
        time.sleep(0.2)
        assert pool.joining == [] and len(pool.workers) == 2
    assert heard == [1, 2, 0]
