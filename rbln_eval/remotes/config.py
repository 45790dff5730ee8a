"""The remotes of a store: ``remotes.json`` in the store root.

Format::

    {"remotes": [{"name": "team", "kind": "hf", "repo": "org/compiled", "private": true},
                 {"name": "nfs", "kind": "dir", "path": "/shared/rbln-bundles"}]}

Order matters: lookups before compile ask the remotes in this order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbln_eval.util.atomic import write_atomic
from rbln_eval.store import Store
from rbln_eval.errors import RemoteConfigError

CONFIG_NAME = "remotes.json"
HF_SCHEME = "hf://"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class RemoteSpec:
    """One configured remote."""

    name: str
    kind: str  # "hf" | "dir"
    repo: str | None = None
    path: str | None = None
    private: bool = False

    @property
    def location(self) -> str:
        return f"{HF_SCHEME}{self.repo}" if self.kind == "hf" else str(self.path)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "hf":
            return {"name": self.name, "kind": "hf", "repo": self.repo, "private": self.private}
        return {"name": self.name, "kind": "dir", "path": self.path}


def check_repo_id(repo: str) -> str:
    if not _REPO.match(repo or ""):
        raise RemoteConfigError(f"{repo!r} is not a Hub repo id: use ORG/NAME")
    return repo


def spec_from_location(name: str, location: str, private: bool = False) -> RemoteSpec:
    """``hf://ORG/NAME`` is a Hub repo; anything else an existing directory (``ORG/NAME`` with no such
    directory is refused as ambiguous)."""
    if not _NAME.match(name or ""):
        raise RemoteConfigError(f"invalid remote name {name!r}: use letters, digits, '-', '_' or '.'")
    if location.startswith(HF_SCHEME):
        return RemoteSpec(name, "hf", repo=check_repo_id(location[len(HF_SCHEME):].rstrip("/")), private=private)
    path = Path(location).expanduser()
    if not path.is_absolute() and not path.exists() and _REPO.match(location):
        raise RemoteConfigError(f"{location!r} is ambiguous: write hf://{location} for a Hub repo or ./{location} for a directory")
    if not path.exists():
        raise RemoteConfigError(f"directory {location} does not exist: create it (mkdir -p {location}) or check the path")
    if not path.is_dir():
        raise RemoteConfigError(f"{location} is not a directory")
    return RemoteSpec(name, "dir", path=str(path.absolute()))


def load_specs(store: Store) -> list[RemoteSpec]:
    path = store.root / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RemoteConfigError(f"{path} is not valid JSON ({exc}): fix it or remove it") from None
    specs: list[RemoteSpec] = []
    for item in data.get("remotes", []) if isinstance(data, dict) else []:
        try:
            if item["kind"] == "hf":
                specs.append(RemoteSpec(item["name"], "hf", repo=check_repo_id(item["repo"]), private=bool(item.get("private"))))
            elif item["kind"] == "dir":
                specs.append(RemoteSpec(item["name"], "dir", path=str(item["path"])))
            else:
                raise KeyError("kind")
        except (KeyError, TypeError):
            raise RemoteConfigError(f"{path} has a malformed remote entry {item!r}: fix it or run `rbln-eval remote rm`") from None
    return specs


def save_specs(store: Store, specs: list[RemoteSpec]) -> None:
    write_atomic(store.root / CONFIG_NAME, json.dumps({"remotes": [s.to_json() for s in specs]}, indent=2) + "\n")


def add_spec(store: Store, spec: RemoteSpec) -> None:
    specs = load_specs(store)
    if any(s.name == spec.name for s in specs):
        raise RemoteConfigError(f"a remote named {spec.name!r} exists: remove it first with `rbln-eval remote rm {spec.name}`")
    save_specs(store, [*specs, spec])


def remove_spec(store: Store, name: str) -> RemoteSpec:
    specs = load_specs(store)
    kept = [s for s in specs if s.name != name]
    if len(kept) == len(specs):
        raise RemoteConfigError(f"no remote named {name!r}: see `rbln-eval remote ls`")
    save_specs(store, kept)
    return next(s for s in specs if s.name == name)


def get_spec(store: Store, name: str) -> RemoteSpec:
    for spec in load_specs(store):
        if spec.name == name:
            return spec
    raise RemoteConfigError(f"no remote named {name!r}: see `rbln-eval remote ls` or add it with `rbln-eval remote add`")
