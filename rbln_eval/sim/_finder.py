"""Import hook serving the simulated `rebel` package and its `rebel-compiler` distribution.

`SimulatorFinder` sits on `sys.meta_path`. It resolves `rebel` and `rebel.*` to the modules in
`rbln_eval/sim/rebel/`, and answers `importlib.metadata` queries for `rebel-compiler` with a
distribution whose version is `SIM_VERSION`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from ._version import SIM_VERSION

__all__ = ["DIST_NAME", "REBEL_DIR", "SimulatorDistribution", "SimulatorFinder"]

REBEL_DIR = Path(__file__).resolve().parent / "rebel"
DIST_NAME = "rebel-compiler"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class SimulatorDistribution(importlib.metadata.Distribution):
    """Metadata of the simulated `rebel-compiler` distribution."""

    _METADATA = (
        "Metadata-Version: 2.1\n"
        f"Name: {DIST_NAME}\n"
        f"Version: {SIM_VERSION}\n"
        "Summary: rebel-compiler simulator of rbln-eval (CPU, no NPU)\n"
    )

    def read_text(self, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            return self._METADATA
        if filename == "top_level.txt":
            return "rebel\n"
        return None

    def locate_file(self, path: str | Path) -> Path:
        return REBEL_DIR.parent / path


class SimulatorFinder(importlib.abc.MetaPathFinder):
    """Meta path finder for `rebel` and `rebel.*` (the simulator's drop-in package)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "rebel" and not fullname.startswith("rebel."):
            return None
        location = REBEL_DIR.joinpath(*fullname.split(".")[1:])
        package_init = location / "__init__.py"
        if package_init.is_file():
            return importlib.util.spec_from_file_location(
                fullname, package_init, submodule_search_locations=[str(location)]
            )
        module_file = location.with_suffix(".py")
        if module_file.is_file():
            return importlib.util.spec_from_file_location(fullname, module_file)
        return None

    def find_distributions(
        self, context: importlib.metadata.DistributionFinder.Context | None = None
    ) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None) if context is not None else None
        if name is None or _normalize(name) == _normalize(DIST_NAME):
            yield SimulatorDistribution()
