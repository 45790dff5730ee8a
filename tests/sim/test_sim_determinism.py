"""The same request gives the same bits wherever its data sits, in any process, batch row or replica.

Without MKL's conditional numerical reproducibility (CNR), MKL may choose its code path by the alignment of
the operands (on some CPUs) and splits large products differently for another number of threads (on x86
CPUs generally). The alignment tests compute under :class:`AlignmentSensitiveBLAS`, a stand-in for such a
BLAS that sums a misaligned operand's products in another order, so that they fail on any host when the
simulator lets a misaligned operand reach a matrix product; the thread-count test uses torch's own MKL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rbln_eval.sim import numerics, ops

aten = torch.ops.aten
#: The operand positions of the matrix products a graph's linear layers and attention end in.
_PRODUCTS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2), aten.baddbmm.default: (1, 2)}


def _misalignment(tensor: torch.Tensor) -> int:
    """Elements from the tensor's start to the next 64-byte boundary (0 when it starts on one)."""
    return (-tensor.data_ptr() % 64) // tensor.element_size()


class AlignmentSensitiveBLAS(TorchDispatchMode):
    """Matrix products as a vectorized BLAS without CNR computes them: when an operand does not start on a
    64-byte boundary, the first elements up to it are summed apart (a loop's peeled head), which rounds
    differently. Aligned operands get torch's own result."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func not in _PRODUCTS:
            return out
        i, j = _PRODUCTS[func]
        a, b = args[i], args[j]
        peel = _misalignment(a) or _misalignment(b)
        if not 0 < peel < a.shape[-1]:
            return out
        product = a[..., :peel] @ b[..., :peel, :] + a[..., peel:] @ b[..., peel:, :]
        return product if i == 0 else args[0] + product


class Block(torch.nn.Module):
    """A float input through projections and self-attention: every kind of matrix product a graph has."""

    def __init__(self, width: int = 72) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.out(attention)


def _compiled_block(shape: tuple[int, ...] = (2, 12, 72)) -> Any:
    import rebel

    return rebel.compile_from_torch(Block(shape[-1]), [("x", list(shape), "float32")])


def _at(tensor: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``tensor`` as a view that starts ``offset`` elements into a fresh buffer."""
    buffer = torch.empty(tensor.numel() + offset, dtype=tensor.dtype)
    view = buffer[offset:].view(tensor.shape)
    view.copy_(tensor)
    return view


def test_the_stand_in_blas_gives_other_bits_for_misaligned_operands():
    x, w = torch.randn(4, 72), torch.randn(72, 72)
    with AlignmentSensitiveBLAS():
        aligned, shifted = x @ w, _at(x, 3) @ w
    assert torch.equal(aligned, x @ w)
    assert not torch.equal(shifted, aligned)  # so a misaligned operand inside the simulator would show


def test_inputs_at_any_offset_give_the_same_bits():
    import rebel

    runtime = rebel.Runtime(_compiled_block())
    x = torch.randn(2, 12, 72)
    with AlignmentSensitiveBLAS():
        want = runtime(x)
        for offset in range(1, 16):  # views at odd offsets, as a chunk of a longer prompt is
            assert torch.equal(runtime(_at(x, offset)), want), offset
        transposed = x.transpose(0, 1).contiguous().transpose(0, 1)  # not contiguous
        assert torch.equal(runtime(transposed), want)
    assert torch.equal(x, transposed)


def test_a_cache_passed_as_an_input_is_written_through_a_misaligned_view():
    import rebel

    class Writer(torch.nn.Module):
        def forward(self, x, cache):
            return torch.ops.rbln_custom_ops.rbln_cache_update(cache, x.unsqueeze(0), torch.tensor(1), torch.tensor(0))

    compiled = rebel.compile_from_torch(Writer(), [("x", [4], "float32"), ("cache", [3, 4], "float32")])
    cache = _at(torch.zeros(3, 4), 5)
    rebel.Runtime(compiled)(torch.arange(4.0), cache)
    assert cache.tolist() == [[0.0] * 4, [0.0, 1.0, 2.0, 3.0], [0.0] * 4]


