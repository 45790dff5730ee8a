"""Bundles without pickles: optimum-rbln's ``torch_artifacts.pth`` carried as safetensors.

Models compiled with input embeddings (the language model of a vision-language model, vision towers with a
CPU patch embedding) make optimum-rbln write ``torch_artifacts.pth`` — a ``{group: state_dict}`` dict — and
read it back with ``torch.load(weights_only=False)``. Right after a compile, :func:`convert_pickles` turns
each one into ``torch_artifacts.safetensors`` (tensor names ``group.param``) and deletes the pickle, so a
bundle holds only tensors. Before a load, :func:`prepare_load_dir` checks those tensors against the bundle's
manifest and writes the ``.pth`` optimum-rbln expects into a local *load view*: a directory of symlinks to
the bundle's files plus the rebuilt pickles, in the user cache (never in the store, never pushed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbln_eval.errors import CorruptBundleError
from rbln_eval.util.hashing import cache_dir, sha256_file
from rbln_eval.errors import ArtifactConversionError

if TYPE_CHECKING:
    from rbln_eval.store import Bundle

PICKLE_NAME = "torch_artifacts.pth"
TENSORS_NAME = "torch_artifacts.safetensors"
_METADATA = {"format": "pt", "rbln_eval": "torch_artifacts", "schema": "1"}
_STAMP = ".rbln-eval-view.json"


def convert_pickles(directory: Path) -> list[str]:
    """Replace every ``torch_artifacts.pth`` under ``directory`` by safetensors; the relative paths converted.

    The pickle was just written by this build; it is still read with ``weights_only=True``.
    """
    import torch
    from safetensors.torch import save_file

    converted = []
    for path in sorted(directory.rglob(PICKLE_NAME)):
        try:
            groups = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactConversionError(f"cannot read {path.relative_to(directory)} as tensors: {exc}") from None
        flat: dict[str, Any] = {}
        if not isinstance(groups, dict):
            raise ArtifactConversionError(f"{path.relative_to(directory)} holds a {type(groups).__name__}, not a dict")
        for group, state in groups.items():
            if not isinstance(state, dict) or "." in str(group):
                raise ArtifactConversionError(f"{path.relative_to(directory)}: entry {group!r} is not a state dict")
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    raise ArtifactConversionError(f"{path.relative_to(directory)}: {group}.{name} is not a tensor")
                flat[f"{group}.{name}"] = tensor.detach().clone().contiguous()
        save_file(flat, str(path.with_name(TENSORS_NAME)), metadata=_METADATA)
        path.unlink()
        converted.append(path.relative_to(directory).as_posix())
    return converted


def tensor_files(bundle: "Bundle") -> list[str]:
    """The bundle's converted artifact files (relative paths)."""
    return sorted(n for n in bundle.manifest.files if n == TENSORS_NAME or n.endswith("/" + TENSORS_NAME))


def load_groups(path: Path) -> dict[str, "OrderedDict[str, Any]"]:
    """``{group: state_dict}`` from a converted artifact file (the structure optimum-rbln reads)."""
    from safetensors import safe_open

    groups: dict[str, OrderedDict[str, Any]] = {}
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():
            group, _, param = name.partition(".")
            groups.setdefault(group, OrderedDict())[param] = fh.get_tensor(name)
    return groups


def views_root() -> Path:
    return cache_dir() / "load-views"


def prepare_load_dir(bundle: "Bundle", root: Path | None = None) -> Path:
    """The directory optimum-rbln loads ``bundle`` from: the bundle itself, or its load view.

    A view is rebuilt when missing or when it does not match the bundle's manifest; the artifact tensors are
    re-hashed against the manifest before anything is written from them.
    """
    names = tensor_files(bundle)
    if not names:
        return bundle.path
    root = root or views_root()
    view = root / bundle.digest
    expected = {name: bundle.manifest.files[name].sha256 for name in names}
    source = str(bundle.path.resolve())
    if _view_is_current(view, expected, source):
        return view
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{bundle.digest}.lock")):  # replicas loading at once build the view once
        if _view_is_current(view, expected, source):
            return view
        _build_view(bundle, names, expected, source, view)
    return view


def _build_view(bundle: "Bundle", names: list[str], expected: dict[str, str], source: str, view: Path) -> None:
    root = view.parent
    for name in names:
        if sha256_file(bundle.path / name) != expected[name]:
            raise CorruptBundleError(
                f"bundle {bundle.digest[:12]}: {name} does not match its manifest; run `rbln-eval verify` and pull it again"
            )
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.digest[:16]}.", dir=root))
    try:
        import torch

        for name in bundle.manifest.files:
            link = tmp / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((bundle.path / name).resolve(), link)
        pickles: dict[str, str] = {}
        for name in names:
            target = (tmp / name).with_name(PICKLE_NAME)
            torch.save(load_groups(bundle.path / name), target)
            pickles[target.relative_to(tmp).as_posix()] = sha256_file(target)
        (tmp / _STAMP).write_text(json.dumps({"bundle": source, "tensors": expected, "pickles": pickles}, sort_keys=True))
        if view.exists():  # stale (the store moved, or the view was altered): set aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{bundle.digest[:16]}.stale.", dir=root))
            os.rename(view, stale / "view")
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, view)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _view_is_current(view: Path, expected: dict[str, str], source: str) -> bool:
    """True when ``view`` was rebuilt from exactly these tensors and its pickles are the ones written then."""
    try:
        stamp = json.loads((view / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("tensors") != expected or stamp.get("bundle") != source:
        return False
    pickles = stamp.get("pickles") or {}
    try:
        return bool(pickles) and all(sha256_file(view / name) == digest for name, digest in pickles.items())
    except OSError:
        return False
