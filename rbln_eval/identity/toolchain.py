"""The installed packages that shape a compiled bundle."""

from __future__ import annotations

import importlib.metadata

TOOLCHAIN_PACKAGES = ("rebel-compiler", "optimum-rbln", "torch", "transformers")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def toolchain_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a compiled bundle (``None`` when absent)."""
    return {name: package_version(name) for name in TOOLCHAIN_PACKAGES}
