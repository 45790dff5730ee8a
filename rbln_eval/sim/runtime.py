"""Simulated `rebel.Runtime`: runs a compiled model's graph on CPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from . import counting, devices
from ._env import env_number
from .compiled import RBLNCompiledModel, _torch_dtype
from .numerics import aligned

__all__ = ["ENV_LATENCY_MS", "Runtime"]

from ._env import ENV_LATENCY_MS, ENV_PERTURB  # noqa: E402


def _latency_seconds() -> float:
    return env_number(ENV_LATENCY_MS, float, 0.0, "a non-negative number of milliseconds", minimum=0.0) / 1000.0


def _perturbation() -> float:
    """Test-only: the ``RBLN_EVAL_SIM_PERTURB`` amplitude (0 when unset)."""
    return env_number(ENV_PERTURB, float, 0.0, "a number")


def _perturbed(result: Any, amplitude: float) -> Any:
    """``result + amplitude * sin(i)`` over its flattened elements (floating-point outputs only)."""
    if not isinstance(result, torch.Tensor) or not result.is_floating_point():
        return result
    noise = torch.sin(torch.arange(result.numel(), dtype=torch.float64)).reshape(result.shape)
    return result + (amplitude * noise).to(result.dtype)


class Runtime:
    """A compiled model loaded on simulated NPU device(s).

    Args:
        compiled_model: The `RBLNCompiledModel` to run.
        tensor_type: Only `"pt"` (torch tensors in, torch tensors out) is supported.
        device: Device id, list of ids (one per `num_devices`), or None for `0..num_devices-1`.
        activate_profiler: Accepted and ignored.
        timeout: Accepted and ignored.

    Raises:
        DeviceError: A device does not exist, or the device list does not fit the compiled model.
        RuntimeError: The model does not fit the simulated device memory ("Lack of device memory").

    Called as `runtime(*inputs, out=None, **named_inputs)` with the non-static inputs in
    `input_info` order (or by name). Returns the output tensor, or a list when the graph has
    several outputs; with `out=`, results are copied into the given buffers, which are returned.
    """

    def __init__(
        self,
        compiled_model: RBLNCompiledModel,
        tensor_type: str = "pt",
        device: int | list[int] | None = None,
        activate_profiler: bool | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(compiled_model, RBLNCompiledModel):
            raise TypeError(f"Runtime expects an RBLNCompiledModel, got {type(compiled_model).__name__}")
        if tensor_type != "pt":
            raise ValueError(f"the simulator supports tensor_type='pt' only, got {tensor_type!r}")
        self.compiled_model = compiled_model
        self.devices = devices.resolve_devices(device, compiled_model.num_devices, compiled_model.npu)
        self.graph_name = compiled_model.name or "model"
        self._check_memory()

        self._program = compiled_model._program()
        self._pool = compiled_model._pool
        inputs = compiled_model.inputs
        self._inputs = [entry for entry in inputs if not entry["static"]]
        self._slots: list[tuple[str, Any]] = []  # per graph input: ("arg", k) or ("static", tensor)
        static = compiled_model.static_buffers
        arg = 0
        for entry in inputs:
            if entry["static"]:
                spec = static[entry["name"]]
                self._slots.append(("static", self._pool.buffer(entry["name"], spec["shape"], spec["dtype"])))
            else:
                self._slots.append(("arg", arg))
                arg += 1
        #: the runtime inputs (indices into the call's inputs) that the graph writes to
        written = self._program.mutated_inputs
        self._written = [ref for i, (kind, ref) in enumerate(self._slots) if kind == "arg" and i in written]
        self._index_to_input_name = {i: e["name"] for i, e in enumerate(self._inputs)}
        self._input_name_to_index = {e["name"]: i for i, e in enumerate(self._inputs)}
        self._dtypes = [_torch_dtype(e["dtype"]) for e in self._inputs]
        self._lock = threading.Lock()

    def _check_memory(self) -> None:
        cm = self.compiled_model
        capacity = devices.dram_per_chiplet(cm.npu)
        allocs = cm.get_alloc_per_chiplet_by_key()
        for node in range(cm.num_devices):
            for chiplet in range(devices.chiplets_per_device(cm.npu)):
                used = sum(allocs[key][node][chiplet] for key in allocs)
                if used > capacity:
                    raise RuntimeError(
                        f"Lack of device memory: {self.graph_name!r} needs {used} bytes on device "
                        f"{self.devices[node]}, which has {capacity} available"
                    )

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def __repr__(self) -> str:
        names = ", ".join(e["name"] for e in self._inputs)
        return (
            f"<rebel.Runtime (simulated) {self.graph_name!r} target={self.compiled_model.target} "
            f"devices={self.devices} inputs=[{names}]>"
        )

    def _bind(self, args: Sequence[Any], named: dict[str, Any]) -> list[torch.Tensor]:
        if len(args) > len(self._inputs):
            raise ValueError(f"{self.graph_name!r} takes {len(self._inputs)} inputs, got {len(args)} positional")
        bound: list[Any] = list(args) + [None] * (len(self._inputs) - len(args))
        for name, value in named.items():
            index = self._input_name_to_index.get(name)
            if index is None:
                raise ValueError(
                    f"{self.graph_name!r} has no input named {name!r} (inputs: {list(self._input_name_to_index)})"
                )
            if bound[index] is not None:
                raise ValueError(f"input {name!r} given twice")
            bound[index] = value
        for entry, dtype, value in zip(self._inputs, self._dtypes, bound, strict=True):
            if value is None:
                raise ValueError(f"missing input {entry['name']!r} of {self.graph_name!r}")
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {entry['name']!r} must be a torch.Tensor, got {type(value).__name__}")
            if list(value.shape) != entry["shape"]:
                raise ValueError(
                    f"input {entry['name']!r} of {self.graph_name!r} has shape {list(value.shape)}, "
                    f"compiled for {entry['shape']}"
                )
            if value.dtype != dtype:
                raise TypeError(
                    f"input {entry['name']!r} of {self.graph_name!r} has dtype {value.dtype}, compiled for {dtype}"
                )
        return bound

    def _tokens(self, bound: list[torch.Tensor]) -> int:
        for entry, value in zip(self._inputs, bound, strict=True):
            if entry["name"] == "input_ids":
                return value.numel()
            if entry["name"] == "inputs_embeds":
                return value.numel() // max(value.shape[-1], 1)
        return 0

    def __call__(self, *args: torch.Tensor, out: Any = None, **named: torch.Tensor) -> Any:
        bound = self._bind(args, named)
        started = time.perf_counter()
        # As an NPU copies its inputs into device memory: a view at another offset (a chunk of a longer
        # prompt, a row of a batch) is computed on from an aligned copy, so its bits do not depend on where
        # the caller's tensor happens to start (see `numerics`).
        staged = [aligned(value) for value in bound]
        graph_inputs = [staged[ref] if kind == "arg" else ref for kind, ref in self._slots]
        with self._pool.run_lock:
            results = self._program(graph_inputs)
            for index in self._written:  # a cache passed as an ordinary input: written back
                if staged[index] is not bound[index]:
                    bound[index].copy_(staged[index])
        perturb = _perturbation()
        if perturb:
            results = [_perturbed(result, perturb) for result in results]
        remaining = _latency_seconds() - (time.perf_counter() - started)
        if remaining > 0:  # the simulated device time: the arithmetic above stands for the device's own work
            time.sleep(remaining)
        counting.record(self.graph_name, self._tokens(bound), time.perf_counter() - started)
        if out is not None:
            buffers = [out] if isinstance(out, torch.Tensor) else list(out)
            if len(buffers) != len(results):
                raise ValueError(f"out= has {len(buffers)} buffers, {self.graph_name!r} has {len(results)} outputs")
            for buffer, result in zip(buffers, results, strict=True):
                if list(buffer.shape) != list(result.shape):
                    raise ValueError(
                        f"out buffer shape {list(buffer.shape)} does not match output {list(result.shape)}"
                    )
                buffer.copy_(result)
            results = buffers
        return results[0] if len(results) == 1 else list(results)

    def run(self, *args: torch.Tensor, out: Any = None, **named: torch.Tensor) -> Any:
        """Same as calling the runtime."""
        return self(*args, out=out, **named)
