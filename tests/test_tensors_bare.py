"""``torch_artifacts.pth`` with bare-tensor entries (LLaVA-NeXT's ``{"image_newline": Parameter}``) next to
``{group: state_dict}`` ones, and BLIP-2's ``query_tokens.pth``: converted to safetensors (no pickle left), rebuilt
exactly on load."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rbln_eval.errors import ArtifactConversionError
from rbln_eval.store.tensors import PICKLES, convert_pickles, load_groups

TENSORS_NAME = "torch_artifacts.safetensors"
PICKLE_NAME = PICKLES[TENSORS_NAME]


def _artifacts() -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    return {
        "image_newline": torch.nn.Parameter(torch.randn(8, generator=generator)),
        "frozen": torch.nn.Parameter(torch.randn(2, 3, generator=generator).to(torch.float16), requires_grad=False),
        "scale": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "embed_tokens": {"weight": torch.randn(5, 4, generator=generator), "layer.bias": torch.randn(4, generator=generator)},
    }


def _written(directory: Path, artifacts: object, name: str = PICKLE_NAME) -> Path:
    path = directory / "language_model" / name
    path.parent.mkdir(parents=True)
    torch.save(artifacts, path)
    return path


def _assert_same(rebuilt: dict[str, object], original: dict[str, object]) -> None:
    assert sorted(rebuilt) == sorted(original)
    for name, value in original.items():
        if isinstance(value, dict):
            assert dict(rebuilt[name]).keys() == value.keys()
            for param, tensor in value.items():
                assert torch.equal(rebuilt[name][param], tensor) and rebuilt[name][param].dtype == tensor.dtype
        else:
            got = rebuilt[name]
            assert type(got) is type(value), (name, type(got))
            assert got.requires_grad == value.requires_grad and got.dtype == value.dtype and got.shape == value.shape
            assert torch.equal(got.detach(), value.detach())


def test_bare_tensors_round_trip_exactly(tmp_path: Path) -> None:
    original = _artifacts()
    pickle = _written(tmp_path, original)
    assert convert_pickles(tmp_path) == ["language_model/torch_artifacts.pth"]
    assert not pickle.exists() and list(tmp_path.rglob("*.pth")) == []  # a bundle holds no pickle
    tensors = pickle.with_name(TENSORS_NAME)
    with safe_open(str(tensors), framework="pt") as fh:
        assert sorted(fh.keys()) == ["embed_tokens.layer.bias", "embed_tokens.weight", "frozen", "image_newline", "scale"]
    rebuilt = load_groups(tensors)
    _assert_same(rebuilt, original)
    # what optimum-rbln reads back (torch.load of the rebuilt pickle) is the dict it saved
    buffer = io.BytesIO()
    torch.save(rebuilt, buffer)
    buffer.seek(0)
    _assert_same(torch.load(buffer, weights_only=False), original)


def test_blip2_query_tokens_round_trip_beside_the_artifacts(tmp_path: Path) -> None:
    query = {"query_tokens": torch.nn.Parameter(torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)))}
    _written(tmp_path, {"embed_tokens": {"weight": torch.ones(3, 2)}})
    torch.save(query, tmp_path / "query_tokens.pth")
    assert convert_pickles(tmp_path) == ["language_model/torch_artifacts.pth", "query_tokens.pth"]
    assert list(tmp_path.rglob("*.pth")) == []
    _assert_same(load_groups(tmp_path / "query_tokens.safetensors"), query)


def test_state_dict_only_files_keep_their_format(tmp_path: Path) -> None:
    original = {"embed_tokens": {"weight": torch.ones(3, 2)}}
    _written(tmp_path, original)
    convert_pickles(tmp_path)
    tensors = tmp_path / "language_model" / TENSORS_NAME
    with safe_open(str(tensors), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt", "rbln_eval": "torch_artifacts", "schema": "1"}
    _assert_same(load_groups(tensors), original)


@pytest.mark.parametrize(
    ("artifacts", "message"),
    [
        ({"a.b": torch.zeros(1)}, r"entry 'a\.b' is not a name without dots"),
        ({"meta": {"w": torch.zeros(1)}, "note": "text"}, "entry 'note' is neither a state dict nor a tensor"),
        ({"embed": {"w": 3}}, r"embed\.w is not a tensor"),
        ([torch.zeros(1)], "holds a list, not a dict"),
    ],
)
def test_other_contents_are_refused(tmp_path: Path, artifacts: object, message: str) -> None:
    _written(tmp_path, artifacts)
    with pytest.raises(ArtifactConversionError, match=message):
        convert_pickles(tmp_path)
