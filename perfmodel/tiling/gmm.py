"""KernelSpec builders for grouped matmuls: megablox gmm/tgmm, tokamax's fork, XLA's ragged_dot.

All three are the same Pallas structure (``jax/experimental/pallas/ops/tpu/
megablox/gmm.py``): group metadata computed on the host side of the kernel
and scalar-prefetched; a grid ``(tiles_n, num_tiles, tiles_k)`` whose middle
axis walks row tiles *per group*, so a row tile that straddles a group
boundary is visited once per group it touches (masked store).

* :func:`group_metadata` - numpy port of megablox ``make_group_metadata``
  (``start_group=0``, all groups local).
* :func:`gmm_spec` - megablox ``gmm`` (forward ``[m, k] @ [G, k, n]``, and the
  transposed-rhs variant used for the lhs gradient).
* :func:`tgmm_spec` - megablox ``tgmm`` (rhs gradient: ``[k, m]^T`` per group
  times ``[m, n]`` -> ``[G, k, n]``; ragged contracting dimension).
* :func:`tokamax_gmm_spec` - tokamax's Pallas grouped matmul: the megablox
  fork with ``input_buffer_count`` buffers on lhs and rhs (FACTS section 3);
  its output has the lhs dtype (``preferred_element_type=None``).
* :func:`ragged_dot_spec` - XLA's own Mosaic kernel for ``jax.lax.ragged_dot``
  on TPU, from the tiling XLA chose (``perfmodel.xla_tiling``) or given tiles.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from perfmodel.hardware import canonical_dtype
from perfmodel.tiling.spec import KernelSpec, Operand


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@attrs.frozen(kw_only=True, eq=False)
class GroupMetadata:
    """Megablox group metadata (numpy).

    * ``group_offsets``: int[G + 1]; rows of group ``g`` are
      ``group_offsets[g]:group_offsets[g + 1]``; ``group_offsets[0] = 0``.
    * ``group_ids``: int[tiles_m + G - 1]; group worked on at middle-grid index ``i``.
    * ``m_tile_ids``: int[tiles_m + G - 1]; row tile worked on at middle-grid index ``i``.
    * ``num_tiles``: middle-grid extent, ``tiles_m <= num_tiles <= tiles_m + G - 1``
      for non-empty groups covering all rows.

    Entries past ``num_tiles`` are padding (repeat the last value), as in megablox.
    """

    group_offsets: np.ndarray
    group_ids: np.ndarray
    m_tile_ids: np.ndarray
    num_tiles: int

    @property
    def prefetch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.group_offsets, self.group_ids, self.m_tile_ids)


def check_group_sizes(group_sizes, m: int) -> np.ndarray:
    """Group sizes as an int64 array; ``ValueError`` unless non-negative with sum <= m."""
    gs = np.asarray(group_sizes)
    if gs.ndim != 1 or gs.size == 0 or not np.issubdtype(gs.dtype, np.integer):
        raise ValueError(f"group_sizes must be a non-empty 1-d integer sequence, got group_sizes={group_sizes!r}")
    gs = gs.astype(np.int64)
    if (gs < 0).any():
        raise ValueError(f"group_sizes must be >= 0, got group_sizes={gs.tolist()!r}")
    if gs.sum() > m:
        raise ValueError(f"group sizes must sum to at most the rows m={m}, got sum(group_sizes)={int(gs.sum())}")
    return gs


def group_metadata(group_sizes, m: int, tm: int, *, visit_empty_groups: bool = False) -> GroupMetadata:
    """Which (group, row tile) the middle grid axis visits, megablox semantics.

    A group covers the row tiles from ``floor(start / tm)`` to
    ``ceil(end / tm) - 1``; empty groups cover none (one tile if
    ``visit_empty_groups``, as tgmm needs to zero their output). Tiles are
    ordered by group, so a tile shared by groups ``g`` and ``g + 1`` is visited
    at two consecutive indices. ``m`` need not be a multiple of ``tm``
    (``tiles_m = ceil(m / tm)``; megablox itself requires divisibility).
    """
    if m <= 0 or tm <= 0:
        raise ValueError(f"m and tm must be positive, got {m=}, {tm=}")
    gs = check_group_sizes(group_sizes, m)
    num_groups = gs.size
    tiles_m = _cdiv(m, tm)
    ends = np.cumsum(gs)
    offsets = np.concatenate([[0], ends])
    starts = offsets[:-1]
    group_tiles = np.where(gs == 0, 0, _cdiv_arr(ends, tm) - starts // tm)
    if visit_empty_groups:
        group_tiles = np.where(gs == 0, 1, group_tiles)
    slots = tiles_m + num_groups - 1
    group_ids = _repeat_padded(np.arange(num_groups), group_tiles, slots)
    # Extra visits: a non-empty group starting inside a tile visits that tile
    # again (its owner, the group holding the tile's first row, visits it too).
    partial = (starts % tm != 0) & (gs > 0)
    if visit_empty_groups:
        partial |= gs == 0
    visits = 1 + np.bincount(np.minimum(starts[partial] // tm, tiles_m - 1), minlength=tiles_m)
    m_tile_ids = _repeat_padded(np.arange(tiles_m), visits, slots)
    return GroupMetadata(group_offsets=offsets.astype(np.int64), group_ids=group_ids,
                         m_tile_ids=m_tile_ids, num_tiles=int(group_tiles.sum()))


def _cdiv_arr(a: np.ndarray, b: int) -> np.ndarray:
    return -(-a // b)


def _repeat_padded(values: np.ndarray, repeats: np.ndarray, length: int) -> np.ndarray:
    """``jnp.repeat(values, repeats, total_repeat_length=length)``: truncate or pad with the last value."""
    out = np.repeat(values, repeats)[:length].astype(np.int64)
    if out.size < length:
        fill = out[-1] if out.size else values[-1]
        out = np.concatenate([out, np.full(length - out.size, fill, dtype=np.int64)])
    return out


# -- index maps (module level: the same functions a Pallas kernel would use) --

def gmm_lhs_index_map(n_i, grid_id, k_i, group_offsets, group_ids, m_tile_ids):
    """lhs [m, k]: the (tm, tk) block of this row tile."""
    return m_tile_ids[grid_id], k_i


def gmm_rhs_index_map(n_i, grid_id, k_i, group_offsets, group_ids, m_tile_ids):
    """rhs [G, k, n]: the (tk, tn) block of this step's group."""
    return group_ids[grid_id], k_i, n_i


