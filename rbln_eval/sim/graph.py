"""Capture a module into a data-only graph, and run such a graph on CPU.

A graph is plain JSON (schema below) plus a dict of named tensors. Nothing in it is code: every
operator is looked up by name in a fixed allow-list (`aten` operators, the simulator's
`rbln_custom_ops`, a few `operator` functions for symbolic integers), every argument is a JSON
value, a tensor reference, or one of a few torch enums.

Graph JSON (`GRAPH_SCHEMA_VERSION` 1):

```
{"schema": 1,
 "inputs": [{"name": str, "source": "weight", "key": str}        # a stored tensor
            | {"name": str, "source": "input", "index": int}],   # the index-th runtime input
 "nodes": [{"name": str, "target": "aten.view.default", "args": [...], "kwargs": {...}}],
 "outputs": [value, ...]}
```

Values are JSON scalars and lists, or one-key objects: `{"$ref": slot}` (slot = position among
inputs then nodes; always an earlier one), `{"$float": "inf" | "-inf" | "nan"}`,
`{"$dtype": "float32"}`, `{"$device": "cpu"}`, `{"$layout": "strided"}`,
`{"$memory_format": "contiguous_format"}`.
"""

from __future__ import annotations

import inspect
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import ops

__all__ = ["GRAPH_SCHEMA_VERSION", "Captured", "GraphError", "Program", "capture"]

GRAPH_SCHEMA_VERSION = 1

_OPERATOR_FUNCS: dict[str, Callable[..., Any]] = {
    name: getattr(operator, name)
    for name in (
        "getitem",
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "mod",
        "neg",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
    )
}
_SYM_FUNCS: dict[str, Callable[..., Any]] = {
    "sym_not": torch.sym_not,
    "sym_max": torch.sym_max,
    "sym_min": torch.sym_min,
    "sym_float": torch.sym_float,
    "sym_int": torch.sym_int,
    "sym_sum": torch.sym_sum,
}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.complex64,
    )
}
_LAYOUTS = {"strided": torch.strided, "sparse_coo": torch.sparse_coo}
_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "preserve_format": torch.preserve_format,
    "channels_last": torch.channels_last,
}
_DEVICES = {"cpu"}


class GraphError(ValueError):
    """A graph cannot be captured, or a stored graph is malformed or uses a forbidden operator."""


# ----------------------------------------------------------------------------------------------
# Operator names
# ----------------------------------------------------------------------------------------------
def target_name(target: Any) -> str:
    """The stored name of an FX call target; raises `GraphError` if it is not allowed."""
    if isinstance(target, torch._ops.OpOverload):
        namespace = target.namespace
        name = f"{namespace}.{target._schema.name.split('::', 1)[1]}.{target._overloadname}"
        resolve_target(name)
        return name
    for prefix, table in (("operator", _OPERATOR_FUNCS), ("torch", _SYM_FUNCS)):
        for name, fn in table.items():
            if target is fn:
                return f"{prefix}.{name}"
    raise GraphError(f"operator {target!r} is not supported by the simulator")


def resolve_target(name: str) -> Callable[..., Any]:
    """The callable of an allowed stored operator name; raises `GraphError` otherwise."""
    if not isinstance(name, str):
        raise GraphError(f"operator name must be a string, got {type(name).__name__}")
    parts = name.split(".")
    if len(parts) == 2 and parts[0] == "operator" and parts[1] in _OPERATOR_FUNCS:
        return _OPERATOR_FUNCS[parts[1]]
    if len(parts) == 2 and parts[0] == "torch" and parts[1] in _SYM_FUNCS:
        return _SYM_FUNCS[parts[1]]
    if len(parts) == 3 and all(_IDENT.match(p) for p in parts):
        namespace, op_name, overload = parts
        if namespace == "rbln_custom_ops" and op_name in ops.OP_NAMES and overload == "default":
            return ops.kernel(op_name)
        if namespace == "aten":
            try:
                packet = getattr(torch.ops.aten, op_name)
                return getattr(packet, overload)
            except (AttributeError, RuntimeError):
                raise GraphError(f"unknown aten operator {name!r}") from None
    raise GraphError(f"operator {name!r} is not on the simulator's allow-list")


# ----------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ref:
    slot: int


def _encode(value: Any, slot_of: dict[str, int]) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"$ref": slot_of[value.name]}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, (list, tuple)):
        return [_encode(v, slot_of) for v in value]
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
        if name not in _DTYPES:
            raise GraphError(f"dtype {value} is not supported by the simulator")
        return {"$dtype": name}
    if isinstance(value, torch.device):
        if value.type not in _DEVICES:
            raise GraphError(f"graph refers to device {value}; only CPU tensors can be captured")
        return {"$device": value.type}
    if isinstance(value, torch.layout):
        for name, layout in _LAYOUTS.items():
            if value is layout:
                return {"$layout": name}
    if isinstance(value, torch.memory_format):
        for name, fmt in _MEMORY_FORMATS.items():
            if value is fmt:
                return {"$memory_format": name}
    raise GraphError(f"cannot store graph argument of type {type(value).__name__}: {value!r}")


