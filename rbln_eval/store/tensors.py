"""Bundles without pickles: optimum-rbln's ``torch_artifacts.pth`` (and BLIP-2's ``query_tokens.pth``) carried as
safetensors.

Models compiled with input embeddings (the language model of a vision-language model, vision towers with a
CPU patch embedding) make optimum-rbln write ``torch_artifacts.pth`` — a dict of ``{group: state_dict}`` entries,
or of bare tensors (LLaVA-NeXT's ``{"image_newline": Parameter}``; BLIP-2's ``query_tokens.pth`` is one too) — and
read it back with ``torch.load(weights_only=False)``. Right after a compile, :func:`convert_pickles` turns each one
into ``<name>.safetensors`` (tensor names ``group.param``; a bare entry under its own name, its kind in the
file's metadata) and deletes the pickle, so a bundle holds only tensors. Before a load, :func:`prepare_load_dir`
checks those tensors against the bundle's manifest and writes the ``.pth`` optimum-rbln expects into a local
*load view*: a directory of symlinks to the bundle's files plus the rebuilt pickles, in the user cache (never in
the store, never pushed).
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

#: The pickles optimum-rbln writes (each read back with ``torch.load``), by their tensors' file name.
PICKLES = {"torch_artifacts.safetensors": "torch_artifacts.pth", "query_tokens.safetensors": "query_tokens.pth"}
_METADATA = {"format": "pt", "rbln_eval": "torch_artifacts", "schema": "1"}
#: Metadata key listing a file's bare entries (``{name: {"parameter": bool, "requires_grad": bool}}``).
BARE_KEY = "bare_entries"
_STAMP = ".rbln-eval-view.json"


def convert_pickles(directory: Path) -> list[str]:
    """Replace every pickle of :data:`PICKLES` under ``directory`` by safetensors; the relative paths converted.

    The pickle was just written by this build; it is still read with ``weights_only=True``.
    """
    import torch
    from safetensors.torch import save_file

    converted = []
    found = sorted(path for tensors, pickle in PICKLES.items() for path in directory.rglob(pickle))
    for path in found:
        tensors_name = next(t for t, p in PICKLES.items() if p == path.name)
        where = path.relative_to(directory)
        try:
            groups = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactConversionError(f"cannot read {where} as tensors: {exc}") from None
        if not isinstance(groups, dict):
            raise ArtifactConversionError(f"{where} holds a {type(groups).__name__}, not a dict")
        flat: dict[str, Any] = {}
        bare: dict[str, dict[str, bool]] = {}
        for group, state in groups.items():
            if not isinstance(group, str) or not group or "." in group:
                raise ArtifactConversionError(f"{where}: entry {group!r} is not a name without dots")
            if isinstance(state, torch.Tensor):
                flat[group] = state.detach().clone().contiguous()
                bare[group] = bare_kind(state)
                continue
            if not isinstance(state, dict):
                raise ArtifactConversionError(f"{where}: entry {group!r} is neither a state dict nor a tensor")
            for name, tensor in state.items():
                if not isinstance(tensor, torch.Tensor):
                    raise ArtifactConversionError(f"{where}: {group}.{name} is not a tensor")
                flat[f"{group}.{name}"] = tensor.detach().clone().contiguous()
        metadata = {**_METADATA, BARE_KEY: json.dumps(bare, sort_keys=True)} if bare else _METADATA
        save_file(flat, str(path.with_name(tensors_name)), metadata=metadata)
        path.unlink()
        converted.append(where.as_posix())
    return converted


def bare_kind(tensor: Any) -> dict[str, bool]:
    """What a bare entry is besides its values: a ``Parameter`` or a plain tensor, and whether it requires grad."""
    import torch

    return {"parameter": isinstance(tensor, torch.nn.Parameter), "requires_grad": bool(tensor.requires_grad)}


def tensor_files(bundle: "Bundle") -> list[str]:
    """The bundle's converted artifact files (relative paths)."""
    return sorted(n for n in bundle.manifest.files if n.rpartition("/")[2] in PICKLES)


def load_groups(path: Path) -> dict[str, Any]:
    """The dict optimum-rbln reads, from a converted artifact file: ``{group: state_dict}`` entries, and bare
    entries rebuilt as they were saved (a ``Parameter`` again, with its ``requires_grad``)."""
    import torch
    from safetensors import safe_open

    groups: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as fh:
        bare = json.loads((fh.metadata() or {}).get(BARE_KEY) or "{}")
        for name in fh.keys():
            if name in bare:
                tensor = fh.get_tensor(name)
                if bare[name]["parameter"]:
                    groups[name] = torch.nn.Parameter(tensor, requires_grad=bare[name]["requires_grad"])
                else:
                    groups[name] = tensor.requires_grad_(bare[name]["requires_grad"])
                continue
            group, dot, param = name.partition(".")
            if not dot:
                raise CorruptBundleError(f"{path.name}: tensor {name!r} is neither a group's nor a listed bare entry")
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
            target = (tmp / name).with_name(PICKLES[Path(name).name])
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
