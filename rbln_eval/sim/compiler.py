"""Simulated compile: `compile_from_torch`, `compile` and `CompileContext`."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from . import devices
from ._env import ENV_COMPILE_MS, env_number
from ._version import SIM_VERSION, sim_target
from .compiled import RBLNCompiledModel, _dtype_name, _torch_dtype
from .graph import Captured, capture
from .static import StaticPool


__all__ = ["CompileContext", "compile", "compile_from_torch"]


class CompileContext:
    """Shared state of the graphs of one model compiled together.

    Args:
        use_weight_sharing: The graphs share their weights on the device (reported once).
    """

    def __init__(self, use_weight_sharing: bool = False, **kwargs: Any) -> None:
        self.use_weight_sharing = bool(use_weight_sharing)
        self.options = dict(kwargs)
        self.group = uuid.uuid4().hex
        self.pool = StaticPool(self.group)
        self._static_by_id: dict[int, str] = {}
        self._static_tensors: dict[str, torch.Tensor] = {}
        self._next_index = 0
        self._weights_reported = False

    def mark_static_address(self, tensor: torch.Tensor, name: str | None = None) -> None:
        """Mark `tensor` (an example input) as device-resident state named `name`."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"mark_static_address expects a tensor, got {type(tensor).__name__}")
        name = name if name is not None else f"static_{len(self._static_tensors)}"
        known = self._static_tensors.get(name)
        if known is not None and known is not tensor:
            if list(known.shape) != list(tensor.shape) or known.dtype != tensor.dtype:
                raise ValueError(f"static tensor {name!r} was marked with a different shape or dtype")
        self._static_tensors[name] = tensor
        self._static_by_id[id(tensor)] = name

    def is_static(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether input `name` with example `tensor` is static in this context."""
        return self._static_by_id.get(id(tensor)) == name or (
            name in self._static_tensors and self._static_tensors[name] is tensor
        )

    def _claim_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        self.pool.members.add(index)
        return index

    def _claim_weights(self) -> bool:
        if not self.use_weight_sharing:
            return True
        first = not self._weights_reported
        self._weights_reported = True
        return first


def _check_input_info(input_info: Any) -> list[tuple[str, list[int], str]]:
    if not isinstance(input_info, (list, tuple)) or not input_info:
        raise ValueError("input_info must be a non-empty list of (name, shape, dtype)")
    checked: list[tuple[str, list[int], str]] = []
    seen: set[str] = set()
    for item in input_info:
        if not (isinstance(item, (list, tuple)) and len(item) == 3):
            raise ValueError(f"input_info entries must be (name, shape, dtype), got {item!r}")
        name, shape, dtype = item
        if not isinstance(name, str) or not name:
            raise ValueError(f"input name must be a non-empty string, got {name!r}")
        if name in seen:
            raise ValueError(f"input name {name!r} appears twice in input_info")
        seen.add(name)
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(f"shape of input {name!r} must be a list of non-negative ints, got {shape!r}")
        checked.append((name, list(shape), _dtype_name(dtype)))
    return checked


def _resolve_npu(npu: str | None) -> str:
    if npu is None:
        npu = devices.npu_name(0)
        if npu is None:
            raise RuntimeError("no NPU to compile for: the simulated node has no device; pass npu=")
    if not isinstance(npu, str) or not re.match(r"^RBLN-(CA|CR)\d{1,2}$", npu):
        raise ValueError(f"unknown npu {npu!r}")
    return npu


def compile(  # noqa: A001 - mirrors the SDK's name
    module: torch.nn.Module,
    input_info: Sequence[tuple[str, Sequence[int], str | torch.dtype]] | None = None,
    npu: str | None = None,
    num_devices: int | None = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    compile_context: CompileContext | None = None,
    tensor_parallel_size: int | None = None,
    **kwargs: Any,
) -> RBLNCompiledModel:
    """Compile `module` for `num_devices` x `npu` (default: the node's NPU).

    Args:
        module: The torch module; called with the inputs in `input_info` order.
        input_info: `(name, shape, dtype)` of every input.
        npu: Target NPU name, e.g. `RBLN-CA25`; the compile target becomes `SIM-<npu>`.
        num_devices: Tensor-parallel degree (`tensor_parallel_size` is accepted as an alias).
        example_inputs: One tensor per input; zeros of `input_info` when omitted. Meta tensors
            are fine for static inputs.
        compile_context: Context of the model's graphs (static buffers, weight sharing).

    Raises:
        ValueError: Inconsistent `input_info`/`example_inputs`, bad `num_devices` or `npu`.
        GraphError: The module cannot be captured or uses an unsupported operator.
    """
    if input_info is None:
        raise ValueError("input_info is required")
    if input_info and all(isinstance(i, list) and i and isinstance(i[0], (list, tuple)) for i in input_info):
        # one graph per input shape (Qwen2-VL's vision tower, one per max_seq_len): one shape is supported
        if len(input_info) != 1:
            raise ValueError(
                f"the simulator compiles one input shape per model, got {len(input_info)} "
                "(e.g. a vision tower's max_seq_len list): compile with a single max_seq_len"
            )
        input_info = input_info[0]
    info = _check_input_info(input_info)
    npu = _resolve_npu(npu)
    if num_devices is not None and tensor_parallel_size is not None and num_devices != tensor_parallel_size:
        raise ValueError("num_devices and tensor_parallel_size disagree")
    count = (
        num_devices if num_devices is not None else (tensor_parallel_size if tensor_parallel_size is not None else 1)
    )
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"num_devices must be a positive integer, got {count!r}")

    if example_inputs is None:
        example_inputs = [torch.zeros(shape, dtype=_torch_dtype(dtype)) for _, shape, dtype in info]
    example_inputs = list(example_inputs)
    if len(example_inputs) != len(info):
        raise ValueError(f"got {len(example_inputs)} example inputs for {len(info)} entries of input_info")
    for (name, shape, dtype), tensor in zip(info, example_inputs, strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"example input {name!r} is not a tensor")
        if list(tensor.shape) != shape or tensor.dtype != _torch_dtype(dtype):
            raise ValueError(
                f"example input {name!r} is {list(tensor.shape)} {tensor.dtype}, but input_info says {shape} {dtype}"
            )

    context = compile_context
    static = [
        context is not None and context.is_static(name, t)
        for (name, _, _), t in zip(info, example_inputs, strict=True)
    ]
    # Static inputs may come as meta tensors; export needs CPU tensors (never filled).
    concrete = [torch.empty(t.shape, dtype=t.dtype) if t.device.type == "meta" else t for t in example_inputs]
    if any(t.device.type != "cpu" for t in concrete):
        raise ValueError("example inputs must be CPU or meta tensors")

    captured: Captured = capture(module, concrete)

    if context is not None:
        pool, index, owner, group = context.pool, context._claim_index(), context._claim_weights(), context.group
    else:
        group = uuid.uuid4().hex
        pool, index, owner = StaticPool(group), 0, True
        pool.members.add(0)
    weight_bytes = sum(t.numel() * t.element_size() for t in captured.tensors.values())
    header = {
        "sim_version": SIM_VERSION,
        "torch_version": torch.__version__,
        "target": sim_target(npu),
        "npu": npu,
        "num_devices": count,
        "inputs": [
            {"name": name, "shape": shape, "dtype": dtype, "static": is_static}
            for (name, shape, dtype), is_static in zip(info, static, strict=True)
        ],
        "outputs": captured.outputs,
        "static": {
            name: {"shape": shape, "dtype": dtype} for (name, shape, dtype), s in zip(info, static, strict=True) if s
        },
        "group": group,
        "graph_index": index,
        "weight_bytes": weight_bytes,
        "weight_owner": owner,
        "activation_bytes": captured.activation_bytes,
        "options": {k: v for k, v in sorted(kwargs.items()) if isinstance(v, (str, int, float, bool, type(None)))},
    }
    tensors = pool.intern(captured.tensors)
    return RBLNCompiledModel(_parts={"header": header, "graph": captured.graph, "tensors": tensors, "pool": pool})


def compile_from_torch(
    module: torch.nn.Module,
    input_info: Sequence[tuple[str, Sequence[int], str | torch.dtype]],
    **kwargs: Any,
) -> RBLNCompiledModel:
    """Capture a torch module (with `torch.export`) and compile it; keyword arguments as `compile`."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"compile_from_torch expects a torch.nn.Module, got {type(module).__name__}")
    compiled = compile(module, input_info=input_info, **kwargs)
    seconds = env_number(ENV_COMPILE_MS, float, 0.0, "a non-negative number of milliseconds", minimum=0.0) / 1000.0
    if seconds:
        time.sleep(seconds)  # a real compile takes minutes: interruptible like one
    return compiled