def _decode(value: Any, limit: int, depth: int = 0) -> Any:
    """Decode a stored value; references must point to one of the first `limit` slots."""
    if depth > 16:
        raise GraphError("graph argument nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63:
            raise GraphError("integer argument out of range")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [_decode(v, limit, depth + 1) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((tag, payload),) = value.items()
        if tag == "$ref" and isinstance(payload, int) and not isinstance(payload, bool) and 0 <= payload < limit:
            return _Ref(payload)
        if tag == "$float" and payload in ("inf", "-inf", "nan"):
            return float(payload)
        if tag == "$dtype" and payload in _DTYPES:
            return _DTYPES[payload]
        if tag == "$device" and payload in _DEVICES:
            return torch.device(payload)
        if tag == "$layout" and payload in _LAYOUTS:
            return _LAYOUTS[payload]
        if tag == "$memory_format" and payload in _MEMORY_FORMATS:
            return _MEMORY_FORMATS[payload]
    raise GraphError(f"malformed graph argument: {str(value)[:200]}")


def _refs(value: Any) -> list[int]:
    if isinstance(value, _Ref):
        return [value.slot]
    if isinstance(value, (list, tuple)):
        return [slot for v in value for slot in _refs(v)]
    if isinstance(value, dict):
        return [slot for v in value.values() for slot in _refs(v)]
    return []


def _materialize(value: Any, env: list[Any]) -> Any:
    if isinstance(value, _Ref):
        return env[value.slot]
    if isinstance(value, list):
        return [_materialize(v, env) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Capture
# ----------------------------------------------------------------------------------------------
@dataclass
class Captured:
    """A captured module: graph JSON, its stored tensors, and facts about its outputs and memory."""

    graph: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    outputs: list[dict[str, Any]]
    activation_bytes: int


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def capture(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> Captured:
    """Export `module` called with `example_inputs` and turn it into a stored graph."""
    try:
        exported = torch.export.export(module, tuple(example_inputs), strict=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise GraphError(f"could not capture the module with torch.export: {exc}") from exc

    signature = exported.graph_signature
    for spec in signature.output_specs:
        if spec.kind != torch.export.graph_signature.OutputKind.USER_OUTPUT:
            raise GraphError(
                f"the module mutates {spec.target!r} ({spec.kind.name}); only the KV-cache custom "
                "operators may write to inputs"
            )

    tensors: dict[str, torch.Tensor] = {}
    keys_by_identity: dict[tuple[Any, ...], str] = {}
    inputs: list[dict[str, Any]] = []
    slot_of: dict[str, int] = {}
    user_index = 0
    kinds = torch.export.graph_signature.InputKind
    for spec in signature.input_specs:
        name = spec.arg.name
        slot_of[name] = len(inputs)
        if spec.kind == kinds.USER_INPUT:
            inputs.append({"name": name, "source": "input", "index": user_index})
            user_index += 1
            continue
        if spec.kind in (kinds.PARAMETER, kinds.BUFFER):
            tensor = exported.state_dict.get(spec.target)
            if tensor is None:
                tensor = exported.constants[spec.target]
        elif spec.kind == kinds.CONSTANT_TENSOR:
            tensor = exported.constants[spec.target]
        else:
            raise GraphError(f"unsupported graph input {name!r} of kind {spec.kind.name}")
        if not isinstance(tensor, torch.Tensor):
            raise GraphError(f"graph constant {spec.target!r} is not a tensor")
        tensor = tensor.detach()
        identity = (
            tensor.data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        key = keys_by_identity.get(identity)
        if key is None:
            key = f"t{len(tensors)}"
            keys_by_identity[identity] = key
            tensors[key] = tensor.clone(memory_format=torch.contiguous_format)
        inputs.append({"name": name, "source": "weight", "key": key})

    nodes: list[dict[str, Any]] = []
    outputs: list[Any] = []
    output_meta: list[dict[str, Any]] = []
    live: dict[str, int] = {}
    last_use: dict[str, torch.fx.Node] = {}
    for node in exported.graph.nodes:
        for used in node.all_input_nodes:
            last_use[used.name] = node
    peak = current = 0
    for node in exported.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            flat = node.args[0]
            outputs = [_encode(v, slot_of) for v in flat]
            for value in flat:
                val = value.meta.get("val") if isinstance(value, torch.fx.Node) else None
                if isinstance(val, torch.Tensor):
                    output_meta.append({"shape": list(val.shape), "dtype": str(val.dtype).removeprefix("torch.")})
                else:
                    output_meta.append({"shape": None, "dtype": None})
            continue
        if node.op != "call_function":
            raise GraphError(f"unsupported graph node {node.name!r} ({node.op})")
        slot_of[node.name] = len(inputs) + len(nodes)
        nodes.append(
            {
                "name": node.name,
                "target": target_name(node.target),
                "args": _encode(list(node.args), slot_of),
                "kwargs": {k: _encode(v, slot_of) for k, v in node.kwargs.items()},
            }
        )
        size = _nbytes(node.meta.get("val"))
        live[node.name] = size
        current += size
        peak = max(peak, current)
        for used in node.all_input_nodes:
            if last_use.get(used.name) is node and used.name in live:
                current -= live.pop(used.name)

    graph = {"schema": GRAPH_SCHEMA_VERSION, "inputs": inputs, "nodes": nodes, "outputs": outputs}
    return Captured(graph=graph, tensors=tensors, outputs=output_meta, activation_bytes=peak)


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------
class Program:
    """An executable, validated graph.

    Args:
        graph: Graph JSON (see module docstring).
        tensors: The stored tensors the graph's weight inputs name.

    Raises:
        GraphError: The graph is malformed, names a missing tensor or a forbidden operator.
    """

    def __init__(self, graph: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if not isinstance(graph, dict) or graph.get("schema") != GRAPH_SCHEMA_VERSION:
            raise GraphError(f"unsupported graph schema {graph.get('schema') if isinstance(graph, dict) else graph!r}")
        raw_inputs, raw_nodes, raw_outputs = graph.get("inputs"), graph.get("nodes"), graph.get("outputs")
        if not (isinstance(raw_inputs, list) and isinstance(raw_nodes, list) and isinstance(raw_outputs, list)):
            raise GraphError("graph must have list-valued 'inputs', 'nodes' and 'outputs'")

        self._weights: list[tuple[int, torch.Tensor]] = []
        self._input_slots: list[tuple[int, int]] = []
        for slot, entry in enumerate(raw_inputs):
            if not isinstance(entry, dict):
                raise GraphError("malformed graph input")
            if entry.get("source") == "weight" and isinstance(entry.get("key"), str):
                if entry["key"] not in tensors:
                    raise GraphError(f"graph input {entry.get('name')!r} names missing tensor {entry['key']!r}")
                self._weights.append((slot, tensors[entry["key"]]))
            elif entry.get("source") == "input" and isinstance(entry.get("index"), int):
                self._input_slots.append((slot, entry["index"]))
            else:
                raise GraphError(f"malformed graph input {str(entry)[:200]}")
        indices = sorted(index for _, index in self._input_slots)
        if indices != list(range(len(indices))):
            raise GraphError("graph runtime inputs are not numbered 0..n-1")
        self.num_inputs = len(indices)

        first = len(raw_inputs)
        runtime_index = dict(self._input_slots)
        #: Runtime inputs (by index) that an operator writes to: a KV cache passed as an ordinary input.
        self.mutated_inputs: set[int] = set()
        self._steps: list[tuple[Callable[..., Any], list[Any], dict[str, Any]]] = []
        for position, entry in enumerate(raw_nodes):
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("args"), list)
                or not isinstance(entry.get("kwargs"), dict)
            ):
                raise GraphError("malformed graph node")
            limit = first + position
            fn = resolve_target(entry.get("target"))
            args = _decode(entry["args"], limit)
            kwargs = {}
            for key, value in entry["kwargs"].items():
                if not _IDENT.match(key):
                    raise GraphError(f"malformed keyword argument name {key!r}")
                kwargs[key] = _decode(value, limit)
            self._steps.append((fn, args, kwargs))
            target = entry["target"]
            if target.startswith("rbln_custom_ops."):
                written = set(ops.mutated_arguments(target.split(".")[1]))
                names = list(inspect.signature(fn).parameters)
                bound = [*zip(names, args), *kwargs.items()]
                for name, value in bound:
                    if name in written and isinstance(value, _Ref) and value.slot in runtime_index:
                        self.mutated_inputs.add(runtime_index[value.slot])
        self._num_slots = first + len(raw_nodes)
        self._outputs = [_decode(v, self._num_slots) for v in raw_outputs]

        # free intermediates after their last use
        keep = {slot for slot, _ in self._weights} | set(_refs(self._outputs))
        last: dict[int, int] = {}
        for position, (_, args, kwargs) in enumerate(self._steps):
            for slot in _refs(args) + _refs(kwargs):
                last[slot] = position
        self._frees: list[list[int]] = [[] for _ in self._steps]
        for slot, position in last.items():
            if slot not in keep:
                self._frees[position].append(slot)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[Any]:
        """Run the graph on `inputs` (the runtime inputs, in order); returns the flat outputs."""
        env: list[Any] = [None] * self._num_slots
        for slot, tensor in self._weights:
            env[slot] = tensor
        for slot, index in self._input_slots:
            env[slot] = inputs[index]
        first = self._num_slots - len(self._steps)
        with torch.no_grad():
            for position, (fn, args, kwargs) in enumerate(self._steps):
                env[first + position] = fn(
                    *_materialize(args, env), **{k: _materialize(v, env) for k, v in kwargs.items()}
                )
                for slot in self._frees[position]:
                    env[slot] = None
            return [_materialize(v, env) for v in self._outputs]
