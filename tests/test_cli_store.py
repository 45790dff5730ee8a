"""Store commands through the real console entry point: outputs, exit codes, untouched store on errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tree_snapshot
from rbln_eval.store import MANIFEST_NAME, Store
from storehelpers import make_key, write_files


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rbln_eval", *args],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    store.get_or_build(make_key(), write_files, info={"model": "org/tiny"})
    store.get_or_build(make_key(model_class="seq2seq"), write_files, info={"model": "org/tiny-t5"})
    return store


def test_ls_show_and_tag(store: Store) -> None:
    digest = make_key().digest
    listing = cli("ls", "--store", str(store.root))
    assert listing.returncode == 0, listing.stderr
    assert digest[:12] in listing.stdout and "org/tiny" in listing.stdout and "SIM-RBLN-CA25" in listing.stdout
    assert "batch_size=1 max_seq_len=256 num_devices=1" in listing.stdout
    rows = json.loads(cli("ls", "--json", "--store", str(store.root)).stdout)
    assert sorted(r["digest"] for r in rows) == sorted([digest, make_key(model_class="seq2seq").digest])
    tagged = cli("tag", digest[:8], "tiny@main:bs1", "--store", str(store.root))
    assert tagged.returncode == 0 and tagged.stdout.strip() == f"tiny@main:bs1 -> {digest[:12]}"
    shown = json.loads(cli("show", "tiny@main:bs1", "--store", str(store.root)).stdout)
    assert shown["digest"] == digest and shown["path"] == str(store.bundle_path(digest))


def test_store_from_environment(store: Store) -> None:
    result = cli("ls", "--json", env={"RBLN_EVAL_STORE": str(store.root)})
    assert len(json.loads(result.stdout)) == 2


def test_verify_names_the_flipped_file(store: Store) -> None:
    digest = make_key().digest
    assert cli("verify", "--store", str(store.root)).returncode == 0
    target = store.bundle_path(digest) / "sub" / "tokenizer.json"
    data = bytearray(target.read_bytes())
    data[0] ^= 0x01
    target.write_bytes(bytes(data))
    result = cli("verify", "--store", str(store.root))
    assert result.returncode == 1
    assert f"{digest[:12]}: sub/tokenizer.json: sha256 mismatch" in result.stderr
    assert "1 of 2 bundle(s) failed verification" in result.stderr


def test_explain_one_and_two_keys(store: Store, tmp_path: Path) -> None:
    a, b = make_key(), make_key(model_class="seq2seq")
    one = cli("explain", a.digest[:10], "--store", str(store.root))
    assert one.returncode == 0
    for field, digest in a.field_digests().items():
        assert f"{field}" in one.stdout and digest[:12] in one.stdout
    two = cli("explain", a.digest[:10], b.digest[:10], "--store", str(store.root))
    assert two.returncode == 0
    assert "model_class" in two.stdout and "causal" in two.stdout and "seq2seq" in two.stdout
    assert "compile" not in two.stdout.split("\n", 1)[1]  # only differing fields are listed
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(make_key(compile_config={"max_seq_len": 512}).fields()))
    diff = cli("explain", a.digest[:10], str(key_file), "--store", str(store.root))
    assert "compile.max_seq_len" in diff.stdout and "256" in diff.stdout and "512" in diff.stdout


def _assert_one_line_exit_2(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]


def test_bad_input_one_line_exit_2_store_unchanged(store: Store, tmp_path: Path) -> None:
    digests = sorted([make_key().digest, make_key(model_class="seq2seq").digest])
    before = tree_snapshot(store.root)
    root = str(store.root)

    _assert_one_line_exit_2(cli("show", "0" * 64, "--store", root), f"no bundle {'0' * 12} in store")
    _assert_one_line_exit_2(cli("rm", "nope-alias", "--store", root), "no bundle matches 'nope-alias'")
    _assert_one_line_exit_2(cli("rm", digests[0][:12], "zzzz", "--store", root), "no bundle matches 'zzzz'")
    common = os.path.commonprefix(digests)
    if len(common) >= 4:
        _assert_one_line_exit_2(cli("show", common, "--store", root), "matches 2 bundles")
    _assert_one_line_exit_2(cli("show", "abc", "--store", root), "too short")

    not_writable = tmp_path / "afile"
    not_writable.write_text("x")
    for command in (["gc"], ["ls"], ["tag", digests[0][:12], "x@y"]):
        _assert_one_line_exit_2(
            cli(*command, "--store", str(not_writable / "store")), f"{not_writable} is not a directory"
        )
    assert tree_snapshot(store.root) == before

    manifest = store.bundle_path(digests[0]) / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:-40])
    before = tree_snapshot(store.root)
    _assert_one_line_exit_2(cli("show", digests[0][:12], "--store", root), "malformed manifest")
    _assert_one_line_exit_2(cli("verify", "--store", root), "malformed manifest")
    _assert_one_line_exit_2(cli("rm", digests[0], "--store", root), "malformed manifest")
    assert tree_snapshot(store.root) == before
    listing = cli("ls", "--store", root)
    assert listing.returncode == 0 and "corrupt" in listing.stdout


def test_ambiguous_prefix_through_cli(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    seen: dict[str, str] = {}
    n = 0
    while True:
        key = make_key(compile_config={"max_seq_len": n})
        n += 1
        prefix = key.digest[:4]
        store.get_or_build(key, write_files)
        if prefix in seen:
            break
        seen[prefix] = key.digest
    before = tree_snapshot(store.root)
    _assert_one_line_exit_2(cli("rm", prefix, "--store", str(store.root)), f"digest prefix '{prefix}' matches 2 bundles")
    assert tree_snapshot(store.root) == before


def test_rm_removes_bundle_and_aliases(store: Store) -> None:
    digest = make_key().digest
    store.set_ref("tiny@main", digest)
    result = cli("rm", "tiny@main", "--store", str(store.root))
    assert result.returncode == 0 and result.stdout.strip() == f"removed {digest[:12]} (aliases: tiny@main)"
    assert digest not in store.digests() and store.refs() == {}


def test_help_shows_examples() -> None:
    for command in ("ls", "show", "verify", "rm", "gc", "tag", "explain"):
        result = cli(command, "--help")
        assert result.returncode == 0 and "Example: rbln-eval" in result.stdout
