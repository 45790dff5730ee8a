"""The bundle store: build once, publish atomically, never serve a damaged bundle."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rbln_eval.errors import (
    AmbiguousReferenceError,
    BuildFailedError,
    BundleNotFoundError,
    CorruptBundleError,
    StoreNotWritableError,
)
from rbln_eval.util.hashing import sha256_file
from rbln_eval.store import MANIFEST_NAME, BuildContext, Store
from storehelpers import counting_builder, make_key, write_files


def test_build_then_hit(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    key = make_key()
    counter = tmp_path / "count"
    first = store.get_or_build(key, counting_builder(counter), info={"model": "org/tiny"})
    second = store.get_or_build(key, counting_builder(counter))
    assert first.built and not second.built
    assert counter.read_text() == "x"
    bundle = second.bundle
    assert bundle.path == store.root / "bundles" / key.digest
    manifest = json.loads((bundle.path / MANIFEST_NAME).read_text())
    assert manifest["digest"] == key.digest
    assert manifest["key"] == key.fields()
    assert manifest["info"] == {"model": "org/tiny"}
    assert manifest["files"]["model.rbln"] == {"sha256": sha256_file(bundle.path / "model.rbln"), "size": 7}
    assert sorted(manifest["files"]) == ["config.json", "model.rbln", "rbln-eval-build.log", "sub/tokenizer.json"]
    assert (bundle.path / "rbln-eval-build.log").read_text() == "compiling\n"
    assert manifest["build_seconds"] >= 0 and manifest["created"].endswith("+00:00")
    assert list((store.root / "tmp").iterdir()) == []


def _worker(store_root: str, counter: str, start: float, queue: "mp.Queue[str]") -> None:
    while time.time() < start:
        time.sleep(0.001)

    def slow_builder(ctx: BuildContext) -> None:
        time.sleep(0.5)  # long enough that every worker arrives while the first one builds
        counting_builder(Path(counter))(ctx)

    result = Store(store_root).get_or_build(make_key(), slow_builder)
    queue.put(f"{result.bundle.digest}:{int(result.built)}")


def test_eight_processes_build_once(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    counter = tmp_path / "count"
    start = time.time() + 0.5
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "s"), str(counter), start, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in procs)
    assert counter.read_text() == "x"  # the builder ran exactly once
    digest = make_key().digest
    assert results == [f"{digest}:0"] * 7 + [f"{digest}:1"]


KILLED_BUILDER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from rbln_eval.store import Store
from storehelpers import make_key

def builder(ctx):
    (ctx.path / "model.rbln").write_bytes(b"half" * 1000)
    Path(sys.argv[3]).write_text("writing")
    time.sleep(60)

Store(sys.argv[1]).get_or_build(make_key(), builder)
"""


