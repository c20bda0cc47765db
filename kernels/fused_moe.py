"""Fused MoE FFN Pallas TPU kernel: up [and gate] -> activation -> down in one kernel.

Notation (scaling-book letters, kernel tiles ``tm, tf``)

====== ==========================================================
``T``  rows: tokens x chosen experts, sorted by expert (``x`` is ``[T, D]``)
``D``  model width
``F``  expert hidden width (``W_up``, ``W_gate``: ``[G, D, F]``; ``W_down``: ``[G, F, D]``)
``G``  experts (groups); ``group_sizes[g]`` rows belong to expert ``g``
``tm`` rows per token tile;  ``tf`` hidden columns per F chunk
``q``  bytes per element of ``x`` and the weights (bf16: 2, f32: 4)
====== ==========================================================

Algorithm. Grid ``(cores, S, F / tf)`` with ``S`` the number of (token tile,
group) visits per core from :func:`make_group_metadata` (dynamic; in total
``T/tm <= visits <= T/tm + G``). At step ``(c, s, j)`` the kernel holds the ``[tm, D]`` tile of ``x`` (its block
index does not change across ``j``, so it is fetched once per visit), streams
``W_up[g][:, j]`` (and ``W_gate``) ``[D, tf]`` and ``W_down[g][j, :]`` ``[tf, D]``,
and computes in VMEM::

    h   = act(x W_gate[g][:, j]) * (x W_up[g][:, j])   or   act(x W_up[g][:, j])    [tm, tf] f32
    h   = where(row in group g, h, 0)                   (only on straddling steps)
    acc += h.astype(q) @ W_down[g][j, :]                [tm, D] f32 scratch

A token tile that straddles groups is visited once per group on consecutive
steps (megablox's scheme); its output block index stays the same across those
visits, so ``acc`` is zeroed on the tile's first visit and stored to the output
block once, on its last visit at the last F chunk: the output is written to HBM
once per token tile and the ``[T, F]`` intermediate never leaves VMEM.

Rows past ``sum(group_sizes)`` (and the padding rows of a last partial tile)
form an extra "tail group" ``G`` in the metadata: its visits skip the compute
and pin the ``x`` and weight block indices to the previous step's, so they cost
no DMA; the tile is stored from the zeroed ``acc``, which makes those rows
zero as ``jax.lax.ragged_dot`` does.

HBM traffic of one call (what :func:`perfmodel.tiling.walker.walk` counts from
:func:`fused_moe_spec`): ``x`` once per tile visit ``~ T D q``, the weights once
per visit of a real group ``(2|3) D F q`` each, the output once ``T D q``.
So weights are re-read ``ceil(rows_g / tm)`` times per expert: ``tm`` trades
weight traffic against VMEM.

Megacore (v4, v5p: two TensorCores behind one device). The visit axis must run
in order (an output block is revisited on consecutive steps), so it cannot be
``"parallel"`` itself. Instead the visit sequence is cut at the token-tile
boundary that best halves the computing steps, and a leading ``"parallel"``
axis of size 2 gives each TensorCore its half (its own metadata row; the
shorter half is padded with idle steps that pin every block, so they cost a
grid step but no DMA). No output tile is shared between the cores. On
single-core devices (v5e, v6e, a 7x TensorCore) that axis has size 1.

The kernel description (grid, BlockSpecs, index maps, VMEM footprint, per-step
matmuls) is built once by :func:`fused_moe_spec`; the ``pallas_call`` uses its
BlockSpecs, the tiling model walks it for ``pl.CostEstimate``,
``vmem_limit_bytes`` and the default tiles. The description lives in
:mod:`kernels.fused_spec` (no jax import, so predictions start fast) and is
re-exported here.
"""


from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.activations import ffn_hidden, resolve_activation
from kernels.fused_spec import (  # noqa: F401  (re-exported: the kernel's description)
    _MIB,
    KERNEL_DTYPES,
    VMEM_HEADROOM_BYTES,
    VMEM_HEADROOM_FRACTION,
    FusedTiles,
    GroupMetadata,
    make_group_metadata,
    _metadata_impl,
    _repeat,
    _count_into,
    x_index_map,
    _f_chunk,
    w_in_index_map,
    w_down_index_map,
    out_index_map,
    compute_mask,
    straddle_mask,
    ROW_MASK_OPS,
    SCRATCH_COEFFICIENTS,
    DEFAULT_SCRATCH_COEFFICIENTS,
    vmem_scratch_bytes,
    megacore_cores,
    fused_moe_spec,
    vmem_limit_bytes,
    _walk,
    TM_CANDIDATES,
    TF_CANDIDATES,
    candidate_tiles,
    _default_tiles,
    default_tiles,
)
from perfmodel.hardware import Chip, canonical_dtype, get_chip
from perfmodel.tiling.spec import KernelSpec

log = logging.getLogger(__name__)