def test_a_request_gives_the_same_bits_in_every_batch_row():
    """A decode step's rows are views at offsets of the batch; with 48-byte rows only row 0 is aligned."""
    kernel = ops.kernel("paged_causal_attn_decode")
    torch.manual_seed(0)
    batch, blocks, block_size, dim = 4, 4, 8, 12
    q, k, v = (torch.randn(1, 1, 1, 1, dim).expand(batch, 1, 1, 1, dim).contiguous() for _ in range(3))
    history = torch.randn(1, 1, 1, block_size, dim)
    kcache, vcache = history.repeat(blocks, 1, 1, 1, 1), history.repeat(blocks, 1, 1, 1, 1)
    seq = torch.full((batch, 1), 5, dtype=torch.int32)
    table = torch.arange(blocks, dtype=torch.int16).view(batch, 1)  # each row in its own cache block
    with AlignmentSensitiveBLAS():
        out = kernel(q, k, v, kcache, vcache, seq, torch.tensor(0.3), table, block_size)
    for row in range(1, batch):
        assert torch.equal(out[row], out[0]), row


# -- fresh processes ---------------------------------------------------------------------------------------

RUN_SAVED = textwrap.dedent(
    """
    import hashlib, importlib.util, json, sys
    import rbln_eval, torch
    padding = bytearray(int(sys.argv[3]))  # another heap history: the file's bytes land elsewhere
    spec = importlib.util.spec_from_file_location("determinism", sys.argv[1])
    determinism = importlib.util.module_from_spec(spec); spec.loader.exec_module(determinism)
    import rebel
    compiled = rebel.RBLNCompiledModel(sys.argv[2])
    weights = [t for _, t in compiled._program()._weights]
    with determinism.AlignmentSensitiveBLAS():
        out = rebel.Runtime(compiled)(torch.linspace(-1, 1, 2 * 12 * 72).view(2, 12, 72))
    print(json.dumps({"misaligned": sum(t.data_ptr() % 64 != 0 for t in weights),
                      "digest": hashlib.sha256(out.numpy().tobytes()).hexdigest()}))
    """
)


def _python(code: str, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "RBLN_EVAL_SIMULATE")}
    environment["RBLN_EVAL_SIMULATE"] = "1"
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True, timeout=300, check=False
    )


def test_fresh_processes_load_aligned_weights_and_give_the_same_bits(tmp_path: Path):
    path = tmp_path / "block.rbln"
    _compiled_block().save(path)
    runs = []
    for padding in (0, 16, 4096 + 48):
        result = _python(RUN_SAVED, __file__, str(path), str(padding))
        assert result.returncode == 0, result.stderr
        runs.append(json.loads(result.stdout.splitlines()[-1]))
    assert [run["misaligned"] for run in runs] == [0] * len(runs)
    assert len({run["digest"] for run in runs}) == 1


# -- MKL's mode ---------------------------------------------------------------------------------------------

THREADS = textwrap.dedent(
    """
    import hashlib, json, os
    import rbln_eval, torch
    import rebel
    from rbln_eval.sim import numerics
    torch.manual_seed(0)
    compiled = rebel.compile_from_torch(torch.nn.Linear(2048, 2048, bias=False), [("x", [128, 2048], "float32")])
    runtime = rebel.Runtime(compiled)
    x = torch.randn(128, 2048)
    digests = []
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        digests.append(hashlib.sha256(runtime(x).numpy().tobytes()).hexdigest())
    print(json.dumps({"env": os.environ.get("MKL_CBWR"), "mode": numerics.mkl_mode(), "digests": digests}))
    """
)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch is built without MKL")
def test_any_number_of_threads_gives_the_same_bits():
    """The pool gives each of K workers cores / K threads. In MKL's default mode a 128-token chunk through a
    2048-wide projection gives other bits for 1, 2 and 4 threads on x86 CPUs; in STRICT mode it does not."""
    result = _python(THREADS)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.splitlines()[-1])
    assert len(set(state["digests"])) == 1, state
    assert state["env"] == numerics.DEFAULT_MKL_CBWR and state["mode"].startswith("AUTO")


