"""The fused MoE FFN kernel's description, without jax: tiles, visit schedule, index maps, VMEM, default tiles.

:func:`fused_moe_spec` is the one source of truth :mod:`kernels.fused_moe` builds its ``pallas_call``
from and the tiling model walks (``pl.CostEstimate``, ``vmem_limit_bytes``, default tiles). It lives
apart from the kernel body so that predictions (``perfmodel fusion``, maps) do not import jax: the
schedule is built with numpy for concrete group sizes, and only traced sizes reach the jitted jnp body
in :mod:`kernels.fused_moe`. Notation and algorithm: :mod:`kernels.fused_moe`.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import attrs
import numpy as np

from kernels.activations import resolve_activation, transcendentals_per_element, vpu_flops_per_element
from perfmodel.hardware import Chip, canonical_dtype, dtype_bytes, get_chip, get_tpu_chip
from perfmodel.tiling.spec import KernelSpec, Operand

if TYPE_CHECKING:  # annotations only: importing this module must not import jax
    import jax

_MIB = 1 << 20
VMEM_HEADROOM_BYTES = 4 * _MIB
VMEM_HEADROOM_FRACTION = 0.10
"""The scoped limit requested is the modelled footprint plus the larger of
``VMEM_HEADROOM_BYTES`` and this fraction of it (Mosaic scratch the model does
not see); the limit never exceeds the chip."""


# --------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class FusedTiles:
    """Tile sizes of the fused kernel: ``tm`` rows per token tile, ``tf`` hidden columns per F chunk.

    The TPU (8, 128) block rule: ``tm`` (second-to-last dim of the ``x`` block)
    must be a multiple of 8 sublanes, checked here; ``tf`` (last dim of the
    ``W_up`` block) a multiple of 128 lanes or all of ``F``, and a divisor of
    ``F``, checked by :meth:`check_shape`. VMEM fit depends on the chip and is
    checked by :func:`fused_moe_ffn_forward` against :func:`fused_moe_spec`.
    """

    tm: int
    tf: int

    def __attrs_post_init__(self):
        for name in ("tm", "tf"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}={v!r} should be a positive int")
        if self.tm % 8:
            raise ValueError(f"tm={self.tm} should be a multiple of 8 (sublanes)")

    def check_shape(self, *, F: int) -> None:
        """``tf`` lane-aligned (or all of F) and dividing F: a partial chunk would feed garbage
        columns to the down matmul."""
        if self.tf % 128 and self.tf != F:
            raise ValueError(f"tf={self.tf} should be a multiple of 128 (lanes) or equal F={F}")
        if F % self.tf:
            raise ValueError(f"F={F} should be divisible by tf={self.tf}")


# --------------------------------------------------------------------------
# Group metadata
# --------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class GroupMetadata:
    """Scalar-prefetched schedule of (token tile, group) visits, split over ``cores`` TensorCores.

    With ``tiles_m = ceil(T / tm)``, ``S = tiles_m + G`` (per-core stride) and
    step ``s`` of core ``c`` stored at index ``c S + s``:

    * ``group_offsets [G + 2]``: ``group_offsets[g]`` is the first row of group
      ``g``; entry ``G`` is ``sum(group_sizes)`` (clipped to ``T``) and entry
      ``G + 1`` is ``tiles_m tm``: rows ``[group_offsets[G], tiles_m tm)`` form
      the tail group ``G`` (no expert, output zero).
    * ``core_steps [cores]``: visits core ``c`` executes; steps past it are padding.
    * ``group_ids [cores S]``: group visited (``G`` = tail).
    * ``m_tile_ids [cores S]``: token tile (output block); non-decreasing per
      core, so revisits of a tile are consecutive; the cores' tile ranges are
      disjoint (split at a tile boundary), so no output block is shared.
    * ``x_tile_ids [cores S]``: ``x`` block loaded; on idle steps the previous
      block (no new DMA).
    * ``w_group_ids [cores S]``: weight group loaded; on idle steps the previous one.
    * ``idle_steps [cores S]``: 1 where the step computes nothing (tail group or
      padding; their weight F chunk is pinned to the last one), else 0.
    * ``num_steps``: scalar, ``max(core_steps)``: the dynamic grid extent.
    """

    group_offsets: jax.Array
    core_steps: jax.Array
    group_ids: jax.Array
    m_tile_ids: jax.Array
    x_tile_ids: jax.Array
    w_group_ids: jax.Array
    idle_steps: jax.Array
    num_steps: jax.Array

    def prefetch(self) -> tuple[jax.Array, ...]:
        """Arrays in scalar-prefetch order (the order every index map and the kernel receive)."""
        return (self.group_offsets, self.core_steps, self.group_ids, self.m_tile_ids,
                self.x_tile_ids, self.w_group_ids, self.idle_steps)


def visit_stride(*, m: int, tm: int, num_groups: int) -> int:
    """``S = ceil(m / tm) + G``: the most visits of one core's schedule, every token tile once plus one
    revisit for each group that starts inside a tile (the per-core stride of the metadata arrays)."""
    return -(-m // tm) + num_groups


def make_group_metadata(*, group_sizes: jax.Array, m: int, tm: int, cores: int = 1) -> GroupMetadata:
    """Build the visit schedule for ``m`` rows in tiles of ``tm`` (pure jnp; numpy input works).

    See :func:`_metadata_arrays` for the construction and :class:`GroupMetadata` for the arrays.
    """
    if cores not in (1, 2):
        raise ValueError(f"cores={cores} should be 1 or 2")
    if cores == 2 and -(-m // tm) < 2:
        raise ValueError(f"cores=2 needs at least 2 token tiles, got m={m}, tm={tm}")
    names = [f.name for f in attrs.fields(GroupMetadata)]
    if isinstance(group_sizes, np.ndarray):  # the cost model's concrete sizes: no jax compile
        arrays = _metadata_impl(np, group_sizes.astype(np.int32), m=m, tm=tm, cores=cores)
    else:
        import jax.numpy as jnp

        from kernels.fused_moe import _metadata_arrays  # jitted jnp body (imports jax)

        arrays = _metadata_arrays(jnp.asarray(group_sizes), m=m, tm=tm, cores=cores)
    return GroupMetadata(**dict(zip(names, arrays)))


def _metadata_impl(xp, group_sizes, *, m: int, tm: int, cores: int) -> tuple:
    """Arrays of :class:`GroupMetadata`, in field order, with array module ``xp`` (numpy or jax.numpy).

    One body serves the kernel (jax.numpy, jitted per ``m``, ``tm``, ``cores``)
    and the cost model (numpy: no compile per shape when building a spec).

    The single-core schedule follows megablox ``make_group_metadata``
    (``visit_empty_groups=False``) with one extra group ``G`` of size
    ``tiles_m tm - sum(group_sizes)`` for the rows no expert owns, so every
    token tile is visited at least once and its output written. Invariants:
    every tile is visited once by the group owning its first row plus once per
    further group starting inside it; a group with 0 rows is never visited;
    visits to a tile are consecutive. With ``cores = 2`` the sequence is cut at
    the tile boundary that best halves the computing steps; each core gets at
    least one step (``tiles_m >= 2``).
    """
    group_sizes = group_sizes.astype(xp.int32)
    num_groups = group_sizes.shape[0]
    tiles_m = -(-m // tm)
    m_pad = tiles_m * tm
    # Real group ends, clipped to m: rows past m do not exist (ragged_dot ignores them).
    ends = xp.minimum(xp.cumsum(group_sizes), m).astype(xp.int32)
    total = ends[-1] if num_groups else xp.int32(0)
    ends = xp.concatenate([ends, xp.full((1,), m_pad, xp.int32)])
    starts = xp.concatenate([xp.zeros((1,), xp.int32), ends[:-1]])
    sizes = ends - starts  # [G + 1], tail group last; sums to m_pad
    group_offsets = xp.concatenate([starts, ends[-1:]])

    # Tiles each group touches: its rows rounded out to tile boundaries; 0 if empty.
    group_tiles = xp.where(sizes == 0, 0, (ends + tm - 1) // tm - starts // tm)
    stride = visit_stride(m=m, tm=tm, num_groups=num_groups)
    group_ids = _repeat(xp, xp.arange(num_groups + 1, dtype=xp.int32), group_tiles, stride)

    # A tile is visited once by the group owning its first row, plus once by each
    # non-empty group starting strictly inside it.
    starts_inside = (starts % tm != 0) & (sizes > 0)
    extra = _count_into(xp, xp.where(starts_inside, starts // tm, tiles_m), tiles_m)
    m_tile_ids = _repeat(xp, xp.arange(tiles_m, dtype=xp.int32), extra + 1, stride)
    num_steps = group_tiles.sum().astype(xp.int32)

    # Tail steps re-use the last real step's blocks (no DMA).
    is_tail = group_ids == num_groups
    last_real = xp.maximum(total - 1, 0) // tm
    nonempty = sizes[:num_groups] > 0
    last_group = xp.max(xp.where(nonempty, xp.arange(num_groups, dtype=xp.int32), 0)) if num_groups else 0
    x_tile_ids = xp.where(is_tail, last_real, m_tile_ids).astype(xp.int32)
    w_group_ids = xp.where(is_tail, last_group, group_ids).astype(xp.int32)

    steps = xp.arange(stride, dtype=xp.int32)
    if cores == 1:
        first = xp.zeros((1,), xp.int32)
        core_steps = num_steps[None]
    else:
        # Cut at the tile boundary that best halves the computing steps.
        computing = ((~is_tail) & (steps < num_steps)).astype(xp.int32)
        before = xp.cumsum(computing) - computing
        prev_tile = xp.concatenate([m_tile_ids[:1], m_tile_ids[:-1]])
        boundary = (steps >= 1) & (steps < num_steps) & (m_tile_ids != prev_tile)
        score = xp.where(boundary, xp.abs(2 * before - computing.sum()), np.iinfo(np.int32).max)
        split = xp.argmin(score).astype(xp.int32)
        first = xp.stack([xp.int32(0), split])
        core_steps = xp.stack([split, num_steps - split])
    # Per-core views; padding steps repeat the core's last step and are idle.
    src = first[:, None] + xp.minimum(steps[None, :], core_steps[:, None] - 1)
    idle = is_tail[src] | (steps[None, :] >= core_steps[:, None])
    per_core = [a[src].reshape(-1) for a in (group_ids, m_tile_ids, x_tile_ids, w_group_ids)]
    return (group_offsets, core_steps.astype(xp.int32), *per_core, idle.reshape(-1).astype(xp.int32),
            xp.max(core_steps).astype(xp.int32))


def _repeat(xp, values, repeats, length: int):
    """``values[i]`` repeated ``repeats[i]`` times, padded with the last value (or cut) to ``length``."""
    if xp is np:
        out = np.repeat(values, repeats)[:length]
        return np.concatenate([out, np.full(length - out.size, out[-1] if out.size else 0, out.dtype)])
    import jax.numpy as jnp

    return jnp.repeat(values, repeats, total_repeat_length=length)


def _count_into(xp, index, size: int):
    """Histogram of ``index`` over ``[0, size)``; indices outside are dropped."""
    if xp is np:
        index = index[(index >= 0) & (index < size)]
        return np.bincount(index, minlength=size).astype(np.int32)[:size]
    import jax.numpy as jnp

    return jnp.zeros((size,), jnp.int32).at[index].add(1, mode="drop")




# --------------------------------------------------------------------------
# Index maps: (c, s, j, *prefetch) -> block indices, with the per-core stride
# bound by functools.partial. Arithmetic and indexing only, so the same
# functions run under Pallas tracing and on numpy arrays (the walker).
# --------------------------------------------------------------------------
def x_index_map(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                idle_steps, *, stride):
    return x_tile_ids[c * stride + s], 0


def _f_chunk(c, s, j, idle_steps, *, stride, tiles_f):
    # Idle steps keep the last chunk, which the previous (computing) step loaded.
    return j + idle_steps[c * stride + s] * (tiles_f - 1 - j)


def w_in_index_map(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                   idle_steps, *, stride, tiles_f):
    """``W_up`` / ``W_gate`` ``[G, D, F]``, block ``(None, D, tf)``."""
    return w_group_ids[c * stride + s], 0, _f_chunk(c, s, j, idle_steps, stride=stride, tiles_f=tiles_f)


def w_down_index_map(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                     idle_steps, *, stride, tiles_f):
    """``W_down`` ``[G, F, D]``, block ``(None, tf, D)``."""
    return w_group_ids[c * stride + s], _f_chunk(c, s, j, idle_steps, stride=stride, tiles_f=tiles_f), 0


def out_index_map(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                  idle_steps, *, stride):
    return m_tile_ids[c * stride + s], 0


def compute_mask(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                 idle_steps, *, stride):
    """True where a step runs its matmuls (not the tail group, not padding)."""
    return 1 - idle_steps[c * stride + s] > 0


def straddle_mask(c, s, j, group_offsets, core_steps, group_ids, m_tile_ids, x_tile_ids, w_group_ids,
                  idle_steps, *, stride, tm):
    """True where the visited group does not cover the whole token tile, so rows must be masked.

    That is a tile shared with another group, the tail, or rows past ``T`` of a
    partial last tile. The kernel branches on this same function; the model
    charges the row-mask VPU work on these steps only.
    """
    i = c * stride + s
    g = group_ids[i]
    lo = m_tile_ids[i] * tm
    return (group_offsets[g] > lo) | (group_offsets[g + 1] < lo + tm)


ROW_MASK_OPS = 6
"""VPU ops per ``[tm, tf]`` element to mask rows of other groups: iota, add tile
offset, two compares, and, select (counted as in ``perfmodel.tiling.gmm``)."""


# --------------------------------------------------------------------------
# Kernel description (one source of truth)
# --------------------------------------------------------------------------
KERNEL_DTYPES = {"bf16": "bfloat16", "f32": "float32"}
"""Activation/weight dtypes the fused kernel takes: canonical name (``perfmodel.hardware.canonical_dtype``)
-> jax dtype name. int8 ran and saturated; fp8 gave NaN through ragged_dot."""

SCRATCH_COEFFICIENTS = {"tpu7x": (0.0, 7.5, 3.75)}
"""Per chip: (x spill bytes per byte of the ``x`` tile, result scratch bytes per
``[tm, tf]`` element with GLU, without GLU). Chips not listed use
:data:`DEFAULT_SCRATCH_COEFFICIENTS`."""
DEFAULT_SCRATCH_COEFFICIENTS = (1.25, 5.0, 2.5)


def vmem_scratch_bytes(*, tm: int, tf: int, D: int, q: int, glu: bool, chip: str | None = None) -> int:
    """VMEM beyond the pipelined blocks, as a sum of named terms.

    * ``acc``: f32 accumulator ``[tm, D]``: ``4 tm D`` (a ``pltpu.VMEM`` scratch);
    * ``x_spill``: Mosaic's spill slots for the ``[tm, D]`` value of ``x`` loaded
      for the up/gate matmuls (it does not fit the 64-vreg register file):
      ``1.25 q tm D``; none seen on 7x;
    * ``results``: Mosaic's internal scratch for the f32 projection results and
      ``h``: ``5 tm tf`` with GLU (up and gate live at once), ``2.5 tm tf``
      without; ``7.5`` / ``3.75`` on 7x.

    The coefficients (:data:`SCRATCH_COEFFICIENTS`) are an upper envelope of
    libtpu's own counts, seen here by bisecting ``vmem_limit_bytes`` and
    reading RESOURCE_EXHAUSTED "Used X" messages on v4, v5e, v5p, v6e and 7x
    (bf16 and f32): on 10 refused kernels the compiler's total was 0.3-3.7 MiB
    (0.4-2.7%) below this model, never above; kernels the model says fit
    compiled. ``perfmodel validate kernel-aot`` re-checks the verdict at the
    VMEM boundary of every chip. ``chip=None`` uses the default coefficients.
    """
    x_spill_factor, glu_bytes, plain_bytes = SCRATCH_COEFFICIENTS.get(chip, DEFAULT_SCRATCH_COEFFICIENTS)
    acc = 4 * tm * D
    x_spill = math.ceil(x_spill_factor * tm * D * q)
    results = math.ceil((glu_bytes if glu else plain_bytes) * tm * tf)
    return acc + x_spill + results


def megacore_cores(chip: Chip | None, *, T: int, tm: int) -> int:
    """TensorCores the kernel splits its token tiles over: 2 on megacore chips (v4, v5p)
    when there are at least 2 token tiles, else 1."""
    if chip is None or not chip.megacore or chip.tensor_cores_per_chip < 2:
        return 1
    return 2 if -(-T // tm) >= 2 else 1


def fused_moe_spec(*, T: int, D: int, F: int, G: int, dtype, tiles: FusedTiles, glu: bool,
                   activation: str | None = None, group_sizes=None,
                   chip: str | Chip | None = None) -> KernelSpec:
    """The fused kernel as a :class:`KernelSpec` for concrete ``group_sizes``.

    Grid ``(cores, S, F / tf)``: ``cores`` (:func:`megacore_cores`) is a
    ``"parallel"`` axis that megacore chips shard over their two TensorCores;
    ``S`` visits per core (dynamic in the kernel) and F chunks run in order.
    ``group_sizes=None`` means ``G`` equal groups splitting ``T`` (the
    representative used for ``pl.CostEstimate`` under ``jit``, where the real
    sizes are traced). ``chip`` sets the cores, the Mosaic scratch terms
    (:func:`vmem_scratch_bytes`) and ``vmem_limit_bytes`` (:func:`vmem_limit_bytes`);
    ``None`` means one core, the default scratch terms and no limit; a chip must be a TPU (a GPU has no VMEM).
    """
    chip = None if chip is None else get_tpu_chip(chip, what="the fused kernel (Pallas TPU)")
    activation = resolve_activation(activation, glu=glu)
    dtype = canonical_dtype(dtype)
    q = dtype_bytes(dtype)
    tiles.check_shape(F=F)
    tm, tf = tiles.tm, tiles.tf
    tiles_f = F // tf
    if group_sizes is None:
        group_sizes = np.full((G,), T // G, np.int32)
        group_sizes[: T % G] += 1
    group_sizes = np.asarray(group_sizes, np.int32)
    if group_sizes.shape != (G,):
        raise ValueError(f"group_sizes.shape={group_sizes.shape} should be (G,)=({G},)")
    cores = megacore_cores(chip, T=T, tm=tm)
    # numpy sizes: the numpy schedule, concrete numbers even when called under jit
    meta = make_group_metadata(group_sizes=group_sizes, m=T, tm=tm, cores=cores)
    prefetch = tuple(np.asarray(a) for a in meta.prefetch())
    num_steps = int(meta.num_steps)
    stride = visit_stride(m=T, tm=tm, num_groups=G)
    w_in_map = functools.partial(w_in_index_map, stride=stride, tiles_f=tiles_f)
    w_down_map = functools.partial(w_down_index_map, stride=stride, tiles_f=tiles_f)
    operands = [Operand(name="x", shape=(T, D), dtype=dtype, block_shape=(tm, D),
                        index_map=functools.partial(x_index_map, stride=stride), role="input"),
                Operand(name="w_up", shape=(G, D, F), dtype=dtype, block_shape=(None, D, tf),
                        index_map=w_in_map, role="input")]
    if glu:
        operands.append(Operand(name="w_gate", shape=(G, D, F), dtype=dtype, block_shape=(None, D, tf),
                                index_map=w_in_map, role="input"))
    operands += [Operand(name="w_down", shape=(G, F, D), dtype=dtype, block_shape=(None, tf, D),
                         index_map=w_down_map, role="input"),
                 Operand(name="out", shape=(T, D), dtype=dtype, block_shape=(tm, D),
                         index_map=functools.partial(out_index_map, stride=stride), role="output")]
    n_in = 2 if glu else 1
    scratch = vmem_scratch_bytes(tm=tm, tf=tf, D=D, q=q, glu=glu, chip=None if chip is None else chip.name)
    spec = KernelSpec(
        name=f"fused_moe_ffn[{'glu-' if glu else ''}{activation}]",
        grid=(cores, num_steps, tiles_f),
        dimension_semantics=("parallel", "arbitrary", "arbitrary"),
        operands=tuple(operands),
        prefetch=prefetch,
        scratch_bytes=scratch,
        scratch_includes_spill=True,  # x_spill of vmem_scratch_bytes, calibrated on libtpu's own counts
        step_matmuls=(((tm, D, tf),) * n_in) + ((tm, tf, D),),
        # Every active step: the activation on [tm, tf], the cast of h to the weight
        # dtype (bf16), one add per f32 accumulator element [tm, D].
        step_vpu_flops=tm * tf * (vpu_flops_per_element(activation, glu=glu) + (q < 4)) + tm * D,
        step_transcendentals=tm * tf * transcendentals_per_element(activation),
        compute_mask=functools.partial(compute_mask, stride=stride),
        # The walker's "epilogue" slot carries the row-mask ops, charged on the steps
        # straddle_mask selects (the kernel's masked branch). The final [tm, D] cast
        # and store, once per tile, is not counted.
        epilogue_vpu_ops=ROW_MASK_OPS * tm * tf,
        epilogue_mask=functools.partial(straddle_mask, stride=stride, tm=tm),
        useful_flops=2 * int(min(group_sizes.sum(), T)) * D * F * (n_in + 1),
        mxu_dtype=dtype,
    )
    if chip is not None:
        spec = attrs.evolve(spec, vmem_limit_bytes=vmem_limit_bytes(spec, chip))
    return spec


def vmem_limit_bytes(spec: KernelSpec, chip: Chip) -> int:
    """Scoped VMEM limit to request: modelled footprint + headroom, at most the chip's VMEM per core.

    Headroom: ``max(VMEM_HEADROOM_BYTES, VMEM_HEADROOM_FRACTION x footprint)``,
    for Mosaic scratch the model does not see.
    """
    headroom = max(VMEM_HEADROOM_BYTES, int(VMEM_HEADROOM_FRACTION * spec.vmem_bytes))
    return int(min(chip.vmem_bytes_per_core, spec.vmem_bytes + headroom))


def _walk(spec: KernelSpec, chip: Chip):
    from perfmodel.tiling.params import FITTED
    from perfmodel.tiling.walker import walk

    return walk(spec, chip, FITTED)


TM_CANDIDATES = (128, 256, 512, 1024)
TF_CANDIDATES = (128, 256, 512, 1024, 2048)


def candidate_tiles(*, T: int, F: int, split_cores: bool = False) -> list[FusedTiles]:
    """Tiles worth considering: ``tm`` from :data:`TM_CANDIDATES` below ``T`` plus the smallest
    covering ``T`` (just ``T`` rounded up to 8 when that is smaller); ``tf`` from :data:`TF_CANDIDATES`
    dividing ``F``, and ``tf = F`` (the whole F resident: one grid step per row tile, each expert's weights
    read once per visit). Without ``tf = F``, an F such as 1408 = 11 x 128 had only ``tf = 128``: on v6e
    at T=8192, D=2048, E=8, GLU the walker gives 440 us for (1024, 128) against 193 us for (1024, 1408).

    ``split_cores`` (a megacore chip, :func:`megacore_cores`): when every candidate above leaves one
    token tile (``T <= 128``), half of ``T`` rounded up to 8 too, so the two TensorCores can share the
    work (each streams only the weights of its own groups).
    """
    cover = next((tm for tm in TM_CANDIDATES if tm >= T), TM_CANDIDATES[-1])
    cover = min(cover, -(-T // 8) * 8)
    tms = [tm for tm in TM_CANDIDATES if tm < cover] + [cover]
    half = -(-T // 16) * 8  # ceil8(ceil(T / 2)): two token tiles
    if split_cores and len(tms) == 1 and half < cover:
        tms.insert(0, half)
    tfs = list(dict.fromkeys([tf for tf in TF_CANDIDATES if F % tf == 0] + [F]))
    return [FusedTiles(tm=tm, tf=tf) for tm in dict.fromkeys(tms) for tf in tfs]


def chip_candidate_tiles(chip: Chip, *, T: int, F: int) -> list[FusedTiles]:
    """:func:`candidate_tiles` on ``chip``: the cores can split the rows (``split_cores``) when the chip is
    megacore and ``T`` makes at least two tiles of 8 rows (:func:`megacore_cores`). The tile search's
    candidates, and the fusion map's."""
    return candidate_tiles(T=T, F=F, split_cores=megacore_cores(chip, T=T, tm=8) == 2)