_metadata_arrays = jax.jit(functools.partial(_metadata_impl, jnp), static_argnames=("m", "tm", "cores"))
"""The visit schedule for traced group sizes (:func:`make_group_metadata` calls it for jax arrays)."""


# --------------------------------------------------------------------------
# Kernel body
# --------------------------------------------------------------------------
def _fused_moe_kernel(group_offsets_ref, core_steps_ref, group_ids_ref, m_tile_ids_ref, x_tile_ids_ref,
                      w_group_ids_ref, idle_steps_ref, x_ref, w_up_ref, *refs, tm: int, stride: int,
                      activation: str, glu: bool):
    del x_tile_ids_ref, w_group_ids_ref
    if glu:
        w_gate_ref, w_down_ref, out_ref, acc_ref = refs
    else:
        (w_down_ref, out_ref, acc_ref), w_gate_ref = refs, None
    c, s, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    tiles_f = pl.num_programs(2)
    i = c * stride + s
    steps = core_steps_ref[c]  # this core's visits; later steps are padding
    tile = m_tile_ids_ref[i]
    first_visit = jnp.logical_or(s == 0, m_tile_ids_ref[jnp.maximum(i - 1, 0)] != tile)
    next_tile = m_tile_ids_ref[jnp.minimum(i + 1, c * stride + stride - 1)]
    last_visit = jnp.logical_and(s < steps, jnp.logical_or(s == steps - 1, next_tile != tile))
    group = group_ids_ref[i]

    @pl.when(jnp.logical_and(first_visit, j == 0))
    def _zero_acc():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    def _accumulate(mask_rows: bool):
        x = x_ref[...]
        up = jnp.dot(x, w_up_ref[...], preferred_element_type=jnp.float32)
        gate = None if w_gate_ref is None else jnp.dot(x, w_gate_ref[...], preferred_element_type=jnp.float32)
        h = ffn_hidden(up, gate, activation=activation)
        if mask_rows:
            # Rows of other groups (straddling tiles), of the tail and garbage rows of a
            # partial last tile contribute nothing: select, so NaN/inf cannot leak.
            rows = tile * tm + jax.lax.broadcasted_iota(jnp.int32, h.shape, 0)
            in_group = jnp.logical_and(rows >= group_offsets_ref[group], rows < group_offsets_ref[group + 1])
            h = jnp.where(in_group, h, 0.0)
        acc_ref[...] += jnp.dot(h.astype(w_down_ref.dtype), w_down_ref[...], preferred_element_type=jnp.float32)

    @pl.when(idle_steps_ref[i] == 0)  # the tail group and padding compute nothing
    def _compute():
        straddles = straddle_mask(c, s, j, group_offsets_ref, core_steps_ref, group_ids_ref, m_tile_ids_ref,
                                  None, None, idle_steps_ref, stride=stride, tm=tm)
        jax.lax.cond(straddles, functools.partial(_accumulate, True), functools.partial(_accumulate, False))

    @pl.when(jnp.logical_and(last_visit, j == tiles_f - 1))
    def _store():
        out_ref[...] = acc_ref[...].astype(out_ref.dtype)


# --------------------------------------------------------------------------
# Wrapper
# --------------------------------------------------------------------------
_warned_interpret = False


def resolve_interpret(interpret):
    """``None``: real Mosaic on a TPU backend, TPU interpret mode elsewhere (logged once)."""
    global _warned_interpret
    if interpret is not None:
        return interpret
    if jax.default_backend() == "tpu":
        return False
    if not _warned_interpret:
        log.warning("kernels.fused_moe: backend %r is not TPU; running the fused Pallas kernel in "
                    "TPU interpret mode (pltpu.InterpretParams), which is slow and only checks semantics",
                    jax.default_backend())
        _warned_interpret = True
    return pltpu.InterpretParams()


def resolve_chip(chip) -> Chip:
    """``None``: the chip of the default TPU device, or v5e when there is none (interpret mode)."""
    if chip is not None:
        return get_chip(chip)
    dev = jax.devices()[0]
    if dev.platform == "tpu":
        return get_chip(dev.device_kind)
    return get_chip("v5e")