MODE = textwrap.dedent(
    """
    import json, logging, os, sys
    logging.basicConfig(level=logging.WARNING)
    if sys.argv[1] == "torch-first":
        import torch; torch.ones(2, 2) @ torch.ones(2, 2)
    import rbln_eval, torch
    from rbln_eval.sim import numerics
    torch.ones(2, 2) @ torch.ones(2, 2)
    print(json.dumps({"env": os.environ.get("MKL_CBWR"), "mode": numerics.mkl_mode()}))
    """
)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch is built without MKL")
def test_the_mode_is_set_before_mkl_starts_and_a_users_own_is_kept():
    result = _python(MODE, "rbln-first")
    state = json.loads(result.stdout)
    assert state["env"] == "AUTO,STRICT" and state["mode"].startswith("AUTO"), result.stderr
    result = _python(MODE, "rbln-first", env={"MKL_CBWR": "COMPATIBLE"})
    assert json.loads(result.stdout) == {"env": "COMPATIBLE", "mode": "COMPATIBLE"}, result.stderr
    result = _python(MODE, "torch-first")  # too late: said so, and left unset for its workers to compute alike
    assert json.loads(result.stdout) == {"env": None, "mode": "OFF"}, result.stderr
    assert "MKL already runs without MKL_CBWR=AUTO,STRICT" in result.stderr


def test_deactivation_takes_back_the_mode_it_set():
    code = textwrap.dedent(
        """
        import os, rbln_eval.sim as s
        s.activate(); assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
        s.deactivate(); assert "MKL_CBWR" not in os.environ
        os.environ["MKL_CBWR"] = "AVX2"; s.activate(); s.deactivate(); assert os.environ["MKL_CBWR"] == "AVX2"
        print("ok")
        """
    )
    result = _python(code, env={"RBLN_EVAL_SIMULATE": None})
    assert result.stdout.strip() == "ok", result.stderr


# -- pool workers -------------------------------------------------------------------------------------------


class ReportingSource:
    """Hands a pool worker its bundle, first writing down ``MKL_CBWR`` and the MKL mode the worker computes with
    (asking fixes MKL's mode, from the environment the worker then has, before it loads anything)."""

    def __init__(self, bundle_path: str, report_dir: str) -> None:
        self.bundle_path, self.report_dir = bundle_path, report_dir

    def fetch(self) -> Any:
        from rbln_eval.store import Bundle

        state = {"env": os.environ.get(numerics.ENV_MKL_CBWR), "mode": numerics.mkl_mode()}
        Path(self.report_dir, f"{os.getpid()}.json").write_text(json.dumps(state))
        return Bundle.open(Path(self.bundle_path))


def test_pool_workers_compute_in_the_same_mode_and_bits_as_the_parent(tmp_path_factory: pytest.TempPathFactory):
    from lmhelpers import shared_bundle

    from rbln_eval.api import open_lm
    from rbln_eval.execution.pool import PoolExecutor

    bundle = shared_bundle(tmp_path_factory)
    requests = [(None, [5 + i, 6, 7, 8 + i % 3], [9, 10 + i]) for i in range(12)]
    expected = open_lm(bundle, device=0)._loglikelihood_tokens(requests, disable_tqdm=True)
    reports = tmp_path_factory.mktemp("worker-modes")
    pool = PoolExecutor(bundle, [[0], [1]], source=ReportingSource(str(bundle.path), str(reports)))
    with open_lm(bundle, executor=pool) as lm:
        got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert got == expected  # exact floats
    states = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    parent = {"env": os.environ.get("MKL_CBWR"), "mode": numerics.mkl_mode()}
    assert len(states) == 2 and all(state == parent for state in states), (states, parent)
    assert parent["env"] is not None and parent["mode"] != "OFF"