@functools.lru_cache(maxsize=256)
def _default_tiles(T, D, F, G, dtype, glu, chip_name, activation):
    chip = get_chip(chip_name)
    best, footprints = None, []
    for tiles in chip_candidate_tiles(chip, T=T, F=F):
        spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype=dtype, tiles=tiles, glu=glu, activation=activation,
                              chip=chip)
        footprints.append((spec.vmem_bytes, tiles))
        if spec.vmem_bytes > chip.vmem_bytes_per_core:
            continue
        time_s = _walk(spec, chip).time_s
        if best is None or time_s < best[0]:
            best = (time_s, tiles)
    if best is None:
        raise ValueError(f"no candidate tiles fit {chip.name}'s VMEM for T={T}, D={D}, F={F}, dtype={dtype}"
                         f"{', GLU' if glu else ''}: {no_tiles_fit_reason(chip, footprints, F=F)}")
    return best[1]


def no_tiles_fit_reason(chip: Chip, footprints, *, F: int | None = None) -> str:
    """Why no candidate fits: the smallest of ``footprints`` (``(vmem_bytes, FusedTiles)`` pairs, one per
    candidate tried) against the chip's VMEM, and what a user can change: D is never tiled, and an ``F`` that
    no :data:`TF_CANDIDATES` divides is one chunk."""
    need_bytes, tiles = min(footprints, key=lambda pair: pair[0])
    head = (f"the smallest, tm={tiles.tm} tf={tiles.tf}, needs {need_bytes / 2**20:.1f} MiB of the "
            f"{chip.vmem_bytes_per_core / 2**20:.0f} MiB per TensorCore. ")
    if F is not None and tiles.tf == F and not any(F % tf == 0 for tf in TF_CANDIDATES):
        return head + (f"No F chunk in {TF_CANDIDATES} divides F={F}, so the kernel streams all of F at once "
                       f"(tf = F); pad F to a multiple of {TF_CANDIDATES[0]} or use the ragged_dot path")
    return head + ("The kernel tiles rows and F, never D: "
                   "D-wide rows of x, out and the f32 accumulator and D x tf weight slabs (double-buffered) stay in "
                   "VMEM, so only a smaller D, a narrower dtype or the ragged_dot path fit")


def default_tiles(*, T: int, D: int, F: int, G: int, dtype, glu: bool, chip, activation: str | None = None
                  ) -> FusedTiles:
    """Tiles with the least modelled time among candidates that fit VMEM.

    Time: :func:`perfmodel.tiling.walker.walk` of :func:`fused_moe_spec` for
    ``G`` equal groups, with the timing constants fitted on v5e measurements
    (``perfmodel.tiling.params.FITTED``).
    """
    chip = get_tpu_chip(chip, what="the fused kernel (Pallas TPU)")
    activation = resolve_activation(activation, glu=glu)
    return _default_tiles(T, D, F, G, canonical_dtype(dtype), glu, chip.name, activation)
