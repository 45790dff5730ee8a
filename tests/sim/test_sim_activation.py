"""Activation of the simulator: only when asked for, never over a real `rebel` unless forced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rbln_eval.sim as sim

PROBE = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, sys
    import rbln_eval
    spec = importlib.util.find_spec("rebel")
    try:
        version = importlib.metadata.version("rebel-compiler")
    except importlib.metadata.PackageNotFoundError:
        version = None
    print(json.dumps({
        "active": rbln_eval.sim.is_active(),
        "rebel": spec.origin if spec else None,
        "version": version,
        "env": __import__("os").environ.get("RBLN_EVAL_SIMULATE"),
    }))
    """
)


def _run(code: str, env_update: dict[str, str | None], pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBLN_EVAL_")}
    for key, value in env_update.items():
        if value is not None:
            env[key] = value
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def real_rebel(tmp_path) -> Path:
    """A directory holding a stand-in for an installed real `rebel` package."""
    package = tmp_path / "site" / "rebel"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("REAL = True\n")
    return tmp_path / "site"


def test_env_var_activates_on_import():
    result = _run(PROBE, {"RBLN_EVAL_SIMULATE": "1"})
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["active"] is True
    assert state["rebel"].endswith(os.path.join("rbln_eval", "sim", "rebel", "__init__.py"))
    assert state["version"] == sim.SIM_VERSION == "0.12.0+sim"


def test_nothing_happens_without_env_var(real_rebel):
    result = _run(PROBE, {})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"active": False, "rebel": None, "version": None, "env": None}
    result = _run(PROBE + "import rebel; assert rebel.REAL\n", {}, pythonpath=real_rebel)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["rebel"] == str(real_rebel / "rebel" / "__init__.py")


def test_real_rebel_is_never_shadowed_unless_forced(real_rebel):
    result = _run(PROBE, {"RBLN_EVAL_SIMULATE": "1"}, pythonpath=real_rebel)
    assert result.returncode != 0
    assert "SimulatorConflictError: a real rebel SDK is importable" in result.stderr
    assert "refusing to shadow it with the simulator" in result.stderr

    result = _run(
        PROBE + "import rebel; assert rebel.__rbln_sim__\n", {"RBLN_EVAL_SIMULATE": "force"}, pythonpath=real_rebel
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "0.12.0+sim"

    code = "import rebel, rbln_eval.sim as s\ns.activate(force=True)\n"
    result = _run(code, {}, pythonpath=real_rebel)
    assert "a real rebel SDK is already imported" in result.stderr


def test_python_activation_sets_env_for_children_and_deactivates():
    code = textwrap.dedent(
        """
        import importlib.util, os, rbln_eval.sim as s
        assert not s.is_active() and importlib.util.find_spec("rebel") is None
        s.activate()
        assert s.is_active() and os.environ["RBLN_EVAL_SIMULATE"] == "1"
        import importlib.metadata as md; assert md.version("rebel-compiler") == s.SIM_VERSION
        import rebel; assert rebel.get_npu_name() == "RBLN-CA25"
        s.deactivate()
        assert not s.is_active() and "RBLN_EVAL_SIMULATE" not in os.environ
        assert importlib.util.find_spec("rebel") is None
        print("ok")
        """
    )
    result = _run(code, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_bad_env_value_is_an_error():
    result = _run("import rbln_eval", {"RBLN_EVAL_SIMULATE": "maybe"})
    assert result.returncode != 0
    assert "RBLN_EVAL_SIMULATE must be one of" in result.stderr


def test_optimum_rbln_imports_silently_on_the_simulator():
    code = (
        "import warnings; warnings.simplefilter('error', ImportWarning)\n"
        "import rbln_eval, optimum.rbln\nprint(optimum.rbln.__version__)"
    )
    result = _run(code, {"RBLN_EVAL_SIMULATE": "1"})
    assert result.returncode == 0, result.stderr
    assert "Version mismatch" not in result.stderr


def test_sim_target_naming():
    assert sim.SIM_TARGET_PREFIX == "SIM-"
    assert sim.sim_target("RBLN-CA25") == "SIM-RBLN-CA25"
    assert sim.sim_target("SIM-RBLN-CA25") == "SIM-RBLN-CA25"
    assert sim.is_active()
