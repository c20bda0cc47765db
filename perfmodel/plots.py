"""Plots people would rather look at than read (matplotlib, Agg backend).

Every function writes PNG and SVG next to each other and returns the PNG path.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import attrs
import numpy as np

from perfmodel.hardware import get_chip


@attrs.frozen
class RooflinePoint:
    """One op placed on a roofline: FLOPs and HBM bytes (label, marker group)."""

    label: str
    flops: float
    hbm_bytes: float
    group: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Save ``fig`` as ``path`` (.png) and the same name with .svg."""
    path = pathlib.Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    fig.savefig(path.with_suffix(".svg"), bbox_inches="tight")
    _pyplot().close(fig)
    return path


def roofline_plot(chips: Sequence[str], points: Sequence[RooflinePoint], path, *,
                  dtype: str = "bf16", title: str | None = None) -> pathlib.Path:
    """Attainable FLOP/s = min(peak, intensity x bandwidth) per chip, ops as points.

    Each point sits at its arithmetic intensity and at the FLOP/s it attains
    on the first chip under the roofline lower bound (FLOPs / max(compute,
    memory time)); points are drawn once per chip in that chip's colour.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    intensities = [p.flops / p.hbm_bytes for p in points if p.hbm_bytes > 0]
    lo = min([1.0] + [i / 3 for i in intensities])
    hi = max([1e4] + [i * 3 for i in intensities])
    x = np.logspace(np.log10(lo), np.log10(hi), 400)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*XhH<>"
    for ci, name in enumerate(chips):
        chip = get_chip(name)
        peak, bw = chip.peak_flops_per_s(dtype), chip.hbm_bytes_per_s
        col = colors[ci % len(colors)]
        ax.plot(x, np.minimum(peak, x * bw), color=col, lw=2,
                label=f"{chip.name}: {peak / 1e12:.0f} TFLOP/s, {bw / 1e9:.0f} GB/s, ridge {peak / bw:.0f}")
        for pi, p in enumerate(points):
            inten = p.flops / p.hbm_bytes
            attained = p.flops / max(p.flops / peak, p.hbm_bytes / bw)
            ax.scatter([inten], [attained], color=col, marker=markers[pi % len(markers)], s=40, zorder=3,
                       edgecolor="k", lw=0.5)
    for pi, p in enumerate(points):
        label = f"{p.group}: {p.label}" if p.group else p.label
        ax.scatter([], [], color="lightgrey", marker=markers[pi % len(markers)], edgecolor="k", lw=0.5, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel(f"attainable {dtype} FLOP/s")
    ax.set_title(title or f"Roofline ({dtype}), ops placed at their roofline-attained rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)
