"""Sharing bundles through a directory remote (an NFS share on a cluster)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import tree_snapshot
from rbln_eval.remotes.base import sha256_text
from rbln_eval.store import MANIFEST_NAME, Store
from remotehelpers import cli, model_dir, ok, one_line_exit_2, origin, results_file, run_args, scores


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bundle, reference = origin(tmp_path_factory)
    root = tmp_path_factory.mktemp("dir-remote")
    share = root / "share"
    share.mkdir()
    store = root / "origin"
    shutil.copytree(bundle.path.parent.parent, store)
    ok(cli("remote", "add", "nfs", str(share), "--store", str(store)))
    push = ok(cli("push", bundle.digest[:10], "--remote", "nfs", "--store", str(store)))
    return {"bundle": bundle, "reference": reference, "root": root, "share": share, "push": push}


def test_push_layout(shared: dict[str, Any]) -> None:
    bundle, share = shared["bundle"], shared["share"]
    pushed = share / "bundles" / bundle.digest
    assert f"{bundle.digest}  {pushed}" in shared["push"].stdout
    assert tree_snapshot(pushed) == tree_snapshot(bundle.path)
    entry = json.loads((share / "index.json").read_text())["bundles"][bundle.digest]
    assert entry["revision"] == f"bundles/{bundle.digest}" and entry["key"] == bundle.key.fields()
    assert entry["manifest_sha256"] == sha256_text((bundle.path / MANIFEST_NAME).read_bytes())
    assert not list((share / "tmp").iterdir())
    again = ok(cli("push", bundle.digest, "--remote", "nfs", "--store", str(shared["root"] / "origin")))
    assert "nothing uploaded" in again.stderr


def test_second_machine_run_pulls_and_compiles_nothing(shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = tmp_path / "store"
    ok(cli("remote", "add", "nfs", str(shared["share"]), "--store", str(store)))
    result = ok(cli("run", "--model", model_dir(), "--batch-size", "2", *run_args(store, tmp_path / "out")))
    assert f"pulled bundle {bundle.digest[:12]} from remote nfs" in result.stderr
    assert "compiling" not in result.stderr and "compiled in" not in result.stderr
    results = results_file(tmp_path / "out")
    assert results["config"]["rbln"]["compiled_now"] is False
    assert scores(results) == shared["reference"]
    pulled = Store(store).lookup(bundle.digest)
    assert pulled is not None and tree_snapshot(pulled.path) == tree_snapshot(bundle.path)


def test_pull_by_alias_and_prefix(shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = tmp_path / "store"
    ok(cli("remote", "add", "nfs", str(shared["share"]), "--store", str(store)))
    ok(cli("pull", bundle.manifest.info["alias"], "--store", str(store)))
    assert Store(store).lookup(bundle.digest) is not None
    assert Store(store).refs() == {bundle.manifest.info["alias"]: bundle.digest}
    assert "nothing pulled" in ok(cli("pull", bundle.digest[:6], "--store", str(store))).stderr


def _tamper(bundle_dir: Path, case: str, share: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    largest = max(manifest["files"], key=lambda n: manifest["files"][n]["size"])
    target = bundle_dir / largest
    data = target.read_bytes()
    if case == "tampered":
        target.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif case == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif case == "extra-file":
        (bundle_dir / "modeling_evil.py").write_text("import os\n")
    elif case == "symlink":
        target.unlink()
        target.symlink_to("/etc/hostname")
    elif case == "dotdot":
        manifest["files"]["../x"] = {"sha256": "0" * 64, "size": 1}
        text = json.dumps(manifest)
        (bundle_dir / MANIFEST_NAME).write_text(text)
        index = json.loads((share / "index.json").read_text())
        index["bundles"][manifest["digest"]]["manifest_sha256"] = sha256_text(text)
        (share / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tampered", "sha256 mismatch"),
        ("truncated", "size"),
        ("extra-file", "modeling_evil.py is not in the manifest"),
        ("symlink", "is not a regular file"),
        ("dotdot", "unsafe file path '../x'"),
    ],
)
def test_bad_remote_bundle_is_refused(shared: dict[str, Any], tmp_path: Path, case: str, expected: str) -> None:
    bundle = shared["bundle"]
    share = tmp_path / "share"
    shutil.copytree(shared["share"], share, symlinks=True)
    _tamper(share / "bundles" / bundle.digest, case, share)
    store = tmp_path / "store"
    ok(cli("remote", "add", "nfs", str(share), "--store", str(store)))
    before = tree_snapshot(store)
    line = one_line_exit_2(cli("pull", bundle.digest, "--store", str(store)), expected)
    assert "refused" in line and "nothing was stored" in line
    assert tree_snapshot(store) == before


def test_corrupt_local_bundle_is_not_pushed(shared: dict[str, Any], tmp_path: Path) -> None:
    bundle = shared["bundle"]
    store = tmp_path / "store"
    shutil.copytree(bundle.path.parent.parent, store)
    name = max(bundle.manifest.files, key=lambda n: bundle.manifest.files[n].size)
    path = store / "bundles" / bundle.digest / name
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    share = tmp_path / "share"
    share.mkdir()
    ok(cli("remote", "add", "nfs", str(share), "--store", str(store)))
    one_line_exit_2(cli("push", bundle.digest, "--store", str(store)), "fails verification")
    assert tree_snapshot(share) == {}


def test_remote_commands(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    ok(cli("remote", "add", "a", str(tmp_path), "--store", store))
    ok(cli("remote", "add", "b", "hf://org/name", "--private", "--store", store))
    listing = [line.split() for line in ok(cli("remote", "ls", "--store", store)).stdout.splitlines()]
    assert listing == [["a", "dir", str(tmp_path)], ["b", "hf", "hf://org/name", "private"]]
    one_line_exit_2(cli("remote", "add", "a", str(tmp_path), "--store", store), "a remote named 'a' exists")
    one_line_exit_2(cli("remote", "add", "bad name", str(tmp_path), "--store", store), "invalid remote name")
    one_line_exit_2(cli("push", "abcd", "--remote", "zzz", "--store", store), "no bundle matches")
    ok(cli("remote", "rm", "a", "--store", store))
    one_line_exit_2(cli("remote", "rm", "a", "--store", store), "no remote named 'a'")
    one_line_exit_2(cli("compile", model_dir(), "--remote", "a", "--store", store), "no remote named 'a'")
    for command in (["push"], ["pull"], ["remote", "add"], ["remote", "ls"], ["remote", "rm"]):
        assert "Example: rbln-eval" in ok(cli(*command, "--help")).stdout
    assert os.path.isfile(os.path.join(store, "remotes.json"))
