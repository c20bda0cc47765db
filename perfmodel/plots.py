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

    Each point sits at its arithmetic intensity and, once per chip in that
    chip's colour, at the FLOP/s it attains there under the roofline lower
    bound (FLOPs / max(compute, memory time)). A point with 0 FLOPs (a pure
    copy, intensity 0) or 0 HBM bytes (infinite intensity) has no place on
    the log axes: it is listed in the legend as not drawn.
    """
    for p in points:
        for name, v in (("flops", p.flops), ("hbm_bytes", p.hbm_bytes)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"point {p.label!r}: {name} must be finite and >= 0, got {name}={v!r}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    drawn = [p for p in points if p.flops > 0 and p.hbm_bytes > 0]
    intensities = [p.flops / p.hbm_bytes for p in drawn]
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
            if p not in drawn:
                continue
            inten = p.flops / p.hbm_bytes
            attained = p.flops / max(p.flops / peak, p.hbm_bytes / bw)
            ax.scatter([inten], [attained], color=col, marker=markers[pi % len(markers)], s=40, zorder=3,
                       edgecolor="k", lw=0.5)
    for pi, p in enumerate(points):
        label = f"{p.group}: {p.label}" if p.group else p.label
        if p not in drawn:
            label += f" (not drawn: 0 {'FLOPs' if p.flops == 0 else 'HBM bytes'})"
        ax.scatter([], [], color="lightgrey", marker=markers[pi % len(markers)], edgecolor="k", lw=0.5, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / HBM byte)")
    ax.set_ylabel(f"attainable {dtype} FLOP/s")
    ax.set_title(title or f"Roofline ({dtype}), ops placed at their roofline-attained rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def fusion_map_plot(m, path) -> pathlib.Path:
    """Heatmap of the predicted speedup (ragged_dot time / fused time) with the crossover line: per F/D row,
    the largest tokens per expert at which ragged_dot still wins (``m.last_loss_tokens_per_expert``)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    fig, ax = plt.subplots(figsize=(8, 5.5))
    s = np.log2(m.speedup)
    lim = max(abs(s.min()), abs(s.max()), 0.1)
    mesh = ax.pcolormesh(m.tokens_per_expert, m.f_over_d, s, cmap="RdBu", norm=TwoSlopeNorm(0, -lim, lim),
                         shading="nearest", rasterized=True)  # SVG: the 40k cells as one image, text stays vector
    cbar = fig.colorbar(mesh, ax=ax)
    ticks = [t for t in (-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3) if -lim <= t <= lim]
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([f"{2 ** t:.2g}x" for t in ticks])
    cbar.set_label("predicted speedup of fusion (ragged_dot path time / fused time)")
    ll = np.asarray(m.last_loss_tokens_per_expert)
    if np.isfinite(ll).any():
        ax.plot(ll, m.f_over_d, "k.-", lw=1.2, ms=3,
                label="crossover: largest tokens/expert where ragged_dot still wins")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per expert (rows routed to each expert)")
    ax.set_ylabel("F / D")
    kind = "GLU" if m.glu else m.activation
    ax.set_title(f"{m.chip}: fused MoE FFN vs ragged_dot, D={m.D}, E={m.E}, {kind}, {m.dtype}\n"
                 f"blue: fusion faster; red: ragged_dot faster (uniform groups, closed-form model)", fontsize=10)
    return save(fig, path)


def time_breakdown_plot(predictions, path, *, title: str | None = None) -> pathlib.Path:
    """Stacked bars per prediction: ragged_dot path kernels vs the fused kernel, split into bound causes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(predictions)), 4.8))
    labels, x = [], 0
    colors = {"up": "#4c72b0", "gate": "#55a868", "act": "#c44e52", "down": "#8172b2", "fused": "#dd8452"}
    seen = set()
    for p in predictions:
        bottom = 0.0
        for op in p.unfused:
            lab = f"ragged_dot path: {op.name}" if op.name not in seen else None
            seen.add(op.name)
            ax.bar(x, op.time_s * 1e6, bottom=bottom, color=colors.get(op.name, "grey"), label=lab, width=0.8)
            bottom += op.time_s * 1e6
        lab = "fused kernel" if "fused" not in seen else None
        seen.add("fused")
        ax.bar(x + 0.9, p.fused.time_s * 1e6, color=colors["fused"], label=lab, width=0.8)
        ax.text(x + 0.45, max(bottom, p.fused.time_s * 1e6) * 1.02, f"{p.speedup:.2f}x", ha="center", fontsize=8)
        labels.append((x + 0.45, f"{p.chip}\n{p.tokens_per_expert:.0f} tok/exp\nD={p.D} F={p.F}"))
        x += 2.4
    ax.set_xticks([l[0] for l in labels], [l[1] for l in labels], fontsize=7)
    ax.set_ylabel("predicted time (us)")
    ax.set_title(title or "Predicted time: ragged_dot path (stacked kernels) vs fused kernel")
    ax.legend(fontsize=7)
    return save(fig, path)
