"""The package's layers as a checked contract: import-linter, configured in pyproject.toml ``[tool.importlinter]``.

The contracts hold for the package as it is, and each of them reports a copy of the package that breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parent.parent
CONTRACTS = 4

#: The layers, top to bottom: a module imports only from its own layer or the layers below it.
LAYERS = [
    "cli", "sweep", "lm : multimodal", "api", "evaluation", "execution", "build", "families", "core", "remotes",
    "store", "identity", "util", "errors",
]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``rbln_eval`` package under ``root``, with ``root``'s pyproject.toml."""
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "250"},
    )


def test_the_contracts_are_the_documented_ones() -> None:
    config = read_configuration(str(REPO / "pyproject.toml"))
    assert config["session_options"] == {"root_packages": ["rbln_eval"], "exclude_type_checking_imports": "True"}
    contracts = {contract["name"]: contract for contract in config["contracts_options"]}
    assert len(contracts) == CONTRACTS
    layers = next(contract for contract in contracts.values() if contract["type"] == "layers")
    assert layers["containers"] == ["rbln_eval"]
    assert layers["layers"] == LAYERS
    assert layers["exhaustive"] == "True"
    layered = {f"rbln_eval.{module}" for layer in LAYERS for module in layer.replace(":", " ").split()}
    simulator = contracts["The simulator imports nothing else of rbln_eval"]
    assert set(simulator["forbidden_modules"]) == layered | {"rbln_eval.demo"}
    protected = next(contract for contract in contracts.values() if contract["type"] == "protected")
    assert protected["allowed_importers"] == ["rbln_eval.families"]
    # every family folder is protected and independent of the others: a new family cannot be forgotten here
    folders = sorted(f"rbln_eval.families.{path.name}" for path in (REPO / "rbln_eval" / "families").iterdir()
                     if (path / "__init__.py").is_file())
    independent = next(contract for contract in contracts.values() if contract["type"] == "independence")
    assert sorted(independent["modules"]) == folders
    assert sorted(protected["protected_modules"]) == folders


def test_the_package_keeps_its_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert f"Contracts: {CONTRACTS} kept, 0 broken." in result.stdout, result.stdout[-6000:]


def add_module(root: Path, name: str, source: str) -> None:
    """Write module ``name`` (dotted) under ``root``."""
    path = root.joinpath(*name.split(".")).with_suffix(".py")
    path.write_text(textwrap.dedent(source))


def test_each_contract_reports_a_package_that_breaks_it(tmp_path: Path) -> None:
    shutil.copytree(
        REPO / "rbln_eval", tmp_path / "rbln_eval",
        ignore=lambda directory, names: [
            n for n in names if n == "__pycache__" or not (n.endswith(".py") or Path(directory, n).is_dir())
        ],
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    add_module(tmp_path, "rbln_eval.util.upward", "from rbln_eval.cli import main\n")
    add_module(tmp_path, "rbln_eval.util.annotated", """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:  # an annotation, not a dependency
            from rbln_eval.api import Obtained
        """)
    add_module(tmp_path, "rbln_eval.stray", "import json\n")
    add_module(tmp_path, "rbln_eval.sim.leak", "from rbln_eval.util import units\n")
    add_module(tmp_path, "rbln_eval.families.seq2seq.borrowed", "from rbln_eval.families.causal.backend import CausalBackend\n")
    add_module(tmp_path, "rbln_eval.families.vision_language.encoder", "from rbln_eval.families.seq2seq import backend\n")
    add_module(tmp_path, "rbln_eval.families.causal.pictures", "from rbln_eval.families.vision_language import backend\n")
    add_module(tmp_path, "rbln_eval.build.shortcut", "from rbln_eval.families.causal import CausalFamily\n")

    result = lint_imports(tmp_path)
    report = result.stdout
    assert result.returncode == 1, report[-6000:] + result.stderr[-3000:]
    assert f"Contracts: 0 kept, {CONTRACTS} broken." in report, report
    for line in [
        "rbln_eval.util is not allowed to import rbln_eval.cli:",
        "- rbln_eval.util.upward -> rbln_eval.cli (l.1)",
        "The following modules are not listed as layers:\n\n- rbln_eval.stray\n",
        "rbln_eval.sim.leak -> rbln_eval.util.units (l.1)",
        "rbln_eval.families.seq2seq is not allowed to import rbln_eval.families.causal:",
        "rbln_eval.families.causal is not allowed to import rbln_eval.families.vision_language:",
        "rbln_eval.families.seq2seq.borrowed -> rbln_eval.families.causal.backend (l.1)",
        "rbln_eval.families.vision_language.encoder -> rbln_eval.families.seq2seq.backend (l.1)",
        "rbln_eval.families.causal.pictures -> rbln_eval.families.vision_language.backend (l.1)",
        "- rbln_eval.build.shortcut -> rbln_eval.families.causal (l.1)",
    ]:
        assert line in report, (line, report)
    assert "rbln_eval.util.annotated" not in report
