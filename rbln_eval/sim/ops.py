"""CPU reference kernels for the `torch.ops.rbln_custom_ops` operators.

The operators are the ones optimum-rbln builds its graphs from (see
`optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py`, the seq2seq, T5 and
BART architecture files). Their schemas follow the declarations optimum-rbln shipped before the
SDK took them over, extended with the optional arguments optimum-rbln 0.12 passes (`s_aux`,
`is_bidirectional`, `attn_mask`).

Layout shared by the paged attention family:

- `q`: `[B, n_kv, n_heads // n_kv, L, head_dim]`; `k`, `v`: `[B, n_kv, 1, L, head_dim]`.
- `kcache`, `vcache`: `[num_blocks, n_kv, 1, block_size, head_dim]`, mutated in place.
- `seq`: `[B, 1]` start position of each row (prefill runs one row per call, `B = 1`).
- `block_table`: `[max_blocks]` (prefill) or `[B, max_blocks]` (decode). Absolute position `p` of a
  row lives in block `block_table[p // block_size]` at offset `p % block_size`. Negative entries
  are empty blocks: never written, never attended. Positions past the table (padding of the last
  prefill chunk when `max_seq_len` is not a multiple of the chunk) are dropped.

Every attention op first writes `k`/`v` of positions `seq .. seq + L - 1` into the cache, then
attends over the row's cached positions: causal ops over `0 .. p` (and where `mask != 0` when a
mask is given), masked ops where `mask != 0`, `paged_add_softmax_attn_decode` adds `mask` to the
scores. Scores are multiplied by `scale`, softmax runs in float32. The flash variants compute the
same function (the partition only changes how the device tiles it).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .numerics import aligned

__all__ = ["KERNELS", "MUTATES", "OP_NAMES", "kernel", "mutated_arguments", "register"]

_NS = "rbln_custom_ops"

#: Names of the operators the simulator defines (all with overload `default`).
OP_NAMES: tuple[str, ...] = (
    "linear",
    "rbln_cache_update",
    "paged_attn_prefill",
    "paged_attn_decode",
    "paged_causal_attn_prefill",
    "paged_causal_attn_decode",
    "paged_flash_attn_prefill",
    "paged_flash_attn_decode",
    "paged_flash_causal_attn_prefill",
    "paged_flash_causal_attn_decode",
    "paged_add_softmax_attn_decode",
    "paged_sliding_window_attn_prefill",
    "paged_sliding_window_attn_decode",
)

_registered = False


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
def _row_mask(mask: Tensor, b: int, batch: int) -> Tensor:
    """The mask of batch row `b`, shaped to broadcast against `[n_kv, groups, L, positions]`."""
    m = mask[b] if mask.shape[0] == batch and batch > 1 else mask[0]
    while m.dim() < 4:
        m = m.unsqueeze(0)
    return m


def _fit_positions(m: Tensor, cap: int, fill: float) -> Tensor:
    """Pad or cut the last axis of a mask to `cap` positions."""
    n = m.shape[-1]
    if n == cap:
        return m
    if n > cap:
        return m[..., :cap]
    pad = m.new_full((*m.shape[:-1], cap - n), fill)
    return torch.cat([m, pad], dim=-1)


def _attend(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    allowed: Tensor,
    scale: Tensor,
    additive: Tensor | None = None,
    s_aux: Tensor | None = None,
) -> Tensor:
    """Softmax attention of one row.

    `q` `[n_kv, G, L, D]`, `keys`/`values` `[n_kv, P, D]`, `allowed` broadcastable to
    `[n_kv, G, L, P]`. Rows with no allowed position return zeros.
    """
    n_kv, groups, length, _ = q.shape
    # A row's operands are views at offsets that depend on the batch row or cache block: aligned copies give
    # the same bits wherever the request sits (see `numerics`).
    q, keys, values = aligned(q), aligned(keys), aligned(values)
    scores = torch.matmul(q.float(), keys.float().unsqueeze(1).transpose(-1, -2))
    scores = scores * scale.float()
    if additive is not None:
        scores = scores + additive.float()
    scores = scores.masked_fill(~allowed, float("-inf"))
    if s_aux is not None:
        sink = s_aux.float().reshape(n_kv, groups, 1, 1).expand(n_kv, groups, length, 1)
        scores = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(scores, dim=-1)
    if s_aux is not None:
        probs = probs[..., :-1]
    probs = torch.nan_to_num(probs, nan=0.0)
    return torch.matmul(probs, values.float().unsqueeze(1)).to(q.dtype)


def _paged_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kcache: Tensor,
    vcache: Tensor,
    seq: Tensor,
    scale: Tensor,
    block_table: Tensor,
    block_size: int,
    *,
    causal: bool,
    mask: Tensor | None = None,
    additive_mask: bool = False,
    s_aux: Tensor | None = None,
) -> Tensor:
    batch, n_kv, _, length, head_dim = q.shape
    out = torch.empty_like(q)
    tables = block_table.long()
    if tables.dim() == 1:
        tables = tables.unsqueeze(0)
    starts = seq.reshape(seq.shape[0], -1)[:, 0].long()
    steps = torch.arange(length)
    for b in range(batch):
        table = tables[b] if tables.shape[0] > 1 else tables[0]
        start = int(starts[b] if starts.shape[0] > 1 else starts[0])
        cap = table.numel() * block_size
        # 1. write k/v of positions start .. start + L - 1
        positions = start + steps
        inside = positions < cap
        slots = table[torch.div(positions[inside], block_size, rounding_mode="floor")]
        offsets = positions[inside] % block_size
        keep = slots >= 0
        if bool(keep.any()):
            src = steps[inside][keep]
            kcache[slots[keep], :, 0, offsets[keep]] = k[b, :, 0, src].transpose(0, 1).to(kcache.dtype)
            vcache[slots[keep], :, 0, offsets[keep]] = v[b, :, 0, src].transpose(0, 1).to(vcache.dtype)
        # 2. gather the row's cache in position order
        safe = table.clamp(min=0)
        keys = kcache[safe][:, :, 0].permute(1, 0, 2, 3).reshape(n_kv, cap, head_dim)
        values = vcache[safe][:, :, 0].permute(1, 0, 2, 3).reshape(n_kv, cap, head_dim)
        allowed = (table >= 0).repeat_interleave(block_size).view(1, 1, 1, cap)
        if causal:
            key_pos = torch.arange(cap)
            allowed = allowed & (key_pos.view(1, -1) <= positions.view(-1, 1)).view(1, 1, length, cap)
        additive = None
        if mask is not None:
            row = _row_mask(mask, b, batch)
            if additive_mask:
                additive = _fit_positions(row, cap, float("-inf"))
            else:
                allowed = allowed & (_fit_positions(row, cap, 0.0) != 0)
        out[b] = _attend(q[b], keys, values, allowed, scale, additive, s_aux)
    return out


def _sliding_window_prefill(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kcache: Tensor,
    vcache: Tensor,
    cache_seq_len: Tensor,
    cache_offset: Tensor,
    scale: Tensor,
    block_table: Tensor,
    window: int,
    is_bidirectional: bool,
    attn_mask: Tensor | None,
    s_aux: Tensor | None,
) -> Tensor:
    """One row; the cache block holds the last `cache_seq_len` keys in position order."""
    _, n_kv, _, length, _ = q.shape
    slot = int(block_table.reshape(-1)[0])
    past = int(cache_seq_len.reshape(-1)[0])
    end = int(cache_offset.reshape(-1)[0])
    keys = torch.cat([kcache[slot, :, 0, :past], k[0, :, 0].to(kcache.dtype)], dim=1)
    values = torch.cat([vcache[slot, :, 0, :past], v[0, :, 0].to(vcache.dtype)], dim=1)
    total = past + length
    if attn_mask is not None:
        allowed = _fit_positions(attn_mask.reshape(-1, *attn_mask.shape[-2:])[0], total, 0.0) != 0
        allowed = allowed.view(1, 1, length, total)
    else:
        q_idx = torch.arange(length).view(-1, 1)
        j = torch.arange(total).view(1, -1)
        gap = past + q_idx - j
        valid_kv = j < end
        in_window = (gap >= 0) & (gap < window)
        if is_bidirectional:
            in_window = in_window | ((j >= past) & (gap < window))
        allowed = (valid_kv & in_window).view(1, 1, length, total)
    out = _attend(q[0], keys, values, allowed, scale, None, s_aux).unsqueeze(0)
    kept = min(window, end)
    new_k = keys[:, end - kept : end].clone()
    new_v = values[:, end - kept : end].clone()
    kcache[slot, :, 0, :kept] = new_k
    vcache[slot, :, 0, :kept] = new_v
    return out


def _sliding_window_decode(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kcache: Tensor,
    vcache: Tensor,
    cache_seq_len: Tensor,
    scale: Tensor,
    block_table: Tensor,
    window: int,
    attn_mask: Tensor | None,
    s_aux: Tensor | None,
) -> Tensor:
    batch = q.shape[0]
    out = torch.empty_like(q)
    slots = block_table.reshape(batch, -1)[:, 0].long()
    pasts = cache_seq_len.reshape(batch, -1)[:, 0].long()
    for b in range(batch):
        slot, past = int(slots[b]), int(pasts[b])
        if past < window:
            kcache[slot, :, 0, past] = k[b, :, 0, 0].to(kcache.dtype)
            vcache[slot, :, 0, past] = v[b, :, 0, 0].to(vcache.dtype)
            filled = past + 1
        else:  # full window: drop the oldest key
            kcache[slot, :, 0, :-1] = kcache[slot, :, 0, 1:].clone()
            vcache[slot, :, 0, :-1] = vcache[slot, :, 0, 1:].clone()
            kcache[slot, :, 0, -1] = k[b, :, 0, 0].to(kcache.dtype)
            vcache[slot, :, 0, -1] = v[b, :, 0, 0].to(vcache.dtype)
            filled = window
        size = kcache.shape[3]
        if attn_mask is not None:
            allowed = _fit_positions(attn_mask[b].reshape(1, -1), size, 0.0) != 0
        else:
            allowed = torch.arange(size).view(1, -1) < filled
        out[b] = _attend(q[b], kcache[slot, :, 0], vcache[slot, :, 0], allowed.view(1, 1, 1, size), scale, None, s_aux)
    return out


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------
def register() -> None:
    """Define the operators in `torch.ops.rbln_custom_ops` (idempotent)."""
    global _registered
    if _registered:
        return
    existing = [name for name in OP_NAMES if _op_defined(name)]
    if existing:
        raise RuntimeError(
            f"torch.ops.{_NS} already defines {existing}; the simulator defines these operators itself "
            "and cannot share the namespace with another definition."
        )
    _define_all()
    _registered = True


#: The CPU function behind each operator, which the simulator's graph interpreter calls directly: the
#: ``torch.ops`` dispatcher (autograd and custom-op wrappers) would cost more than the arithmetic itself.
KERNELS: dict[str, Callable[..., Tensor]] = {}
#: The arguments each operator writes to (KV caches), by name.
MUTATES: dict[str, tuple[str, ...]] = {}


def _define(name: str, mutates_args: Sequence[str] | tuple[()]) -> Callable[[Callable[..., Tensor]], Any]:
    """``torch.library.custom_op`` for ``rbln_custom_ops::name``, keeping the plain function in :data:`KERNELS`."""

    def wrap(fn: Callable[..., Tensor]) -> Any:
        KERNELS[name] = fn
        MUTATES[name] = tuple(mutates_args)
        return torch.library.custom_op(f"{_NS}::{name}", mutates_args=mutates_args)(fn)

    return wrap


def kernel(name: str) -> Callable[..., Tensor]:
    """The CPU function of operator ``name`` (one of :data:`OP_NAMES`)."""
    register()
    return KERNELS[name]


def mutated_arguments(name: str) -> tuple[str, ...]:
    """The names of the arguments operator ``name`` (one of :data:`OP_NAMES`) writes to."""
    register()
    return MUTATES[name]


def _op_defined(name: str) -> bool:
    try:
        torch._C._get_schema(f"{_NS}::{name}", "")
    except RuntimeError:
        return False
    return True


def _fake_like_q(q: Tensor, *args, **kwargs) -> Tensor:
    return torch.empty_like(q)


def _define_all() -> None:  # noqa: C901 - one block per operator keeps the schemas readable
    kv = ["kcache", "vcache"]

    @_define("linear", mutates_args=())
    def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return torch._C._nn.linear(input, weight, bias)

    @linear.register_fake
    def _(input, weight, bias=None):
        return input.new_empty((*input.shape[:-1], weight.shape[0]))

    @_define("rbln_cache_update", mutates_args=["cache"])
    def rbln_cache_update(cache: Tensor, state: Tensor, position: Tensor, axis: Tensor) -> Tensor:
        dim = int(axis)
        start = int(position)
        cache.narrow(dim, start, state.shape[dim]).copy_(state.to(cache.dtype))
        # The device returns a placeholder; a zero-strided view keeps it free.
        return torch.zeros((), dtype=cache.dtype).expand(cache.shape)

    @rbln_cache_update.register_fake
    def _(cache, state, position, axis):
        return torch.empty_like(cache)

    # -- masked (non-causal) ---------------------------------------------------------------
    @_define("paged_attn_prefill", mutates_args=kv)
    def paged_attn_prefill(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        is_bidirectional: bool = False,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, s_aux=s_aux
        )

    @_define("paged_attn_decode", mutates_args=kv)
    def paged_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, s_aux=s_aux
        )

    @_define("paged_flash_attn_prefill", mutates_args=kv)
    def paged_flash_attn_prefill(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        partition: int,
        is_bidirectional: bool = False,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, s_aux=s_aux
        )

    @_define("paged_flash_attn_decode", mutates_args=kv)
    def paged_flash_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        partition: int,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, s_aux=s_aux
        )

    # -- causal --------------------------------------------------------------------------------
    def _causal_prefill(q, k, v, kcache, vcache, seq, scale, block_table, block_size, is_bidirectional, mask, s_aux):
        if is_bidirectional:
            if mask is None:
                raise ValueError("bidirectional prefill needs an attention mask")
            return _paged_attention(
                q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, s_aux=s_aux
            )
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=True, mask=mask, s_aux=s_aux
        )

    @_define("paged_causal_attn_prefill", mutates_args=kv)
    def paged_causal_attn_prefill(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        is_bidirectional: bool,
        mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _causal_prefill(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, is_bidirectional, mask, s_aux
        )

    @_define("paged_causal_attn_decode", mutates_args=kv)
    def paged_causal_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=True, mask=mask, s_aux=s_aux
        )

    @_define("paged_flash_causal_attn_prefill", mutates_args=kv)
    def paged_flash_causal_attn_prefill(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        partition: int,
        is_bidirectional: bool,
        mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _causal_prefill(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, is_bidirectional, mask, s_aux
        )

    @_define("paged_flash_causal_attn_decode", mutates_args=kv)
    def paged_flash_causal_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        partition: int,
        mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=True, mask=mask, s_aux=s_aux
        )

    # -- additive mask (T5 relative position bias) -------------------------------------------
    @_define("paged_add_softmax_attn_decode", mutates_args=kv)
    def paged_add_softmax_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        seq: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
    ) -> Tensor:
        return _paged_attention(
            q, k, v, kcache, vcache, seq, scale, block_table, block_size, causal=False, mask=mask, additive_mask=True
        )

    # -- sliding window --------------------------------------------------------------------
    @_define("paged_sliding_window_attn_prefill", mutates_args=kv)
    def paged_sliding_window_attn_prefill(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        cache_seq_len: Tensor,
        cache_offset: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        is_bidirectional: bool,
        attn_mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _sliding_window_prefill(
            q,
            k,
            v,
            kcache,
            vcache,
            cache_seq_len,
            cache_offset,
            scale,
            block_table,
            block_size,
            is_bidirectional,
            attn_mask,
            s_aux,
        )

    @_define("paged_sliding_window_attn_decode", mutates_args=kv)
    def paged_sliding_window_attn_decode(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kcache: Tensor,
        vcache: Tensor,
        cache_seq_len: Tensor,
        cache_offset: Tensor,
        scale: Tensor,
        block_table: Tensor,
        block_size: int,
        attn_mask: Tensor | None = None,
        s_aux: Tensor | None = None,
    ) -> Tensor:
        return _sliding_window_decode(
            q, k, v, kcache, vcache, cache_seq_len, scale, block_table, block_size, attn_mask, s_aux
        )

    for op in (
        paged_attn_prefill,
        paged_attn_decode,
        paged_flash_attn_prefill,
        paged_flash_attn_decode,
        paged_causal_attn_prefill,
        paged_causal_attn_decode,
        paged_flash_causal_attn_prefill,
        paged_flash_causal_attn_decode,
        paged_add_softmax_attn_decode,
        paged_sliding_window_attn_prefill,
        paged_sliding_window_attn_decode,
    ):
        op.register_fake(_fake_like_q)
