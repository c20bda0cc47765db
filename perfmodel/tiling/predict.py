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
  rhs read once per group plus the output (we cannot see inside XLA's fusion).
* tokamax Pallas: megablox gmm (forward, dlhs with transposed rhs) or tgmm
  (drhs) at the config's ``(tile_m, tile_k, tile_n)``, ``tile_k`` and
  ``tile_n`` clamped to their dimension (a tile larger than the array dim
  covers it in one block), ``tile_m`` as given (row tiles are padded, so a
  ``tile_m`` above ``m`` computes the padding), with ``input_buffer_count``
  buffers.
"""

from __future__ import annotations

import attrs
import numpy as np

from perfmodel.hardware import dtype_bytes, get_chip
from perfmodel.tiling.gmm import gmm_spec, ragged_dot_spec, tokamax_gmm_spec
from perfmodel.tiling.params import DEFAULT, TimingParams
from perfmodel.tiling.walker import KernelCost, walk

KINDS = ("forward", "dlhs", "drhs")
XLA_VARIANT = {"forward": "forward", "dlhs": "rhs_transposed", "drhs": "ragged_contracting"}


@attrs.frozen(kw_only=True)
class GroupedMatmulTime:
    """Predicted time of one call and where it comes from.

    ``kernel`` is the walked Mosaic kernel (None for XLA's dense drhs);
    ``extra_*`` describe work outside it (XLA's rhs pre-transpose, the dense
    drhs), timed as a roofline plus ``extra_launches`` launches.
    """

    implementation: str  # "xla_ragged_dot" | "tokamax_pallas"
    kind: str
    chip: str
    kernel: KernelCost | None
    extra_flops: int
    extra_hbm_bytes: int
    extra_launches: int
    tiles: tuple[int, int, int] | None
    lowering: str  # "mosaic" | "dense"
    tiling_source: str
    params: TimingParams
    dtype: str = "bf16"

    @property
    def extra_s(self) -> float:
        return extra_time_s(self.chip, self.extra_flops, self.extra_hbm_bytes, self.extra_launches,
                            self.dtype, self.params)

    @property
    def time_s(self) -> float:
        return (self.kernel.time_s if self.kernel is not None else 0.0) + self.extra_s

    def retimed(self, params: TimingParams) -> "GroupedMatmulTime":
        """Same prediction under other timing constants (no new walk)."""
        kernel = None if self.kernel is None else self.kernel.retimed(params)
        return attrs.evolve(self, kernel=kernel, params=params)


def extra_time_parts(chip, flops: int, hbm_bytes: int, launches: int, dtype: str, params: TimingParams
                     ) -> tuple[float, float, float]:
    """``(compute_s, memory_s, overhead_s)`` of work outside a walked kernel: ``flops / peak``,
    ``bytes / bandwidth`` (one TensorCore, at the params' efficiencies) and ``launches`` launch costs."""
    chip = get_chip(chip)
    launch = chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
    compute = flops / (chip.per_core_flops_per_s(dtype) * params.mxu_efficiency)
    memory = hbm_bytes / (chip.per_core_hbm_bytes_per_s() * params.hbm_efficiency)
    return compute, memory, launches * launch


def extra_time_s(chip, flops: int, hbm_bytes: int, launches: int, dtype: str, params: TimingParams) -> float:
    """Roofline ``max(flops / peak, bytes / bandwidth)`` plus launches (:func:`extra_time_parts`)."""
    if not (flops or hbm_bytes or launches):
        return 0.0
    compute, memory, overhead = extra_time_parts(chip, flops, hbm_bytes, launches, dtype, params)
    return max(compute, memory) + overhead


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind=}")
    return kind


def xla_ragged_dot_time(
    chip, group_sizes, k: int, n: int, *, m: int | None = None, kind: str = "forward",
    dtype: str = "bf16", params: TimingParams = DEFAULT, tiling=None, allow_compile: bool = True,
) -> GroupedMatmulTime:
    """Time of ``jax.lax.ragged_dot`` on ``chip`` as XLA runs it (see module docstring)."""
    chip = get_chip(chip)
    _check_kind(kind)
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    G = int(gs.size)
    if tiling is None:
        from perfmodel.xla_tiling import ragged_dot_tiling

        tiling = ragged_dot_tiling(chip.name, m, k, n, G, dtype, variant=XLA_VARIANT[kind],
                                   allow_compile=allow_compile)
    q = dtype_bytes(dtype)
    common = dict(implementation="xla_ragged_dot", kind=kind, chip=chip.name, tiling_source=tiling.source,
                  params=params, dtype=dtype)
    if tiling.lowering == "dense":
        return GroupedMatmulTime(kernel=None, extra_flops=G * 2 * m * k * n,
                                 extra_hbm_bytes=G * (m * k + m * n) * q + G * k * n * q, extra_launches=1,
                                 tiles=None, lowering="dense", **common)
    pre_t = kind == "dlhs" and tiling.rhs_pre_transposed
    spec = ragged_dot_spec(chip, gs, k, n, m=m, dtype=dtype, transposed_rhs=kind == "dlhs" and not pre_t,
                           tiling=(tiling.tm, tiling.tk, tiling.tn))
    return GroupedMatmulTime(kernel=walk(spec, chip, params), extra_flops=0,
                             extra_hbm_bytes=2 * G * k * n * q if pre_t else 0, extra_launches=int(pre_t),
                             tiles=(tiling.tm, tiling.tk, tiling.tn), lowering="mosaic", **common)


def tokamax_time(
    chip, group_sizes, k: int, n: int, *, tm: int, tk: int, tn: int, m: int | None = None,
    kind: str = "forward", input_buffer_count: int = 2, dtype: str = "bf16",
    params: TimingParams = DEFAULT,
) -> GroupedMatmulTime:
    """Time of tokamax's Pallas grouped matmul at ``(tm, tk, tn)`` (see module docstring)."""
    chip = get_chip(chip)
    _check_kind(kind)
    gs = np.asarray(group_sizes)
    m = int(gs.sum()) if m is None else int(m)
    tk_eff, tn_eff = min(tk, k), min(tn, n)
    spec = tokamax_gmm_spec(gs, k, n, m=m, tm=tm, tk=tk_eff, tn=tn_eff, dtype=dtype,
                            input_buffer_count=input_buffer_count, kind=kind)
    return GroupedMatmulTime(implementation="tokamax_pallas", kind=kind, chip=chip.name,
                             kernel=walk(spec, chip, params), extra_flops=0, extra_hbm_bytes=0, extra_launches=0,
                             tiles=(tm, tk_eff, tn_eff), lowering="mosaic", tiling_source="tokamax config",
                             params=params, dtype=dtype)


def megablox_time(chip, group_sizes, k: int, n: int, *, tm: int, tk: int, tn: int, dtype: str = "bf16",
                  out_dtype: str = "f32", params: TimingParams = DEFAULT) -> KernelCost:
    """Walked cost of megablox ``gmm`` (forward) at ``tiling=(tm, tk, tn)``."""
    return walk(gmm_spec(group_sizes, k, n, tm=tm, tk=tk, tn=tn, dtype=dtype, out_dtype=out_dtype), chip, params)