def gmm_rhs_t_index_map(n_i, grid_id, k_i, group_offsets, group_ids, m_tile_ids):
    """rhs [G, n, k] (transposed): the (tn, tk) block of this step's group."""
    return group_ids[grid_id], n_i, k_i


def gmm_out_index_map(n_i, grid_id, k_i, group_offsets, group_ids, m_tile_ids):
    """out [m, n]: the (tm, tn) block of this row tile."""
    return m_tile_ids[grid_id], n_i


def tgmm_lhs_index_map(n_i, k_i, grid_id, group_offsets, group_ids, m_tile_ids):
    """lhs [m, k] (already transposed to rows): the (tm, tk) block of this row tile."""
    return m_tile_ids[grid_id], k_i


def tgmm_rhs_index_map(n_i, k_i, grid_id, group_offsets, group_ids, m_tile_ids):
    """rhs [m, n]: the (tm, tn) block of this row tile."""
    return m_tile_ids[grid_id], n_i


def tgmm_out_index_map(n_i, k_i, grid_id, group_offsets, group_ids, m_tile_ids):
    """out [G, k, n]: the (tk, tn) block of this step's group."""
    return group_ids[grid_id], k_i, n_i


def tgmm_compute_mask(n_i, k_i, grid_id, group_offsets, group_ids, m_tile_ids):
    """tgmm skips the matmul for empty groups (``pl.when(group_size > 0)``)."""
    g = group_ids[grid_id]
    return group_offsets[g + 1] - group_offsets[g] > 0


