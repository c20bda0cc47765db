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
* ``launch_overhead_s``: per kernel launch; ``None`` = ``Chip.launch_overhead_s``.

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
    source: str = "ideal: peak MXU and HBM rates, chip overhead defaults"

    def __attrs_post_init__(self):
        for name in ("mxu_efficiency", "hbm_efficiency"):
            v = getattr(self, name)
            if not 0 < v <= 1.5:
                raise ValueError(f"{name} must be in (0, 1.5], got {name}={v!r}")
        for name in ("grid_step_overhead_s", "dma_latency_s", "launch_overhead_s"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={v!r}")


DEFAULT = TimingParams()
"""Ideal rates plus the chip's overhead defaults (no fitting)."""

FITTED = DEFAULT
"""Replaced by the fitted constants once `perfmodel validate timings --fit` has run."""
