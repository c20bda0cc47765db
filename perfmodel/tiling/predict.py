"""Predicted time of one grouped-matmul call: XLA's ragged_dot or tokamax's Pallas kernel.

``kind`` names the ``ragged_dot_dimension_numbers`` of the call (tokamax's
cache files, FACTS section 5), in grouped-matmul terms ``lhs [m, k]``,
G groups, output width ``n``:

* ``"forward"``: ``[m, k] @ [G, k, n] -> [m, n]``;
* ``"dlhs"``: rhs stored ``[G, n, k]`` (contracting its last dim);
* ``"drhs"``: ragged contraction ``[m, k]^T [m, n] -> [G, k, n]``.

How each is modelled:

* XLA ``ragged_dot`` forward / dlhs: the Mosaic kernel with the tiling XLA
  chose (``perfmodel.xla_tiling``: read from a libtpu AOT compile, or its
  fallback rule), walked by :func:`perfmodel.tiling.walker.walk`. For dlhs XLA
  first copies rhs to ``[G, k, n]`` in HBM when the record says
  ``rhs_pre_transposed``: one read and one write of the weights at HBM speed
  plus a launch, added to the kernel.
* XLA ``ragged_dot`` drhs: XLA:TPU has no Mosaic kernel; it runs one dense
  masked batched matmul of ``G * 2 m k n`` FLOPs (``xla_tiling``). Modelled as
  a roofline ``max(FLOPs / peak, bytes / bandwidth)`` with ``bytes`` = lhs and
  rhs read once per group plus the output (an upper bound on fusion-less
  traffic; we cannot see inside XLA's fusion), at the same efficiencies.
* tokamax Pallas: megablox gmm (forward, dlhs with transposed rhs) or tgmm
  (drhs) at the config's ``(tile_m, tile_k, tile_n)``, each tile clamped to
  its dimension (a tile larger than the array dim covers it in one block),
  with ``input_buffer_count`` buffers.
"""

from __future__ import annotations

import attrs

from perfmodel.hardware import dtype_bytes, get_chip
from perfmodel.tiling.gmm import gmm_spec, ragged_dot_spec, tokamax_gmm_spec
from perfmodel.tiling.params import DEFAULT, TimingParams
from perfmodel.tiling.walker import KernelCost, walk

KINDS = ("forward", "dlhs", "drhs")
_XLA_VARIANT = {"forward": "forward", "dlhs": "rhs_transposed", "drhs": "ragged_contracting"}


@attrs.frozen(kw_only=True)
class GroupedMatmulTime:
    """Predicted time of one call and where it comes from."""

    implementation: str  # "xla_ragged_dot" | "tokamax_pallas"
    kind: str
    time_s: float
    kernel: KernelCost | None  # the walked Mosaic kernel (None for XLA's dense drhs)
    extra_s: float  # work outside the kernel (XLA's rhs pre-transpose, dense drhs)
    tiles: tuple[int, int, int] | None
    lowering: str  # "mosaic" | "dense"
    tiling_source: str


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind=}")
    return kind


def _bw(chip, params: TimingParams) -> float:
    return chip.per_core_hbm_bytes_per_s() * params.hbm_efficiency


def _launch(chip, params: TimingParams) -> float:
    return chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s


def xla_ragged_dot_time(
    chip, group_sizes, k: int, n: int, *, m: int | None = None, kind: str = "forward",
    dtype: str = "bf16", params: TimingParams = DEFAULT, tiling=None, allow_compile: bool = True,
) -> GroupedMatmulTime:
    """Time of ``jax.lax.ragged_dot`` on ``chip`` as XLA runs it (see module docstring)."""
    import numpy as np

    chip = get_chip(chip)
    _check_kind(kind)
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    G = int(gs.size)
    if tiling is None:
        from perfmodel.xla_tiling import ragged_dot_tiling

        tiling = ragged_dot_tiling(chip.name, m, k, n, G, dtype, variant=_XLA_VARIANT[kind],
                                   allow_compile=allow_compile)
    q = dtype_bytes(dtype)
    if tiling.lowering == "dense":
        flops = G * 2 * m * k * n
        hbm = G * (m * k + m * n) * q + G * k * n * q
        compute = flops / (chip.per_core_flops_per_s(dtype) * params.mxu_efficiency)
        extra = max(compute, hbm / _bw(chip, params)) + _launch(chip, params)
        return GroupedMatmulTime(implementation="xla_ragged_dot", kind=kind, time_s=extra, kernel=None,
                                 extra_s=extra, tiles=None, lowering="dense", tiling_source=tiling.source)
    pre_t = kind == "dlhs" and tiling.rhs_pre_transposed
    spec = ragged_dot_spec(chip, gs, k, n, m=m, dtype=dtype, transposed_rhs=kind == "dlhs" and not pre_t,
                           tiling=(tiling.tm, tiling.tk, tiling.tn))
    cost = walk(spec, chip, params)
    extra = 0.0
    if pre_t:  # XLA copies rhs [G, n, k] -> [G, k, n] in HBM first
        extra = 2 * G * k * n * q / _bw(chip, params) + _launch(chip, params)
    return GroupedMatmulTime(implementation="xla_ragged_dot", kind=kind, time_s=cost.time_s + extra,
                             kernel=cost, extra_s=extra, tiles=(tiling.tm, tiling.tk, tiling.tn),
                             lowering="mosaic", tiling_source=tiling.source)


def tokamax_time(
    chip, group_sizes, k: int, n: int, *, tm: int, tk: int, tn: int, m: int | None = None,
    kind: str = "forward", input_buffer_count: int = 2, dtype: str = "bf16",
    params: TimingParams = DEFAULT,
) -> GroupedMatmulTime:
    """Time of tokamax's Pallas grouped matmul at ``(tm, tk, tn)`` (see module docstring)."""
    import numpy as np

    chip = get_chip(chip)
    _check_kind(kind)
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    tk_eff, tn_eff = min(tk, k), min(tn, n)
    spec = tokamax_gmm_spec(gs, k, n, m=m, tm=tm, tk=tk_eff, tn=tn_eff, dtype=dtype,
                            input_buffer_count=input_buffer_count, kind=kind)
    cost = walk(spec, chip, params)
    return GroupedMatmulTime(implementation="tokamax_pallas", kind=kind, time_s=cost.time_s, kernel=cost,
                             extra_s=0.0, tiles=(tm, tk_eff, tn_eff), lowering="mosaic",
                             tiling_source="tokamax config")


def megablox_time(chip, group_sizes, k: int, n: int, *, tm: int, tk: int, tn: int, dtype: str = "bf16",
                  out_dtype: str = "f32", params: TimingParams = DEFAULT) -> KernelCost:
    """Walked cost of megablox ``gmm`` (forward) at ``tiling=(tm, tk, tn)``."""
    return walk(gmm_spec(group_sizes, k, n, tm=tm, tk=tk, tn=tn, dtype=dtype, out_dtype=out_dtype), chip, params)