# VPU work per output (or input) element, counted as vector-ALU operations from each
# kernel's code. Vector loads and stores issue in their own VLIW slots and are not
# counted; the rate (``TimingParams.vpu_ops_per_cycle``) is fitted.
MEGABLOX_ACCUMULATE_OPS = 1
"""``acc_scratch[...] += dot(...)`` every k step: one add per f32 accumulator element."""
MEGABLOX_STORE_OPS = 8
"""``_store_accum`` on the last k step: iota, add row offset, two compares, and (row
mask), widen out to f32, select, narrow."""
XLA_STORE_OPS = 7
"""XLA's ragged_dot kernel body (its Mosaic MLIR, libtpu 0.0.42): iota, addi, two cmpi,
andi (row mask), truncf of the f32 matmul result, select - on every step (no k loop
when ``tk = k``)."""
TGMM_MASK_OPS = 8
"""megablox tgmm masks both input tiles every step: iota, add, two compares, and,
widen, select, narrow, per lhs and rhs element."""
TOKAMAX_ACCUMULATE_OPS = MEGABLOX_ACCUMULATE_OPS
TOKAMAX_STORE_OPS = 1
"""tokamax's store epilogue: narrow. An assumption: tokamax's source is not installed
here, and its measured v5e times rule out megablox's masked store (and tgmm's input
masks) on every tile - a 128 x 7168 tile would be VPU-bound at several times the
measured time - so we take masks applied only where a tile straddles groups (not
modelled apart)."""
TOKAMAX_TGMM_MASK_OPS = 0


def last_k_mask(n_i, grid_id, k_i, group_offsets, group_ids, m_tile_ids, *, tiles_k):
    return k_i == tiles_k - 1


