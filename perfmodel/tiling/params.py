"""Timing constants of the tiling model: the one home of every fitted number.

The walker's time model (:mod:`perfmodel.tiling.walker`) uses chip peaks from
:mod:`perfmodel.hardware` and the physical, chip-independent constants below:

* ``mxu_efficiency``: fraction of the per-core MXU peak a Pallas/Mosaic matmul
  step sustains on padded tiles;
* ``hbm_efficiency``: fraction of the per-core HBM bandwidth a block DMA
  sustains;
* ``grid_step_overhead_s``: fixed cost per grid step (pipeline bookkeeping,
  DMA issue/wait, scalar work); ``None`` = the chip's
  ``Chip.grid_step_overhead_s``;
* ``dma_latency_s``: fixed cost per block copy, paid inside the step that
  issues it (descriptor issue and first-byte latency);
* ``launch_overhead_s``: per kernel launch; ``None`` = ``Chip.launch_overhead_s``;
* ``mxu_fill_rows``: MXU cost of loading one ``T x T`` weight tile, in
  row-cycles: a block matmul ``(m, k, n)`` takes as long as
  ``2 (ceil8(m) + mxu_fill_rows) ceilT(k) ceilT(n)`` FLOPs at peak, so short
  row tiles (small ``tm``) use the MXU less well;
* ``vpu_ops_per_cycle``: element operations the vector unit of one
  TensorCore retires per clock cycle (the clock is derived from the MXU peak:
  ``peak / (2 * MXUs * T^2)``); a step's compute time is the larger of its
  MXU and VPU times (VLIW bundles issue both). ``None`` = VPU work not timed.

``DEFAULT`` is the ideal machine plus the chip's overhead defaults. ``FITTED``
holds the values fitted by ``perfmodel validate timings FILE --chip v5e --fit``
on the tokamax v5e autotuning cache (``../shared/data/tokamax/tpu_v5_lite``);
the command prints error before and after, and
``validation/results/timings_v5e.md`` records the run. Being efficiencies and
overheads, they are meant to carry to other chips through the chip peaks.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class TimingParams:
    """Physical constants of the pipelined time model (see module docstring)."""

    mxu_efficiency: float = 1.0
    hbm_efficiency: float = 1.0
    grid_step_overhead_s: float | None = None
    dma_latency_s: float = 0.0
    launch_overhead_s: float | None = None
    mxu_fill_rows: float = 0.0
    vpu_ops_per_cycle: float | None = None
    source: str = "ideal: peak MXU and HBM rates, chip overhead defaults"

    def __attrs_post_init__(self):
        for name in ("mxu_efficiency", "hbm_efficiency"):
            v = getattr(self, name)
            if not 0 < v <= 1.5:
                raise ValueError(f"{name} must be in (0, 1.5], got {name}={v!r}")
        for name in ("grid_step_overhead_s", "dma_latency_s", "launch_overhead_s", "mxu_fill_rows"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={v!r}")
        if self.vpu_ops_per_cycle is not None and self.vpu_ops_per_cycle <= 0:
            raise ValueError(f"vpu_ops_per_cycle must be > 0, got vpu_ops_per_cycle={self.vpu_ops_per_cycle!r}")


DEFAULT = TimingParams()
"""Ideal rates plus the chip's overhead defaults (no fitting)."""

FITTED = TimingParams(
    hbm_efficiency=1.0000,
    mxu_fill_rows=7.077,
    vpu_ops_per_cycle=387.6,
    grid_step_overhead_s=6.625e-07,
    source=("fitted by `perfmodel validate timings ../shared/data/tokamax/tpu_v5_lite --chip v5e --fit` "
            "on 41 forward/dlhs rows without residuals (sum of squared log errors 0.0254)"),
)
"""Constants fitted on the tokamax v5e measurements (see module docstring).

* ``hbm_efficiency`` ran into its bound of 1: block DMAs reach the 819 GB/s peak.
* ``mxu_fill_rows`` ~7: a 128-row tile runs the MXU at 128 / 135 = 95%, a 1024-row
  tile at 99%.
* ``vpu_ops_per_cycle`` ~390 element ops per cycle (~0.4 of a 1024-element vreg per
  cycle): an *effective* rate for store epilogues (mask, cast, select), well below the
  VALU peak, which suggests they are bound by vector loads/stores and MXU result pops.
* ``grid_step_overhead_s`` 0.66 us per grid step (the chip default, 0.35 us from a
  tutorial timing, is about half of it).
"""
