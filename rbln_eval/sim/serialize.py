"""The simulator's `.rbln` file format: JSON and safetensors, no pickle.

Layout (all integers little-endian):

```
offset 0       8 bytes   magic b"RBLNSIM1"
offset 8       8 bytes   header length H (u64)
offset 16      H bytes   header: UTF-8 JSON object (see `read_rbln` for the checked fields)
offset 16+H    P bytes   payload: graph JSON (UTF-8) followed by a safetensors blob; their
                         (offset, length) within the payload are header["sections"]
end - 32       32 bytes  SHA-256 of every byte before it
```

The header carries `format` ("rbln-sim"), `format_version`, `sim_version`, the compile `target`
(`SIM-<npu>`), `npu`, `num_devices`, the inputs (name, shape, dtype, static), outputs, static
buffers, memory figures and `payload_sha256`.

Loading verifies the trailing digest before parsing anything, so flipped or missing bytes fail
with `RBLNFormatError`. Parsing uses only `json` and `safetensors`; the graph's operators are then
checked against an allow-list (`graph.resolve_target`). A file that was not written by the
simulator (a real rebel-compiler artifact, say) is rejected by its magic. The tensors come back as
64-byte aligned copies (see `numerics`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .numerics import aligned

__all__ = ["FORMAT", "FORMAT_VERSION", "MAGIC", "RBLNFormatError", "read_rbln", "write_rbln"]

MAGIC = b"RBLNSIM1"
FORMAT = "rbln-sim"
FORMAT_VERSION = 1
_DIGEST = 32
_MAX_HEADER = 64 * 2**20


class RBLNFormatError(ValueError):
    """A `.rbln` file is not a simulator artifact, is corrupted, or is malformed."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def write_rbln(
    path: str | os.PathLike[str], header: dict[str, Any], graph: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write a `.rbln` file atomically (temporary file in the same directory, then rename)."""
    graph_bytes = _canonical(graph)
    tensor_bytes = save_safetensors(dict(tensors)) if tensors else b""
    payload = graph_bytes + tensor_bytes
    header = dict(header)
    header.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sections": {"graph": [0, len(graph_bytes)], "tensors": [len(graph_bytes), len(tensor_bytes)]},
            "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
    )
    header_bytes = _canonical(header)
    body = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + payload
    data = body + hashlib.sha256(body).digest()

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _section(header: dict[str, Any], name: str, payload_size: int) -> tuple[int, int]:
    sections = header.get("sections")
    entry = sections.get(name) if isinstance(sections, dict) else None
    if (
        not isinstance(entry, list)
        or len(entry) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in entry)
        or entry[0] + entry[1] > payload_size
    ):
        raise RBLNFormatError(f"malformed header: bad section {name!r}")
    return entry[0], entry[1]


def read_rbln(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a `.rbln` file; returns `(header, graph, tensors)`.

    Raises:
        RBLNFormatError: Not a simulator artifact, checksum mismatch (tampered or truncated),
            or malformed content.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise RBLNFormatError(
            f"{path} is not a simulated .rbln file (bad magic); files compiled by the real "
            "rebel-compiler can only be loaded on an RBLN NPU"
        )
    if len(data) < len(MAGIC) + 8 + _DIGEST:
        raise RBLNFormatError(f"{path} is truncated")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise RBLNFormatError(f"{path} is corrupted or was modified: checksum mismatch")
    (header_len,) = struct.unpack("<Q", body[8:16])
    if header_len > _MAX_HEADER or 16 + header_len > len(body):
        raise RBLNFormatError(f"{path} has a malformed header length")
    try:
        header = json.loads(body[16 : 16 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RBLNFormatError(f"{path} has a malformed header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RBLNFormatError(f"{path} is not a simulator artifact (format {header.get('format')!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise RBLNFormatError(
            f"{path} uses format version {header.get('format_version')!r}; this simulator reads "
            f"version {FORMAT_VERSION}"
        )
    payload = body[16 + header_len :]
    if (
        header.get("payload_size") != len(payload)
        or header.get("payload_sha256") != hashlib.sha256(payload).hexdigest()
    ):
        raise RBLNFormatError(f"{path} is corrupted: payload does not match its header")
    g_off, g_len = _section(header, "graph", len(payload))
    t_off, t_len = _section(header, "tensors", len(payload))
    try:
        graph = json.loads(payload[g_off : g_off + g_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RBLNFormatError(f"{path} has a malformed graph: {exc}") from None
    try:
        tensors = load_safetensors(bytes(payload[t_off : t_off + t_len])) if t_len else {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise RBLNFormatError(f"{path} has malformed tensor data: {exc}") from None
    # safetensors' tensors view the bytes of the file at addresses the process's heap decides (16-byte
    # aligned at best): copied into torch's 64-byte aligned allocations, every process computes alike.
    for name in list(tensors):
        tensors[name] = aligned(tensors[name])
    return header, graph, tensors