def gmm_spec(
    group_sizes, k: int, n: int, *, m: int | None = None, tm: int, tk: int, tn: int,
    dtype: str = "bf16", out_dtype: str = "f32", transpose_rhs: bool = False,
    input_buffer_count: int = 2, require_divisible_m: bool = True, name: str = "megablox_gmm",
    accumulate_ops: int = MEGABLOX_ACCUMULATE_OPS, store_ops: int = MEGABLOX_STORE_OPS,
) -> KernelSpec:
    """Megablox ``gmm``: ``out[rows of g] = lhs[rows of g] @ rhs[g]`` for every group ``g``.

    ``lhs [m, k]``, ``rhs [G, k, n]`` (``[G, n, k]`` if ``transpose_rhs``),
    ``out [m, n]`` of ``out_dtype`` (megablox's default ``preferred_element_type``
    is f32). Grid ``(cdiv(n, tn), num_tiles, cdiv(k, tk))``, semantics
    ``(parallel, arbitrary, arbitrary)``, f32 accumulator ``tm x tn`` in VMEM.
    ``m`` defaults to ``sum(group_sizes)``; megablox requires ``m % tm == 0``.
    VPU work: ``accumulate_ops * tm * tn`` every step, ``store_ops * tm * tn``
    on the last k step (see ``MEGABLOX_*_OPS``).
    """
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    for arg, v in (("m", m), ("k", k), ("n", n), ("tm", tm), ("tk", tk), ("tn", tn)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{arg} must be a positive int, got {arg}={v!r}")
    if require_divisible_m and m % tm:
        raise ValueError(f"m={m} should be divisible by tm={tm} (megablox gmm)")
    meta = group_metadata(gs, m, tm)
    num_groups = meta.group_offsets.size - 1
    tiles_k, tiles_n = _cdiv(k, tk), _cdiv(n, tn)
    dtype, out_dtype = canonical_dtype(dtype), canonical_dtype(out_dtype)
    if transpose_rhs:
        rhs = Operand(name="rhs", shape=(num_groups, n, k), dtype=dtype, block_shape=(None, tn, tk),
                      index_map=gmm_rhs_t_index_map, role="input", buffer_count=input_buffer_count)
    else:
        rhs = Operand(name="rhs", shape=(num_groups, k, n), dtype=dtype, block_shape=(None, tk, tn),
                      index_map=gmm_rhs_index_map, role="input", buffer_count=input_buffer_count)
    operands = (
        Operand(name="lhs", shape=(m, k), dtype=dtype, block_shape=(tm, tk),
                index_map=gmm_lhs_index_map, role="input", buffer_count=input_buffer_count),
        rhs,
        Operand(name="out", shape=(m, n), dtype=out_dtype, block_shape=(tm, tn),
                index_map=gmm_out_index_map, role="output"),
    )
    return KernelSpec(
        name=name, grid=(tiles_n, meta.num_tiles, tiles_k),
        dimension_semantics=("parallel", "arbitrary", "arbitrary"), operands=operands,
        prefetch=meta.prefetch, scratch_bytes=tm * tn * 4,  # f32 accumulator
        step_matmuls=((tm, tk, tn),), useful_flops=2 * int(gs.sum()) * k * n, mxu_dtype=dtype,
        step_vpu_flops=accumulate_ops * tm * tn, epilogue_vpu_ops=store_ops * tm * tn,
        epilogue_mask=None if tiles_k == 1 else functools.partial(last_k_mask, tiles_k=tiles_k),
    )


def tgmm_spec(
    group_sizes, k: int, n: int, *, m: int | None = None, tm: int, tk: int, tn: int,
    dtype: str = "bf16", out_dtype: str = "f32", input_buffer_count: int = 2,
    name: str = "megablox_tgmm", mask_ops: int = TGMM_MASK_OPS,
    accumulate_ops: int = MEGABLOX_ACCUMULATE_OPS,
) -> KernelSpec:
    """Megablox ``tgmm``: ``out[g] = lhs[rows of g]^T @ rhs[rows of g]`` (ragged contraction).

    ``lhs [m, k]`` (megablox transposes its ``[k, m]`` argument to this layout
    before the kernel; that transpose is a separate XLA op, not counted here),
    ``rhs [m, n]``, ``out [G, k, n]``. Grid ``(cdiv(n, tn), cdiv(k, tk),
    num_tiles)`` with empty groups visited once (to zero their output) but not
    computed; accumulator ``tk x tn`` f32.
    """
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    for arg, v in (("m", m), ("k", k), ("n", n), ("tm", tm), ("tk", tk), ("tn", tn)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{arg} must be a positive int, got {arg}={v!r}")
    meta = group_metadata(gs, m, tm, visit_empty_groups=True)
    num_groups = meta.group_offsets.size - 1
    dtype, out_dtype = canonical_dtype(dtype), canonical_dtype(out_dtype)
    operands = (
        Operand(name="lhs", shape=(m, k), dtype=dtype, block_shape=(tm, tk),
                index_map=tgmm_lhs_index_map, role="input", buffer_count=input_buffer_count),
        Operand(name="rhs", shape=(m, n), dtype=dtype, block_shape=(tm, tn),
                index_map=tgmm_rhs_index_map, role="input", buffer_count=input_buffer_count),
        Operand(name="out", shape=(num_groups, k, n), dtype=out_dtype, block_shape=(None, tk, tn),
                index_map=tgmm_out_index_map, role="output"),
    )
    return KernelSpec(
        name=name, grid=(_cdiv(n, tn), _cdiv(k, tk), meta.num_tiles),
        dimension_semantics=("parallel", "arbitrary", "arbitrary"), operands=operands,
        prefetch=meta.prefetch, scratch_bytes=tk * tn * 4,
        step_matmuls=((tk, tm, tn),),  # lhs^T (tk x tm) @ rhs (tm x tn)
        # masks of lhs (tm x tk) and rhs (tm x tn): iota, add, 2 cmp, and, widen, select, narrow;
        # accumulator update on tk x tn
        step_vpu_flops=mask_ops * tm * (tk + tn) + accumulate_ops * tk * tn,
        compute_mask=tgmm_compute_mask, useful_flops=2 * int(gs.sum()) * k * n, mxu_dtype=dtype,
    )


def tokamax_gmm_spec(
    group_sizes, k: int, n: int, *, m: int | None = None, tm: int, tk: int, tn: int,
    dtype: str = "bf16", out_dtype: str | None = None, input_buffer_count: int = 2,
    kind: str = "forward",
) -> KernelSpec:
    """tokamax's Pallas grouped matmul (``pallas_mosaic_tpu`` ragged_dot) at ``(tm, tk, tn)``.

    A megablox fork (FACTS section 3) with ``input_buffer_count`` VMEM buffers
    per input; output dtype = lhs dtype unless ``out_dtype``. ``kind``:
    ``"forward"`` (rhs ``[G, k, n]``), ``"dlhs"`` (rhs ``[G, n, k]``,
    transposed), ``"drhs"`` (ragged contraction, tgmm: ``[m, k]^T [m, n]``).
    tokamax pads ``m`` to a multiple of ``tm`` itself, so ``m`` need not divide.
    """
    out_dtype = dtype if out_dtype is None else out_dtype
    if kind == "drhs":
        return tgmm_spec(group_sizes, k, n, m=m, tm=tm, tk=tk, tn=tn, dtype=dtype, out_dtype=out_dtype,
                         input_buffer_count=input_buffer_count, name="tokamax_tgmm",
                         mask_ops=TOKAMAX_TGMM_MASK_OPS, accumulate_ops=TOKAMAX_ACCUMULATE_OPS)
    if kind not in ("forward", "dlhs"):
        raise ValueError(f"kind must be 'forward', 'dlhs' or 'drhs', got {kind=}")
    single_k = _cdiv(k, tk) == 1
    return gmm_spec(group_sizes, k, n, m=m, tm=tm, tk=tk, tn=tn, dtype=dtype, out_dtype=out_dtype,
                    transpose_rhs=kind == "dlhs", input_buffer_count=input_buffer_count,
                    require_divisible_m=False, name="tokamax_gmm",
                    accumulate_ops=0 if single_k else TOKAMAX_ACCUMULATE_OPS, store_ops=TOKAMAX_STORE_OPS)


def ragged_dot_spec(
    chip, group_sizes, k: int, n: int, *, m: int | None = None, dtype: str = "bf16",
    transposed_rhs: bool = False, tiling=None,
) -> KernelSpec:
    """XLA's Mosaic grouped-matmul kernel for ``jax.lax.ragged_dot`` on TPU.

    FACTS section 2: XLA lowers ragged_dot to megablox-style metadata plus a
    kernel with grid ``(tiles_n, dynamic, tiles_k)``, semantics ``(parallel,
    arbitrary, arbitrary)``, lhs block ``(tm, tk)``, rhs ``(1, tk, tn)``, out
    ``(tm, tn)`` in the lhs dtype, double buffered. ``tiling`` is a
    ``RaggedDotTiling`` (``perfmodel.xla_tiling``) or a ``(tm, tk, tn)`` tuple;
    by default the tiling XLA picks for this chip and shape is looked up. With
    ``transposed_rhs`` (rhs ``[G, n, k]``) and a record saying XLA pre-transposes
    rhs in HBM, the kernel reads ``[G, k, n]`` (the copy is not part of the spec;
    :func:`perfmodel.tiling.predict.xla_ragged_dot_time` adds it).
    """
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    if tiling is None:
        from perfmodel.xla_tiling import ragged_dot_tiling  # compiler engineer's module

        tiling = ragged_dot_tiling(chip, m, k, n, int(gs.size), dtype,
                                   variant="rhs_transposed" if transposed_rhs else "forward")
    if isinstance(tiling, tuple):
        tm, tk, tn = tiling
    else:
        if tiling.lowering != "mosaic":
            raise ValueError(f"XLA runs this ragged_dot without a Mosaic kernel, got lowering={tiling.lowering!r}")
        tm, tk, tn = tiling.tm, tiling.tk, tiling.tn
        # XLA copies rhs to [G, k, n] before the kernel when it pre-transposes (xla_tiling).
        transposed_rhs = transposed_rhs and not tiling.rhs_pre_transposed
    single_k = _cdiv(k, tk) == 1
    return gmm_spec(gs, k, n, m=m, tm=tm, tk=tk, tn=tn, dtype=dtype, out_dtype=dtype,
                    transpose_rhs=transposed_rhs, require_divisible_m=False, name="xla_ragged_dot",
                    accumulate_ops=0 if single_k else MEGABLOX_ACCUMULATE_OPS,
                    store_ops=XLA_STORE_OPS if single_k else MEGABLOX_STORE_OPS)

