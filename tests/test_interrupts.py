"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during ``run``, a data-parallel ``run``,
``compile`` and ``pull``: exit 130 within 2 s, no process of the command left a few seconds later, no results
file, and the store as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import tree_snapshot
from hubserver import HubServer
from lmhelpers import MODEL_DIRS, TASKS_DIR, shared_bundle
from rbln_eval.remotes.hub import branch_name
from rbln_eval.store import Bundle
from remotehelpers import TOKEN, cli, ok

EXIT_WITHIN = 2.0
GONE_WITHIN = 5.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return shared_bundle(tmp_path_factory)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _as_from_a_terminal() -> None:
    """A command started in a terminal's foreground has the default SIGINT disposition; these tests may run
    under a shell that started them in the background (SIGINT ignored, inherited through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(args: list[str], env: dict[str, str], ready: Callable[[str], bool], settle: float = 0.5) -> tuple[int, str, float]:
    """Start ``rbln-eval ARGS`` in its own process group, wait for ``ready(stderr so far)``, then SIGINT the group.

    Returns the exit status, the whole stderr, and the seconds from SIGINT to exit; asserts that no process of
    the group is left :data:`GONE_WITHIN` seconds later.
    """
    full = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbln_eval", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=full, start_new_session=True, preexec_fn=_as_from_a_terminal,
    )
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    try:
        while not ready("".join(chunks)):
            assert proc.poll() is None, "".join(chunks)[-3000:]
            assert time.monotonic() < deadline, "".join(chunks)[-3000:]
            time.sleep(0.05)
        time.sleep(settle)
        assert proc.poll() is None, "".join(chunks)[-3000:]
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
        gone = time.monotonic() + GONE_WITHIN
        while group_alive(proc.pid) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not group_alive(proc.pid), "a process of the command outlived it"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(5)
    return code, "".join(chunks), elapsed


def check_interrupted(code: int, stderr: str, elapsed: float) -> None:
    assert code == 130, stderr[-3000:]
    assert elapsed < EXIT_WITHIN, elapsed
    assert "Traceback" not in stderr, stderr[-3000:]


@pytest.mark.parametrize(
    ("extra", "ready"),
    [([], "loaded "), (["--data-parallel", "2"], "loaded 2 replicas")],
    ids=["single", "data-parallel"],
)
def test_interrupted_run(bundle: Bundle, tmp_path: Path, extra: list[str], ready: str) -> None:
    store = bundle.path.parent.parent
    before = tree_snapshot(store)
    out = tmp_path / "results"
    args = ["run", "--artifact", bundle.digest[:8], "--tasks", "demo_gen", "--include_path", TASKS_DIR,
            "--store", str(store), "--output_path", str(out), *extra]
    code, stderr, elapsed = interrupt(args, {"RBLN_EVAL_SIM_LATENCY_MS": "100"}, lambda text: ready in text, settle=1.0)
    check_interrupted(code, stderr, elapsed)
    assert not list(out.rglob("results_*.json")) if out.exists() else True
    assert tree_snapshot(store) == before


def test_interrupted_compile(bundle: Bundle) -> None:
    store = bundle.path.parent.parent
    before = tree_snapshot(store)
    args = ["compile", str(MODEL_DIRS["causal"]), "--batch-size", "3", "--store", str(store)]
    code, stderr, elapsed = interrupt(args, {"RBLN_EVAL_SIM_COMPILE_MS": "4000"}, lambda text: "compiling " in text, settle=1.0)
    check_interrupted(code, stderr, elapsed)
    assert tree_snapshot(store) == before
    assert not any((store / "tmp").iterdir())


def test_interrupted_pull(bundle: Bundle, tmp_path: Path) -> None:
    hub = HubServer(tmp_path / "hub", token=TOKEN).start()
    try:
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        ok(cli("push", bundle.digest, "--repo", "org/interrupted", "--store", str(bundle.path.parent.parent), env=env))
        hub.delay[".rbln"] = 30.0
        store = tmp_path / "store"
        args = ["pull", f"hf://org/interrupted@{branch_name(bundle.digest)}", "--store", str(store)]
        code, stderr, elapsed = interrupt(args, env, lambda _text: hub.count("GET", ".rbln") > 0, settle=0.3)
        check_interrupted(code, stderr, elapsed)
        assert tree_snapshot(store) == {}
    finally:
        hub.delay.clear()
        hub.stop()


def test_an_interrupt_swallowed_by_a_finalizer_happens_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt raised inside ``__del__`` is dropped by Python; it is delivered again outside it."""
    from rbln_eval.util import interrupts

    monkeypatch.setattr(interrupts, "_installed", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupts.install()

        class Finalized:
            def __del__(self) -> None:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            Finalized()  # dropped at once: its KeyboardInterrupt is "ignored" by Python
            time.sleep(2.0)
    finally:
        signal.signal(signal.SIGINT, previous)
