"""The simulator's compile, `.rbln` format, static buffers, sizing, devices and counters."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import pytest
import torch

import rbln_eval.sim as sim
from rbln_eval.sim.graph import GraphError
from rbln_eval.sim.serialize import MAGIC, RBLNFormatError, read_rbln, write_rbln


class Writer(torch.nn.Module):
    """Stores `2 * x` into row `row` of the static cache."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, row, cache):
        return torch.ops.rbln_custom_ops.rbln_cache_update(
            cache, (x * self.scale).unsqueeze(0), row[0], torch.tensor(0)
        )


class Reader(torch.nn.Module):
    """Reads the static cache through the linear custom op."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x, cache):
        return torch.ops.rbln_custom_ops.linear(x + cache.sum(0), self.proj.weight, self.proj.bias)


def _compile_pair(num_devices: int = 1):
    import rebel
    from rebel.compile_context import CompileContext

    torch.manual_seed(0)
    context = CompileContext(use_weight_sharing=True)
    cache = torch.empty(2, 4, device="meta")
    context.mark_static_address(cache, "cache")
    writer = rebel.compile_from_torch(
        Writer(),
        [("x", [4], "float32"), ("row", [1], "int16"), ("cache", [2, 4], "float32")],
        example_inputs=[torch.zeros(4), torch.zeros(1, dtype=torch.int16), cache],
        compile_context=context,
        num_devices=num_devices,
    )
    reader_module = Reader()
    reader = rebel.compile_from_torch(
        reader_module,
        [("x", [1, 4], "float32"), ("cache", [2, 4], "float32")],
        example_inputs=[torch.zeros(1, 4), cache],
        compile_context=context,
        num_devices=num_devices,
    )
    return writer, reader, reader_module


@pytest.fixture()
def pair_dir(tmp_path):
    writer, reader, module = _compile_pair()
    writer.save(tmp_path / "writer.rbln")
    reader.save(tmp_path / "reader.rbln")
    return tmp_path, module


def _run_pair(writer, reader, module):
    import rebel

    w, r = rebel.Runtime(writer, tensor_type="pt"), rebel.Runtime(reader, tensor_type="pt", device=0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w(x, torch.tensor([1], dtype=torch.int16))
    y = torch.ones(1, 4)
    got = r(y)
    with torch.no_grad():
        want = module.proj(y + 2 * x)
    return got, want


def test_static_buffers_shared_by_runtimes_of_one_model(pair_dir):
    import rebel

    directory, module = pair_dir
    got, want = _run_pair(
        rebel.RBLNCompiledModel(directory / "writer.rbln"), rebel.RBLNCompiledModel(directory / "reader.rbln"), module
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_loading_a_model_twice_gives_separate_static_buffers(pair_dir):
    import rebel

    directory, module = pair_dir
    first = [rebel.RBLNCompiledModel(directory / f"{n}.rbln") for n in ("writer", "reader")]
    second = [rebel.RBLNCompiledModel(directory / f"{n}.rbln") for n in ("writer", "reader")]
    _run_pair(*first, module)
    untouched = rebel.Runtime(second[1], tensor_type="pt")(torch.ones(1, 4))
    with torch.no_grad():
        want = module.proj(torch.ones(1, 4))
    torch.testing.assert_close(untouched, want, rtol=0, atol=1e-6)


def test_in_memory_compile_runs_like_the_saved_one():
    writer, reader, module = _compile_pair()
    got, want = _run_pair(writer, reader, module)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_header_records_target_inputs_and_weight_sharing(pair_dir):
    import rebel

    directory, _ = pair_dir
    writer = rebel.RBLNCompiledModel(directory / "writer.rbln")
    reader = rebel.RBLNCompiledModel(directory / "reader.rbln")
    meta = writer.metadata
    assert meta["target"] == sim.sim_target("RBLN-CA25") == "SIM-RBLN-CA25"
    assert meta["sim_version"] == sim.SIM_VERSION
    assert [(i["name"], i["static"]) for i in meta["inputs"]] == [("x", False), ("row", False), ("cache", True)]
    assert writer.get_alloc_per_node_by_key()["Weight"] == [2**21]  # one weight, 2 MiB aligned
    assert reader.get_alloc_per_node_by_key()["Weight"] == [0]  # shared with the first graph
    assert writer.exp_get_dram_tensor_sizes() == {"cache": [[32]]}


def test_sizing_resize_and_persist(tmp_path):
    import rebel

    writer, _, _ = _compile_pair(num_devices=2)
    assert writer.exp_get_dram_tensor_sizes() == {"cache": [[16], [16]]}
    writer.exp_multiply_buffer_size({"cache": 3})
    assert writer.static_buffers["cache"]["shape"] == [6, 4]
    writer.exp_rescale_buffer_size({"cache": (2, 3)})
    assert writer.static_buffers["cache"]["shape"] == [4, 4]
    with pytest.raises(ValueError, match="not a whole number"):
        writer.exp_rescale_buffer_size({"cache": (1, 3)})
    with pytest.raises(KeyError, match="not a static buffer"):
        writer.exp_multiply_buffer_size({"missing": 2})
    writer.save(tmp_path / "w.rbln")
    assert rebel.RBLNCompiledModel(tmp_path / "w.rbln").static_buffers["cache"]["shape"] == [4, 4]
    nodes = writer.get_alloc_per_chiplet_by_key()
    assert set(nodes) == {"Weight", "Activation", "DramTensor"}
    assert all(len(per_node) == 2 and len(per_node[0]) == 1 for per_node in nodes.values())


def test_compile_checks_inputs_against_input_info():
    import rebel

    with pytest.raises(ValueError, match="example input 'x' is \\[3\\] torch.float32, but input_info says \\[4\\]"):
        rebel.compile_from_torch(Reader(), [("x", [4], "float32")], example_inputs=[torch.zeros(3)])
    with pytest.raises(ValueError, match="appears twice"):
        rebel.compile_from_torch(Reader(), [("x", [4], "float32"), ("x", [4], "float32")])
    with pytest.raises(ValueError, match="num_devices must be a positive integer"):
        rebel.compile_from_torch(Reader(), [("x", [1, 4], "float32"), ("c", [2, 4], "float32")], num_devices=0)
    with pytest.raises(ValueError, match="unknown npu"):
        rebel.compile_from_torch(Reader(), [("x", [1, 4], "float32"), ("c", [2, 4], "float32")], npu="GPU-1")


def test_runtime_checks_inputs(pair_dir):
    import rebel

    directory, _ = pair_dir
    runtime = rebel.Runtime(rebel.RBLNCompiledModel(directory / "reader.rbln"), tensor_type="pt")
    assert runtime._index_to_input_name == {0: "x"}
    with pytest.raises(ValueError, match="has shape \\[2, 4\\], compiled for \\[1, 4\\]"):
        runtime(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="has dtype torch.float64"):
        runtime(torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="missing input 'x'"):
        runtime()
    out = torch.empty(1, 3)
    assert runtime(x=torch.ones(1, 4), out=[out]) is out


def test_devices_are_validated(pair_dir, monkeypatch):
    import rebel

    directory, _ = pair_dir
    compiled = rebel.RBLNCompiledModel(directory / "reader.rbln")
    assert rebel.device_count() == 8 and rebel.get_npu_name(7) == "RBLN-CA25" and rebel.get_npu_name(8) is None
    with pytest.raises(RuntimeError, match="NPU device 8 does not exist: the simulated node has 8 device"):
        rebel.Runtime(compiled, device=8)
    monkeypatch.setenv("RBLN_EVAL_SIM_DEVICES", "2")
    assert rebel.device_count() == 2 and not rebel.npu_is_available(2)
    with pytest.raises(RuntimeError, match="NPU device 3 does not exist: the simulated node has 2"):
        rebel.Runtime(compiled, device=3)
    monkeypatch.setenv("RBLN_EVAL_SIM_NPU", "RBLN-CR03")
    with pytest.raises(RuntimeError, match="device 0 is a RBLN-CR03, but the model was compiled for RBLN-CA25"):
        rebel.Runtime(compiled, device=0)


def test_tensor_parallel_needs_as_many_devices():
    import rebel

    writer, _, _ = _compile_pair(num_devices=4)
    assert rebel.Runtime(writer).devices == [0, 1, 2, 3]
    assert rebel.Runtime(writer, device=[4, 5, 6, 7]).devices == [4, 5, 6, 7]
    with pytest.raises(
        RuntimeError, match="compiled for 4 device\\(s\\) \\(num_devices\\) but the runtime was given 1"
    ):
        rebel.Runtime(writer, device=0)


def test_counters_and_latency(pair_dir, monkeypatch):
    import time

    import rebel

    directory, _ = pair_dir
    runtime = rebel.Runtime(rebel.RBLNCompiledModel(directory / "reader.rbln"))
    sim.reset_counters()
    monkeypatch.setenv("RBLN_EVAL_SIM_LATENCY_MS", "30")
    started = time.perf_counter()
    runtime(torch.ones(1, 4))
    runtime(torch.ones(1, 4))
    assert time.perf_counter() - started >= 0.06
    snapshot = sim.counters()
    assert snapshot["reader"]["calls"] == 2
    assert snapshot["reader"]["input_tokens"] == 0  # no input_ids
    assert snapshot["reader"]["seconds"] >= 0.06
    table = sim.format_counters()
    assert table.splitlines()[0].split() == ["graph", "calls", "input_tokens", "seconds"]
    assert table.splitlines()[1].split()[:3] == ["reader", "2", "0"]
    sim.reset_counters()
    assert sim.counters() == {}


# -- tampering and safety -----------------------------------------------------------------------
def test_tampered_file_fails_clearly(pair_dir):
    import rebel

    directory, _ = pair_dir
    data = (directory / "reader.rbln").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    (directory / "flipped.rbln").write_bytes(bytes(flipped))
    with pytest.raises(RBLNFormatError, match="corrupted or was modified: checksum mismatch"):
        rebel.RBLNCompiledModel(directory / "flipped.rbln")
    (directory / "short.rbln").write_bytes(data[:-100])
    with pytest.raises(RBLNFormatError, match="checksum mismatch"):
        rebel.RBLNCompiledModel(directory / "short.rbln")
    (directory / "real.rbln").write_bytes(b"PK\x03\x04" + data[8:])
    with pytest.raises(RBLNFormatError, match="is not a simulated .rbln file"):
        rebel.RBLNCompiledModel(directory / "real.rbln")


def _rewrite(src: Path, dst: Path, graph=None, tensor_blob: bytes | None = None) -> None:
    """Re-write a .rbln with a modified graph or raw tensor section, with valid checksums."""
    header, old_graph, tensors = read_rbln(src)
    header = {k: v for k, v in header.items() if k not in ("sections", "payload_size", "payload_sha256")}
    if tensor_blob is None:
        write_rbln(dst, header, graph if graph is not None else old_graph, tensors)
        return
    import json

    graph_bytes = json.dumps(old_graph).encode()
    payload = graph_bytes + tensor_blob
    header.update(
        sections={"graph": [0, len(graph_bytes)], "tensors": [len(graph_bytes), len(tensor_blob)]},
        payload_size=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        format="rbln-sim",
        format_version=1,
    )
    header_bytes = json.dumps(header).encode()
    body = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + payload
    dst.write_bytes(body + hashlib.sha256(body).digest())


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(__file__).parent / "never-created",))


@pytest.mark.parametrize(
    "target",
    [
        "builtins.eval",
        "os.system",
        "aten",
        "torch.load",
        "operator.attrgetter",
        "rbln_custom_ops.not_an_op.default",
        "torch.ops.aten.add.Tensor",
    ],
)
def test_forbidden_operator_is_rejected(pair_dir, target):
    import rebel

    directory, _ = pair_dir
    _, graph, _ = read_rbln(directory / "reader.rbln")
    graph["nodes"][0]["target"] = target
    _rewrite(directory / "reader.rbln", directory / "evil.rbln", graph=graph)
    with pytest.raises(GraphError, match="allow-list|unknown aten operator"):
        rebel.RBLNCompiledModel(directory / "evil.rbln")


def test_loading_never_unpickles(pair_dir, monkeypatch, tmp_path):
    import rebel

    directory, module = pair_dir
    marker = Path(__file__).parent / "never-created"
    _rewrite(directory / "reader.rbln", directory / "pickled.rbln", tensor_blob=pickle.dumps(_Boom()))
    with pytest.raises(RBLNFormatError, match="malformed tensor data"):
        rebel.RBLNCompiledModel(directory / "pickled.rbln")
    assert not marker.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading a .rbln")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    writer = rebel.RBLNCompiledModel(directory / "writer.rbln")
    reader = rebel.RBLNCompiledModel(directory / "reader.rbln")
    got, want = _run_pair(writer, reader, module)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
