"""Bundle key: stable across processes and spellings, sensitive to every real field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbln_eval.errors import ConfigError, ModelSourceError
from rbln_eval.identity.target import resolve_target
from rbln_eval.util.hashing import canonical_json
from rbln_eval.identity import (
    BundleKey,
    ModelSource,
    diff_keys,
    local_model_digest,
    normalize_compile_config,
    resolve_source,
)
from storehelpers import TOOLCHAIN, make_key

DIGEST_SNIPPET = """
import json, sys
from rbln_eval.identity import BundleKey, ModelSource
key = BundleKey.build(ModelSource(kind="hub", id="org/tiny", revision="a" * 40), "causal",
                      json.loads(sys.argv[1]), "SIM-RBLN-CA25", toolchain=json.loads(sys.argv[2]))
print(key.digest)
"""


def digest_in_subprocess(config: dict) -> str:
    env = dict(os.environ, PYTHONHASHSEED="random")
    result = subprocess.run(
        [sys.executable, "-c", DIGEST_SNIPPET, json.dumps(config), json.dumps(TOOLCHAIN)],
        capture_output=True, text=True, check=True, env=env,
    )
    return result.stdout.strip()


def test_same_inputs_same_digest_in_separate_processes() -> None:
    config = {"max_seq_len": 256, "tp": 1}
    here = make_key(compile_config=config).digest
    assert len(here) == 64
    assert digest_in_subprocess(config) == here
    assert digest_in_subprocess({"tp": 1, "max_seq_len": 256}) == here


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": 3}}) == '{"a":{"c":3,"d":2},"b":1}'


@pytest.mark.parametrize(
    "spelling",
    [
        {"max_seq_len": 256, "tp": 4},
        {"max_seq_len": "256", "tensor_parallel_size": "4"},
        {"rbln_max_seq_len": 256, "num_devices": 4},
        {"num_devices": 4, "max_seq_len": 256.0, "create_runtimes": False, "device": [0, 1, 2, 3]},
        {"max_seq_len": 256, "rbln_tensor_parallel_size": 4, "timeout": 60, "activate_profiler": True},
        {"max_seq_len": 256, "tp": 4, "batch_size": 1, "device_map": {"prefill": 0}},
    ],
)
def test_spellings_and_runtime_keys_do_not_change_the_key(spelling: dict) -> None:
    reference = make_key(compile_config={"max_seq_len": 256, "num_devices": 4})
    assert make_key(compile_config=spelling).digest == reference.digest


def test_normalized_config_is_sorted_with_defaults() -> None:
    assert normalize_compile_config({"tp": "2", "max_seq_len": 128, "kvcache": {"b": "true", "a": 1}}) == {
        "batch_size": 1,
        "kvcache": {"a": 1, "b": True},
        "max_seq_len": 128,
        "num_devices": 2,
    }
    assert list(normalize_compile_config({"z": 1, "a": 2})) == ["a", "batch_size", "num_devices", "z"]


def test_conflicting_aliases_are_rejected() -> None:
    with pytest.raises(ConfigError, match="num_devices"):
        normalize_compile_config({"tp": 2, "num_devices": 4})


@pytest.mark.parametrize(
    "change",
    [
        {"source": ModelSource(kind="hub", id="org/tiny", revision="b" * 40)},
        {"source": ModelSource(kind="hub", id="org/other", revision="a" * 40)},
        {"source": ModelSource(kind="local", id="/x", digest="c" * 64)},
        {"model_class": "seq2seq"},
        {"compile_config": {"max_seq_len": 512, "tp": 1}},
        {"compile_config": {"max_seq_len": 256, "tp": 2}},
        {"compile_config": {"max_seq_len": 256, "tp": 1, "batch_size": 4}},
        {"compile_config": {"max_seq_len": 256, "tp": 1, "logits_to_keep": 0}},
        {"toolchain": {**TOOLCHAIN, "rebel-compiler": "0.12.1"}},
        {"toolchain": {**TOOLCHAIN, "optimum-rbln": "0.11.2"}},
        {"toolchain": {**TOOLCHAIN, "torch": "2.12.0"}},
        {"toolchain": {**TOOLCHAIN, "transformers": "5.0.0"}},
        {"target": "SIM-RBLN-CA22"},
        {"target": "RBLN-CA25"},
    ],
)
def test_each_real_field_changes_the_key(change: dict) -> None:
    base = make_key()
    changed = make_key(**change)
    assert changed.digest != base.digest
    diffs = diff_keys(base, changed)
    assert diffs, "a changed key must show at least one differing field"
    changed_fields = {d.field.split(".")[0] for d in diffs}
    differing_digests = {f for f, d in base.field_digests().items() if changed.field_digests()[f] != d}
    assert changed_fields == differing_digests


def test_diff_names_the_sub_field() -> None:
    diffs = diff_keys(make_key(), make_key(compile_config={"max_seq_len": 512, "tp": 1}))
    assert [(d.field, d.left, d.right) for d in diffs] == [("compile.max_seq_len", 256, 512)]


def test_schema_version_changes_the_key() -> None:
    key = make_key()
    fields = key.fields()
    fields["schema"] = 2
    assert BundleKey.from_fields(fields).digest != key.digest


def write_model(directory: Path, weights: bytes = b"w") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "tokenizer.json").write_text("{}")
    return directory


def test_local_digest_covers_content_not_location(tmp_path: Path) -> None:
    a = write_model(tmp_path / "a")
    b = write_model(tmp_path / "elsewhere" / "b")
    assert local_model_digest(a) == local_model_digest(b)
    (b / "README.md").write_text("docs do not define the model")
    (b / ".cache").mkdir()
    (b / ".cache" / "x.json").write_text("{}")
    assert local_model_digest(a) == local_model_digest(b)
    (b / "tokenizer.json").write_text('{"changed": true}')
    assert local_model_digest(a) != local_model_digest(b)
    source = resolve_source(str(a))
    assert source.kind == "local" and source.key_fields() == {"kind": "local", "digest": local_model_digest(a)}


def test_local_digest_is_cached_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_model(tmp_path / "m", weights=b"x" * 1000)
    first = local_model_digest(model)
    calls = []
    import rbln_eval.util.hashing as hashing

    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    assert local_model_digest(model) == first
    assert calls == []  # every file served from the cache
    (model / "model.safetensors").write_bytes(b"y" * 1001)
    assert local_model_digest(model) != first
    assert [Path(p).name for p in calls] == ["model.safetensors"]


def test_hub_revision_resolves_from_the_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("f" * 40)
    assert resolve_source("org/tiny").revision == "f" * 40
    assert resolve_source("org/tiny", revision="e" * 40).revision == "e" * 40
    with pytest.raises(ModelSourceError, match="not in the HF cache"):
        resolve_source("org/tiny", revision="v2")
    with pytest.raises(ModelSourceError, match="neither a model directory nor a Hub model id"):
        resolve_source("./no/such/dir")


def test_target_marks_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    import rbln_eval.identity.target as target

    monkeypatch.setattr(target, "simulator_active", lambda: True)
    assert resolve_target("RBLN-CA25") == "SIM-RBLN-CA25"
    monkeypatch.setattr(target, "simulator_active", lambda: False)
    assert resolve_target("RBLN-CA25") == "RBLN-CA25"
    with pytest.raises(ConfigError, match="simulator target"):
        resolve_target("SIM-RBLN-CA25")
