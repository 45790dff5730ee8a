"""The air-gapped round trip: ``prefetch`` a task's dataset and a model from the local Hub-compatible server,
copy the HF cache to another machine, stop the server, and ``run`` there with the Hub and datasets offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hubserver import HubServer
from lmhelpers import MODEL_DIRS
from remotehelpers import cli, ok, results_file
from taskhelpers import TINY_HUB_DATASET, write_tiny_hub_task

MODEL = "org/demo-llama"
ROWS = [{"text": f"The {word} statement is", "target": f" {tail}"} for word, tail in
        [("return", "executed"), ("import", "executed"), ("pass", "a null operation"), ("del", "recursive"),
         ("global", "a declaration"), ("raise", "executed")]]
README = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: data/test.jsonl\n---\n# tiny\n"


@pytest.fixture
def hub(tmp_path: Path):
    server = HubServer(tmp_path / "hub").start()
    server.create_dataset(TINY_HUB_DATASET, {"README.md": README, "data/test.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS).encode()})
    server.create_repo(MODEL)
    files = {p.name: p.read_bytes() for p in Path(MODEL_DIRS["causal"]).iterdir() if p.is_file()}
    files["README.md"] = b"# demo llama\n"
    files["flax_model.msgpack"] = b"weights nobody here reads"
    server.commit(MODEL, "main", files, "add model")
    yield server
    server.stop()


def machine(hf_home: Path, endpoint: str, offline: bool) -> dict[str, str]:
    flag = "1" if offline else "0"
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": flag, "HF_DATASETS_OFFLINE": flag,
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_prefetch_then_run_air_gapped(hub: HubServer, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_tiny_hub_task(tasks)
    connected = machine(tmp_path / "connected-hf", hub.url, offline=False)

    refused = cli("prefetch", "--tasks", "tiny_hub", "--include_path", str(tasks), env={**connected, "HF_HUB_OFFLINE": "1"})
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: prefetch downloads into the HF caches: unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE "
        "(run it on a machine that reaches the Hub)"
    )

    fetched = ok(cli("prefetch", "--tasks", "tiny_hub", "--include_path", str(tasks), "--model", MODEL, env=connected))
    commit = hub.repos[MODEL].branches["main"]
    lines = fetched.stdout.strip().splitlines()
    assert re.fullmatch(r"task tiny_hub: org/tiny \(\d+\.\d KB\)", lines[0]), lines
    assert re.fullmatch(rf"model {MODEL} main@{commit}: 5 files \(\d+\.\d MB\)", lines[1]), lines
    assert "copy them to the offline machine and run there with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in fetched.stderr
    snapshot = tmp_path / "connected-hf" / "hub" / "models--org--demo-llama" / "snapshots" / commit
    assert not (snapshot / "flax_model.msgpack").exists() and (snapshot / "model.safetensors").is_file()

    hub.stop()  # the offline machine has no Hub at all
    offline_home = tmp_path / "offline-hf"
    shutil.copytree(tmp_path / "connected-hf", offline_home, symlinks=True)
    shutil.rmtree(tmp_path / "connected-hf")
    air_gapped = machine(offline_home, hub.url, offline=True)
    store, out = tmp_path / "store", tmp_path / "results"
    result = ok(cli(
        "run", "--model", MODEL, "--batch-size", "2", "--tasks", "tiny_hub", "--include_path", str(tasks),
        "--store", str(store), "--output_path", str(out), env=air_gapped,
    ))
    results = results_file(out)
    assert results["n-samples"]["tiny_hub"]["effective"] == len(ROWS)
    assert 0.0 <= results["results"]["tiny_hub"]["acc,none"] <= 1.0
    key = results["config"]["rbln"]["key"]
    assert key["source"] == {"kind": "hub", "id": MODEL, "revision": commit}
    assert "tiny_hub" in result.stdout
