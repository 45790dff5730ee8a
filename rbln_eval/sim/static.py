"""Device-resident static buffers (KV caches) shared by the runtimes of one model.

The compiled models of one compile share their context's pool. Compiled models loaded from files
join a pool by the context id stored in the file, one pool per loaded copy of the model: a pool
that already holds a graph of the same index makes the loader start a new pool.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StaticPool", "join_pool"]


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


class StaticPool:
    """Device-resident buffers (KV caches) shared by all runtimes of one model."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.members: set[int] = set()
        self._buffers: dict[str, torch.Tensor] = {}
        self._weights: dict[tuple[Any, ...], torch.Tensor] = {}
        self._lock = threading.Lock()
        #: serializes graph execution on the shared buffers
        self.run_lock = threading.RLock()

    def buffer(self, name: str, shape: Sequence[int], dtype: str) -> torch.Tensor:
        """The buffer `name`, allocated (zeroed) on first request."""
        with self._lock:
            tensor = self._buffers.get(name)
            if tensor is None:
                tensor = torch.zeros(tuple(shape), dtype=_torch_dtype(dtype))
                self._buffers[name] = tensor
            elif list(tensor.shape) != list(shape) or tensor.dtype != _torch_dtype(dtype):
                raise RuntimeError(
                    f"static tensor {name!r} is {list(tensor.shape)} {tensor.dtype} in this model but "
                    f"{list(shape)} {dtype} in another of its graphs"
                )
            return tensor

    def intern(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Share identical weights between the graphs of the model (one copy, as on the device)."""
        shared: dict[str, torch.Tensor] = {}
        with self._lock:
            for key, tensor in tensors.items():
                raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
                identity = (tensor.dtype, tuple(tensor.shape), hashlib.sha256(raw.numpy()).hexdigest())
                shared[key] = self._weights.setdefault(identity, tensor)
        return shared


_pools_lock = threading.Lock()
_pools: dict[str, list[weakref.ReferenceType[StaticPool]]] = {}


def join_pool(group: str, index: int) -> StaticPool:
    with _pools_lock:
        refs = [ref for ref in _pools.get(group, []) if ref() is not None]
        for ref in refs:
            pool = ref()
            if pool is not None and index not in pool.members:
                pool.members.add(index)
                _pools[group] = refs
                return pool
        pool = StaticPool(group)
        pool.members.add(index)
        refs.append(weakref.ref(pool))
        _pools[group] = refs
        return pool
