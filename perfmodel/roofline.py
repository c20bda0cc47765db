"""Roofline: time bounds of a cost on a chip.

For FLOPs ``W``, HBM bytes ``Q`` and a chip with matmul peak ``P`` (for the
dtype) and HBM bandwidth ``BW``:

* ``compute_s = W / P``, ``memory_s = Q / BW``;
* ``lower_s = max(compute_s, memory_s)`` (perfect overlap);
* ``upper_s = compute_s + memory_s`` (no overlap);
* arithmetic intensity ``W / Q`` against the ridge ``P / BW``: above it the op
  is compute-bound, below memory-bound.

Assumes every FLOP runs at the matmul peak (elementwise work on the VPU is
slower, but the passes that have it are memory-bound) and one chip.
"""

from __future__ import annotations

import attrs
import numpy as np

from perfmodel.hardware import Chip, canonical_dtype, get_chip


@attrs.frozen(kw_only=True)
class Roofline:
    """Roofline of one op on one chip. Array fields when the inputs were arrays."""

    chip: str
    dtype: str
    flops: object
    hbm_bytes: object
    compute_s: object
    memory_s: object
    lower_s: object
    upper_s: object
    intensity_flops_per_byte: object
    ridge_flops_per_byte: float

    @property
    def bound(self):
        """"compute" or "memory" (array of labels for array inputs)."""
        lab = np.where(np.asarray(self.compute_s) >= np.asarray(self.memory_s), "compute", "memory")
        return str(lab) if lab.ndim == 0 else lab


def roofline(flops, hbm_bytes, chip: str | Chip, dtype: str = "bf16") -> Roofline:
    """Roofline bounds of ``flops`` and ``hbm_bytes`` (scalars or arrays) on ``chip``."""
    c = get_chip(chip)
    dt = canonical_dtype(dtype)
    peak = c.peak_flops_per_s(dt)
    f = np.asarray(flops, dtype=float)
    b = np.asarray(hbm_bytes, dtype=float)
    for name, v, given in (("flops", f, flops), ("hbm_bytes", b, hbm_bytes)):
        if not np.all(np.isfinite(v) & (v >= 0)):
            raise ValueError(f"{name} must be finite and >= 0, got {name}={given!r}")
    compute = f / peak
    memory = b / c.hbm_bytes_per_s
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = np.where(b > 0, f / np.where(b > 0, b, 1), np.inf)

    def s(x):
        x = np.asarray(x)
        return float(x) if x.ndim == 0 else x

    return Roofline(
        chip=c.name, dtype=dt, flops=s(f), hbm_bytes=s(b), compute_s=s(compute), memory_s=s(memory),
        lower_s=s(np.maximum(compute, memory)), upper_s=s(compute + memory),
        intensity_flops_per_byte=s(intensity), ridge_flops_per_byte=c.ridge_flops_per_byte(dt))