def check_shapes(x, group_sizes, w_up, w_down, w_gate=None) -> tuple[int, int, int, int]:
    """``(T, D, F, G)`` of an MoE FFN call after checking its arrays' types, shapes and dtypes.

    ``x [T, D]``, ``w_up`` / ``w_gate`` ``[G, D, F]``, ``w_down [G, F, D]``, weights in ``x.dtype`` (bf16 or
    f32), ``group_sizes [G]`` of an integer dtype. ``TypeError`` for a non-array, ``ValueError`` naming the
    argument and its shape or dtype otherwise. Shapes only: :func:`kernels.check_inputs` adds the values.
    """
    for name, a in (("x", x), ("group_sizes", group_sizes), ("w_up", w_up), ("w_down", w_down), ("w_gate", w_gate)):
        if a is not None and not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise TypeError(f"{name} must be an array (jax or numpy; e.g. jnp.asarray({name})), "
                            f"got {type(a).__name__} {name}={a!r:.80}")
    if x.ndim != 2:
        raise ValueError(f"x should be [T, D], got x.shape={x.shape}")
    T, D = x.shape
    if T == 0 or D == 0:  # fused picked tm=0 and gmm failed inside megablox; refuse it the same way everywhere
        raise ValueError(f"x should have at least one row and one column, got x.shape={x.shape}")
    if str(x.dtype) not in KERNEL_DTYPES.values():
        raise ValueError(f"x.dtype={x.dtype} should be {' or '.join(KERNEL_DTYPES.values())}")
    if w_up.ndim != 3 or w_up.shape[1] != D:
        raise ValueError(f"w_up should be [G, D={D}, F], got w_up.shape={w_up.shape}")
    G, _, F = w_up.shape
    if w_down.shape != (G, F, D):
        raise ValueError(f"w_down.shape={w_down.shape} should be (G, F, D)={(G, F, D)}")
    if w_gate is not None and w_gate.shape != w_up.shape:
        raise ValueError(f"w_gate.shape={w_gate.shape} should equal w_up.shape={w_up.shape}")
    if group_sizes.shape != (G,):
        raise ValueError(f"group_sizes.shape={group_sizes.shape} should be (G,)=({G},)")
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"group_sizes.dtype={group_sizes.dtype} should be an integer dtype")
    for name, w in (("w_up", w_up), ("w_down", w_down), ("w_gate", w_gate)):
        if w is not None and w.dtype != x.dtype:
            raise ValueError(f"{name}.dtype={w.dtype} should equal x.dtype={x.dtype}")
    return T, D, F, G


def fused_moe_ffn_forward(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None,
                          tiles: FusedTiles | None = None, chip=None, interpret=None,
                          check_vmem: bool = True):
    """Forward of the fused kernel (no autodiff rule; use :func:`kernels.moe_ffn`).

    ``x [T, D]`` sorted by expert, ``group_sizes [G]`` int, ``w_up`` / ``w_gate``
    ``[G, D, F]``, ``w_down [G, F, D]``, all of ``x.dtype`` (bf16 or f32). Returns
    ``[T, D]`` in ``x.dtype``; rows past ``sum(group_sizes)`` are zero.
    ``tiles=None`` picks :func:`default_tiles` for ``chip``. ``check_vmem=False``
    skips the model's VMEM-fit refusal (to let the compiler give its verdict).
    """
    T, D, F, G = check_shapes(x, group_sizes, w_up, w_down, w_gate)
    glu = w_gate is not None
    activation = resolve_activation(activation, glu=glu)
    chip = resolve_chip(chip)
    interpret = resolve_interpret(interpret)
    if tiles is None:
        tiles = default_tiles(T=T, D=D, F=F, G=G, dtype=x.dtype, glu=glu, chip=chip, activation=activation)
    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype=x.dtype, tiles=tiles, glu=glu, activation=activation,
                          chip=chip)
    if check_vmem and spec.vmem_bytes > chip.vmem_bytes_per_core:
        raise ValueError(
            f"tiles={tiles} need {spec.vmem_bytes / _MIB:.1f} MiB of VMEM (model) for T={T}, D={D}, F={F}, "
            f"dtype={canonical_dtype(x.dtype)}, but {chip.name} has {chip.vmem_bytes_per_core / _MIB:.0f} MiB "
            f"per core; use smaller tm or tf")
    cores = spec.grid[0]
    meta = make_group_metadata(group_sizes=group_sizes, m=T, tm=tiles.tm, cores=cores)
    in_specs, out_specs = spec.pallas_block_specs()
    kernel = functools.partial(_fused_moe_kernel, tm=tiles.tm, stride=-(-T // tiles.tm) + G,
                               activation=activation, glu=glu)
    weights = (w_up, w_gate, w_down) if glu else (w_up, w_down)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((T, D), x.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=len(meta.prefetch()),
            in_specs=in_specs,
            out_specs=out_specs[0],
            grid=(cores, meta.num_steps, F // tiles.tf),
            scratch_shapes=[pltpu.VMEM((tiles.tm, D), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=spec.dimension_semantics,
                                             vmem_limit_bytes=spec.vmem_limit_bytes),
        cost_estimate=cost_estimate(spec, chip),
        interpret=interpret,
        name="fused_moe_ffn",
    )(*meta.prefetch(), x, *weights)


# --------------------------------------------------------------------------
# Model hooks: cost estimate and default tiles
# --------------------------------------------------------------------------
def cost_estimate(spec: KernelSpec, chip: Chip) -> pl.CostEstimate:
    """``pl.CostEstimate`` from the tiling model's walk of ``spec`` (executed, padded work and real HBM bytes)."""
    cost = _walk(spec, chip)
    return pl.CostEstimate(flops=int(cost.mxu_flops), transcendentals=int(cost.transcendentals),
                           bytes_accessed=int(cost.hbm_bytes))