def test_sigkill_mid_write_leaves_nothing_visible(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILDER, str(store.root), str(Path(__file__).parent), str(flag)]
    )
    deadline = time.time() + 60
    while not flag.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    key = make_key()
    assert store.lookup(key.digest) is None
    assert store.digests() == []
    leftovers = list((store.root / "tmp").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(key.digest)
    with pytest.raises(BundleNotFoundError):
        store.resolve(key.digest)
    counter = tmp_path / "count"
    result = store.get_or_build(key, counting_builder(counter))
    assert result.built and counter.read_text() == "x"
    assert store.verify(result.bundle) == []
    assert list((store.root / "tmp").iterdir()) == []  # the dead build's temporary is gone


def test_failed_build_records_and_retries(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    key = make_key()

    def broken(ctx: BuildContext) -> None:
        ctx.write_log("step 1 ok")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        store.get_or_build(key, broken)
    record = store.failure(key.digest)
    assert record is not None
    assert record["error"] == "RuntimeError: compiler crashed"
    assert record["log_tail"] == ["step 1 ok"]
    assert store.lookup(key.digest) is None and list((store.root / "tmp").iterdir()) == []
    with pytest.raises(BuildFailedError, match="failed"):
        store.get_or_build(key, counting_builder(tmp_path / "c"), retry_failed=False)
    result = store.get_or_build(key, counting_builder(tmp_path / "c"))
    assert result.built and store.failure(key.digest) is None


def test_interrupted_build_leaves_no_failure_record(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")

    def interrupted(ctx: BuildContext) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_build(make_key(), interrupted)
    assert store.failures() == {} and list((store.root / "tmp").iterdir()) == []


def test_unwritable_store_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreNotWritableError, match=r"store .*/file/store is not writable \(Not a directory\)"):
        Store(blocker / "store").get_or_build(make_key(), write_files)
    assert blocker.read_text() == "x"


def test_resolve_by_prefix_alias_and_path(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    keys = [make_key(compile_config={"max_seq_len": n}) for n in range(64, 64 + 40)]
    for key in keys:
        store.get_or_build(key, write_files)
    key = keys[0]
    assert store.resolve(key.digest[:12]).digest == key.digest
    store.set_ref("org/tiny@main:bs1", key.digest)
    assert store.resolve("org/tiny@main:bs1").digest == key.digest
    assert store.resolve(str(store.bundle_path(key.digest))).digest == key.digest
    with pytest.raises(BundleNotFoundError, match="too short"):
        store.resolve(key.digest[:3])
    digests = [k.digest for k in keys]
    with pytest.raises(BundleNotFoundError, match="no bundle matches"):
        store.resolve("ffff" if not any(d.startswith("ffff") for d in digests) else "eeee")


def test_ambiguous_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    digests = []
    n = 64
    while True:  # build keys until two share a 4-character prefix
        key = make_key(compile_config={"max_seq_len": n})
        store.get_or_build(key, write_files)
        digests.append(key.digest)
        n += 1
        prefixes = [d[:4] for d in digests]
        dup = next((p for p in prefixes if prefixes.count(p) > 1), None)
        if dup:
            break
    with pytest.raises(AmbiguousReferenceError, match=f"prefix '{dup}' matches 2 bundles"):
        store.resolve(dup)


def test_corrupt_manifest_is_never_served_nor_replaced(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    key = make_key()
    bundle = store.get_or_build(key, write_files).bundle
    (bundle.path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CorruptBundleError, match="malformed manifest"):
        store.lookup(key.digest)
    with pytest.raises(CorruptBundleError):
        store.get_or_build(key, counting_builder(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    assert (bundle.path / MANIFEST_NAME).read_text() == "{not json"


def test_truncated_file_fails_the_cheap_lookup(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    bundle = store.get_or_build(make_key(), write_files).bundle
    (bundle.path / "model.rbln").write_bytes(b"short")
    with pytest.raises(CorruptBundleError, match="model.rbln has 5 bytes, the manifest says 7"):
        store.lookup(bundle.digest)


def test_verify_names_altered_missing_and_extra_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    bundle = store.get_or_build(make_key(), write_files).bundle
    (bundle.path / "config.json").write_text('{"model_type": "llamb"}')
    (bundle.path / "extra.bin").write_bytes(b"?")
    problems = {(p.file, p.reason) for p in store.verify(bundle)}
    assert problems == {("config.json", "sha256 mismatch"), ("extra.bin", "not in the manifest")}


def test_gc_removes_leftovers_failures_and_dangling_refs(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    kept = store.get_or_build(make_key(), write_files).bundle
    store.set_ref("keep", kept.digest)
    other = store.get_or_build(make_key(model_class="seq2seq"), write_files).bundle
    store.set_ref("gone", other.digest)
    store.remove(other)
    assert store.refs() == {"keep": kept.digest}
    store.set_ref("dangling", kept.digest)
    (store.refs_dir / "dangling").write_text("0" * 64)
    orphan = store.get_or_build(make_key(target="SIM-RBLN-CA22"), write_files).bundle
    leftover = store.tmp_dir / f"{'1' * 64}.host.1.abcd"
    leftover.mkdir()
    with pytest.raises(RuntimeError):
        store.get_or_build(make_key(compile_config={"max_seq_len": 1}), lambda ctx: (_ for _ in ()).throw(RuntimeError("x")))
    planned = store.gc(dry_run=True)
    assert sorted(i.kind for i in planned) == ["failure", "ref", "tmp"]
    assert leftover.exists()
    removed = store.gc(unreferenced=True)
    assert sorted(i.kind for i in removed) == ["bundle", "failure", "ref", "tmp"]
    assert store.digests() == [kept.digest] and orphan.digest not in store.digests()
    assert store.refs() == {"keep": kept.digest} and store.failures() == {} and not leftover.exists()


def test_gc_keeps_a_build_in_progress(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.ensure_writable()
    digest = "2" * 64
    running = store.tmp_dir / f"{digest}.host.1.abcd"
    running.mkdir()
    lock = store.lock(digest)
    lock.acquire()
    try:
        assert store.gc() == []
    finally:
        lock.release()
    assert [i.kind for i in store.gc()] == ["tmp"]
