"""Sharing bundles through a Hub repo, against a local Hub-compatible server (tests/hubserver.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import tree_snapshot
from hubserver import HubServer
from rbln_eval.remotes.base import sha256_text
from rbln_eval.remotes.hub import INDEX_NAME, branch_name
from rbln_eval.store import MANIFEST_NAME, Store
from remotehelpers import TOKEN, cli, model_dir, ok, one_line_exit_2, origin, results_file, run_args, scores

REPO = "org/shared"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    server = HubServer(tmp_path_factory.mktemp("hub"), token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo bundle, pushed (private) to REPO from its own store."""
    bundle, reference = origin(tmp_path_factory)
    root = tmp_path_factory.mktemp("hub-machines")
    machine = Machine(hub, root / "origin-hf-home")
    push = ok(machine.cli("push", bundle.digest[:10], "--repo", REPO, "--private", "--store", str(bundle.path.parent.parent)))
    return {"bundle": bundle, "reference": reference, "root": root, "push": push}


class Machine:
    """An environment with its own HF cache (a separate machine), pointed at the test Hub."""

    def __init__(self, hub: HubServer, hf_home: Path, **extra: str) -> None:
        self.env = {
            "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "10", **extra,
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return cli(*args, env=self.env)


def push_copy(hub: HubServer, shared: dict[str, Any], repo: str) -> str:
    bundle = shared["bundle"]
    ok(Machine(hub, shared["root"] / "pusher").cli("push", bundle.digest, "--repo", repo, "--store", str(bundle.path.parent.parent)))
    return bundle.digest


def test_push_layout(hub: HubServer, shared: dict[str, Any]) -> None:
    bundle = shared["bundle"]
    digest = bundle.digest
    assert f"hf://{REPO}@{branch_name(digest)}" in shared["push"].stdout
    assert "pushed" in shared["push"].stderr and "from_pretrained" in shared["push"].stderr
    repo = hub.repos[REPO]
    assert repo.private
    index = json.loads(hub.read(REPO, "main", INDEX_NAME))
    entry = index["bundles"][digest]
    assert entry["revision"] == branch_name(digest) and entry["commit"] == repo.branches[branch_name(digest)]
    assert entry["manifest_sha256"] == sha256_text((bundle.path / MANIFEST_NAME).read_bytes())
    assert entry["key"] == bundle.key.fields()
    files = set(repo.commits[entry["commit"]].files)
    assert files == set(bundle.manifest.files) | {MANIFEST_NAME, ".gitattributes"}
    for name in bundle.manifest.files:
        assert hub.read(REPO, entry["commit"], name) == (bundle.path / name).read_bytes()
    assert not any("lfs" in path or "xet" in path for _m, path, _h in hub.requests)
    again = ok(Machine(hub, shared["root"] / "pusher").cli("push", digest, "--repo", REPO, "--store", str(bundle.path.parent.parent)))
    assert "nothing uploaded" in again.stderr and repo.branches[branch_name(digest)] == entry["commit"]


def test_push_pull_run_roundtrip(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = tmp_path / "store"
    shutil.copytree(bundle.path.parent.parent, store)
    machine = Machine(hub, tmp_path / "hf-home")
    ok(machine.cli("rm", bundle.digest, "--store", str(store)))
    assert Store(store).lookup(bundle.digest) is None
    pulled = ok(machine.cli("pull", f"hf://{REPO}@{bundle.digest[:8]}", "--store", str(store)))
    assert "verified" in pulled.stderr
    restored = Store(store).lookup(bundle.digest)
    assert restored is not None and Store(store).verify(restored) == []
    assert (restored.path / MANIFEST_NAME).read_bytes() == (bundle.path / MANIFEST_NAME).read_bytes()
    ok(machine.cli("run", "--artifact", bundle.digest[:8], *run_args(store, tmp_path / "out")))
    assert scores(results_file(tmp_path / "out")) == shared["reference"]


def test_plain_optimum_rbln_loads_pushed_bundle(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    digest = shared["bundle"].digest
    script = textwrap.dedent(
        f"""
        import torch
        import rbln_eval.sim
        rbln_eval.sim.activate()
        from optimum.rbln import RBLNAutoModelForCausalLM
        model = RBLNAutoModelForCausalLM.from_pretrained({REPO!r}, revision={branch_name(digest)!r}, export=False)
        out = model.generate(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), max_new_tokens=2, do_sample=False)
        print("loaded", type(model).__name__, tuple(out.shape))
        """
    )
    env = {**os.environ, **Machine(hub, tmp_path / "hf-home").env}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded RBLN" in result.stdout and "(2, 6)" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_second_machine_run_pulls_and_compiles_nothing(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = tmp_path / "store"
    machine = Machine(hub, tmp_path / "hf-home")
    ok(machine.cli("remote", "add", "team", f"hf://{REPO}", "--store", str(store)))
    result = ok(machine.cli("run", "--model", model_dir(), "--batch-size", "2", *run_args(store, tmp_path / "out")))
    assert f"pulled bundle {bundle.digest[:12]} from remote team" in result.stderr
    assert "compiling" not in result.stderr and "compiled in" not in result.stderr
    results = results_file(tmp_path / "out")
    assert results["config"]["rbln"]["compiled_now"] is False
    assert results["config"]["rbln"]["bundle_digest"] == bundle.digest
    assert scores(results) == shared["reference"]
    pulled = Store(store).lookup(bundle.digest)
    assert pulled is not None and Store(store).digests() == [bundle.digest]
    assert pulled.manifest.created == bundle.manifest.created  # the origin's build, not a new one
    assert not (Store(store).root / "failures").exists() or not any((Store(store).root / "failures").iterdir())
    # --no-remote: nothing is pulled (and the store already has it, so nothing is compiled either)
    again = ok(machine.cli("compile", model_dir(), "--batch-size", "2", "--store", str(store), "--no-remote"))
    assert "nothing to compile" in again.stderr

    # Offline: the HF cache of this machine serves a pull into another store without any request.
    seen = len(hub.requests)
    offline = Machine(hub, tmp_path / "hf-home", HF_HUB_OFFLINE="1")
    ok(offline.cli("pull", f"hf://{REPO}@{bundle.digest}", "--store", str(tmp_path / "offline-store")))
    assert Store(tmp_path / "offline-store").lookup(bundle.digest) is not None
    assert len(hub.requests) == seen


def _tamper(hub: HubServer, repo: str, digest: str, case: str, bundle) -> None:
    commit = hub.repos[repo].branches[branch_name(digest)]
    largest = max(bundle.manifest.files, key=lambda n: bundle.manifest.files[n].size)
    data = hub.read(repo, commit, largest)
    if case == "tampered":
        hub.rewrite(repo, commit, largest, bytes([data[0] ^ 1]) + data[1:])
    elif case == "truncated":
        hub.rewrite(repo, commit, largest, data[: len(data) // 2])
    elif case == "extra-file":
        hub.rewrite(repo, commit, "modeling_evil.py", b"import os\n")
    elif case in ("dotdot", "manifest-not-indexed"):
        manifest = json.loads(hub.read(repo, commit, MANIFEST_NAME))
        name = "../x" if case == "dotdot" else "extra.bin"
        manifest["files"][name] = {"sha256": "0" * 64, "size": 1}
        text = json.dumps(manifest).encode()
        hub.rewrite(repo, commit, MANIFEST_NAME, text)
        if case == "dotdot":  # a hostile server updates the index too, so only the path check stands
            index = json.loads(hub.read(repo, "main", INDEX_NAME))
            index["bundles"][digest]["manifest_sha256"] = sha256_text(text)
            hub.rewrite(repo, "main", INDEX_NAME, json.dumps(index).encode())


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tampered", "sha256 mismatch"),
        ("truncated", "size"),
        ("extra-file", "modeling_evil.py is not in the manifest"),
        ("dotdot", "unsafe file path '../x'"),
        ("manifest-not-indexed", "manifest does not match the index"),
    ],
)
def test_bad_remote_bundle_is_refused(hub: HubServer, shared: dict[str, Any], tmp_path: Path, case: str, expected: str) -> None:
    repo = f"org/bad-{case}"
    digest = push_copy(hub, shared, repo)
    _tamper(hub, repo, digest, case, shared["bundle"])
    store = tmp_path / "store"
    machine = Machine(hub, tmp_path / "hf-home")
    ok(machine.cli("remote", "add", "bad", f"hf://{repo}", "--store", str(store)))
    before = tree_snapshot(store)
    line = one_line_exit_2(machine.cli("pull", digest, "--store", str(store)), expected)
    assert "refused" in line and "nothing was stored" in line
    assert tree_snapshot(store) == before
    if case == "tampered":  # compile-or-pull refuses too, rather than serving or recompiling
        run = machine.cli("compile", model_dir(), "--batch-size", "2", "--store", str(store))
        one_line_exit_2(run, "sha256 mismatch")
        assert "compiling" not in run.stderr and tree_snapshot(store) == before


def test_interrupted_pull_resumes(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    digest = push_copy(hub, shared, "org/resume")
    files = bundle.manifest.files
    largest = max(files, key=lambda n: files[n].size)
    store = tmp_path / "store"
    machine = Machine(hub, tmp_path / "hf-home")
    hub.fail_once[largest] = 500  # the pull dies on its largest file, after the ones sorted before it
    one_line_exit_2(machine.cli("pull", f"hf://org/resume@{digest}", "--store", str(store)), "the Hub answered 500")
    assert Store(store).lookup(digest) is None
    # The second pull fetches only what the first did not finish; a connection cut halfway through the
    # largest file is retried in-process by huggingface_hub.
    hub.drop_after[largest] = files[largest].size // 2
    ok(machine.cli("pull", f"hf://org/resume@{digest}", "--store", str(store)))

    def gets(name: str) -> int:
        return sum(1 for m, p, _h in hub.requests if m == "GET" and p.startswith("/org/resume/") and p.endswith("/" + name))

    done_before = [n for n in sorted(files) if n < largest]
    assert done_before and all(gets(n) == 1 for n in done_before)
    assert gets(largest) == 3  # failed, cut short, complete
    pulled = Store(store).lookup(digest)
    assert pulled is not None and Store(store).verify(pulled) == []


def test_concurrent_pushes_of_one_digest(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = str(bundle.path.parent.parent)
    hub.preupload_barrier = threading.Barrier(2, timeout=60)
    try:
        env = {**os.environ, "RBLN_EVAL_SIMULATE": "1", **Machine(hub, tmp_path / "hf-home").env}
        procs = [
            subprocess.Popen([sys.executable, "-m", "rbln_eval", "push", bundle.digest, "--repo", "org/race", "--store", store],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        hub.preupload_barrier = None
    for proc, (stdout, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
        assert TOKEN not in stdout + stderr
    assert any(status == 412 and "org/race/commit" in path for _m, path, status in hub.statuses)
    repo = hub.repos["org/race"]
    head = repo.branches[branch_name(bundle.digest)]
    assert repo.commits[repo.commits[head].parent].parent is None  # exactly one bundle commit on the initial one
    index = json.loads(hub.read("org/race", "main", INDEX_NAME))
    assert list(index["bundles"]) == [bundle.digest] and index["bundles"][bundle.digest]["commit"] == head


def test_bad_input_one_line(hub: HubServer, shared: dict[str, Any], tmp_path: Path) -> None:
    machine = Machine(hub, tmp_path / "hf-home")
    store = str(tmp_path / "store")
    one_line_exit_2(machine.cli("pull", "abcd", "--remote", "nope", "--store", store), "no remote named 'nope'")
    one_line_exit_2(machine.cli("pull", "hf://org/missing@main", "--store", store), "repository not found")
    one_line_exit_2(machine.cli("pull", "abcd", "--store", store), "no remote to pull 'abcd' from")
    one_line_exit_2(machine.cli("push", "abcd", "--repo", "not a repo", "--store", store), "no bundle matches")
    one_line_exit_2(machine.cli("remote", "add", "x", "org/name", "--store", store), "ambiguous")
    ok(machine.cli("remote", "add", "team", f"hf://{REPO}", "--store", store))
    one_line_exit_2(machine.cli("pull", "ffff", "--store", store), "no bundle matches 'ffff' on team")
    no_token = Machine(hub, tmp_path / "hf-home-anon", HF_TOKEN="")
    digest = shared["bundle"].digest
    one_line_exit_2(no_token.cli("pull", f"hf://{REPO}@{digest}", "--store", store), "check the name and HF_TOKEN")
    assert not (tmp_path / "store" / "bundles").exists() or not any((tmp_path / "store" / "bundles").iterdir())
