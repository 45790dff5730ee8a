"""`rbln-eval doctor` and `scripts/check_npu.py`: no NPU, the simulated node, and a node with `rbln-stat`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbln_eval.families.base import Family
from rbln_eval.families.registry import families, register, unregister
from rbln_eval.families.vision_language.compile import SCORED_VLM_TYPES

REPO = Path(__file__).resolve().parent.parent
RBLN_STAT_JSON = Path(__file__).parent / "data" / "rbln_stat.json"
SECRET = "hf_doctorTestTokenThatMustNeverBePrinted"


def doctor(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "200", "HF_TOKEN": SECRET}
    for name, value in env.items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout and SECRET not in result.stderr
    return result


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    (root / "remotes.json").write_text(json.dumps({"remotes": [{"name": "team", "kind": "dir", "path": str(tmp_path / "shared")}]}))
    return root


def test_doctor_without_npu(store: Path) -> None:
    result = doctor("-m", "rbln_eval", "doctor", "--store", str(store), env={"RBLN_EVAL_SIMULATE": None, "PATH": os.defpath})
    out = result.stdout
    assert "rebel-compiler  not installed" in out
    assert "NPUs: 0 (no rebel SDK; rbln-smi (or rbln-stat) not on PATH)" in out
    assert "no NPU found: bundles can still be compiled for a target, e.g. `rbln-eval compile MODEL --npu RBLN-CA25`" in out
    assert "  to try rbln-eval here without an NPU, set RBLN_EVAL_SIMULATE=1: a CPU simulator of the rebel SDK" in out
    assert "CUDA: none" in out and "this machine: cpu" in out
    assert f"store: {store} (0 bundle(s)" in out
    assert f"team  dir  {store.parent / 'shared'}" in out
    assert "Hub token: present, from environment (HF_TOKEN)" in out
    for package in ("optimum-rbln", "torch", "transformers", "lm-eval"):
        assert f"  {package}" in out
    # without the rebel SDK optimum-rbln lists nothing; the verified architectures are rbln-eval's own list
    assert_families_line(out, f"image-text-to-text (verified: {', '.join(SCORED_VLM_TYPES)})")


def assert_families_line(out: str, vision_language: str) -> None:
    """The one ``families:`` line: the vision-language entry as given, every other registered family by name."""
    lines = [line for line in out.splitlines() if line.startswith("families: ")]
    assert len(lines) == 1, out
    assert vision_language in lines[0]
    others = lines[0].removeprefix("families: ").replace(vision_language, "").split(", ")
    assert sorted(name for name in others if name) == sorted(f.name for f in families() if f.name != "image-text-to-text")


def test_doctor_on_the_simulated_node(store: Path) -> None:
    result = doctor(
        "-m", "rbln_eval", "doctor", "--store", str(store), "--json",
        env={"RBLN_EVAL_SIMULATE": "1", "RBLN_EVAL_SIM_DEVICES": "8", "PATH": os.defpath},
    )
    data = json.loads(result.stdout)
    devices = data["devices"]
    assert devices["kind"] == "npu" and devices["rebel"] == "simulator" and devices["rbln_stat"] is None
    assert [(n["index"], n["name"], n["available"], n["busy"]) for n in devices["npus"]] == [
        (i, "RBLN-CA25", True, False) for i in range(8)
    ]
    assert data["default_device"] == "npu:0"
    assert data["toolchain"]["rebel-compiler"].endswith("+sim")
    assert data["hub_token"] == {"present": True, "source": "environment (HF_TOKEN)"}
    assert data["remotes"] == [{"name": "team", "kind": "dir", "location": str(store.parent / "shared")}]
    # the registry's families in detection order, each with what optimum-rbln compiles and what rbln-eval verifies
    assert data["families"] == [
        {"name": f.name, "compiled": f.supported_types(), "verified": f.verified_types()} for f in families()
    ]
    by_name = {f["name"]: f for f in data["families"]}
    vision_language = by_name.pop("image-text-to-text")
    assert vision_language["verified"] == list(SCORED_VLM_TYPES) and "llava_next" in vision_language["verified"]
    assert set(vision_language["verified"]) < set(vision_language["compiled"])
    assert all(f["verified"] == f["compiled"] and f["compiled"] for f in by_name.values())
    text = doctor("-m", "rbln_eval", "doctor", "--store", str(store), env={"RBLN_EVAL_SIMULATE": "1", "PATH": os.defpath}).stdout
    compiled = len(vision_language["compiled"])
    assert_families_line(text, f"image-text-to-text (verified: {', '.join(SCORED_VLM_TYPES)}; optimum-rbln compiles {compiled})")


class PartlyVerifiedFamily(Family):
    """A toy family that verifies one of the three types it compiles."""

    name = "toy-partly-verified"

    def supported_types(self) -> list[str]:
        return ["alpha", "beta", "gamma"]

    def verified_types(self) -> list[str]:
        return ["beta"]


def test_doctor_lists_any_family_through_the_registry(store: Path) -> None:
    """Doctor names no family itself: a family registered like a plugin shows up with its verified types."""
    from rbln_eval.execution.doctor import collect, families_line
    from rbln_eval.execution.devices import DeviceReport
    from rbln_eval.store import Store

    register(PartlyVerifiedFamily())
    try:
        data = collect(Store(store), DeviceReport())
    finally:
        unregister(PartlyVerifiedFamily.name)
    toy = {"name": "toy-partly-verified", "compiled": ["alpha", "beta", "gamma"], "verified": ["beta"]}
    assert toy in data["families"]
    assert "toy-partly-verified (verified: beta; optimum-rbln compiles 3)" in families_line(data["families"])


def test_check_npu_script_with_rbln_stat(store: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "rbln-stat"
    stand_in.write_text(f"#!/bin/sh\n[ \"$1\" = \"-j\" ] || exit 3\ncat '{RBLN_STAT_JSON}'\n")
    stand_in.chmod(0o755)
    result = doctor(
        str(REPO / "scripts" / "check_npu.py"), "--store", str(store),
        env={"RBLN_EVAL_SIMULATE": "1", "RBLN_EVAL_SIM_DEVICES": "4", "PATH": f"{bin_dir}{os.pathsep}{os.defpath}"},
    )
    lines = result.stdout.splitlines()
    assert f"NPUs: 4 (rebel simulator (RBLN_EVAL_SIMULATE); rbln-stat at {stand_in}; KMD 1.3.73)" in lines
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit()}
    assert rows["0"] == ["0", "RBLN-CA25", "rbln0", "2.0", "GB", "/", "16.0", "GB", "41C", "37.5", "busy"]
    assert rows["1"][-1] == "busy" and rows["2"][-1] == "free" and rows["3"][-1] == "free"
    assert "  runs without --device use npu:2 (the first free NPU); choose with --device npu:N" in lines


def test_rbln_smi_is_preferred_to_rbln_stat(store: Path, tmp_path: Path) -> None:
    """With both tools on PATH, rbln-smi's JSON is read (rbln-stat would fail); a device not ``normal`` is unavailable."""
    data = json.loads(RBLN_STAT_JSON.read_text())
    for entry in data["devices"]:
        entry["status"] = "normal"
    data["devices"][3]["status"] = "error"
    smi_json = tmp_path / "rbln_smi.json"
    smi_json.write_text(json.dumps(data))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "rbln-smi"
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = \"-j\" ] || exit 3\ncat '{smi_json}'\n")
    stat = bin_dir / "rbln-stat"
    stat.write_text("#!/bin/sh\necho deprecated >&2\nexit 7\n")
    for tool in (smi, stat):
        tool.chmod(0o755)
    env = {"RBLN_EVAL_SIMULATE": "1", "RBLN_EVAL_SIM_DEVICES": "4", "PATH": f"{bin_dir}{os.pathsep}{os.defpath}"}
    result = doctor("-m", "rbln_eval", "doctor", "--store", str(store), "--json", env=env)
    devices = json.loads(result.stdout)["devices"]
    assert devices["rbln_stat"] == str(smi) and devices["smi_tool"] == "rbln-smi"
    assert devices["problems"] == []
    assert [(n["index"], n["available"], n["busy"]) for n in devices["npus"]] == [
        (0, True, True), (1, True, True), (2, True, False), (3, False, False)
    ]
    text = doctor("-m", "rbln_eval", "doctor", "--store", str(store), env=env).stdout
    assert f"NPUs: 4 (rebel simulator (RBLN_EVAL_SIMULATE); rbln-smi at {smi}; KMD 1.3.73)" in text
