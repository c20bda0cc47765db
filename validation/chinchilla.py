"""Refit Chinchilla's points with Epoch AI's protocol and compare with their estimates.

Data: ``../shared/data/chinchilla_epoch_svg_extracted.csv`` (245 points that
Epoch AI extracted from Chinchilla's Figure 4; columns ``Model Size``,
``Training FLOP``, ``loss``; tokens ``D = C / (6 N)``). Override the directory
with ``PERFMODEL_SHARED_DATA``. The file is read in place, never copied.

Protocol (Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt",
arXiv 2404.10102; ``../shared/FACTS.md`` section 5): drop the 5 highest-loss
points (240 remain), fit ``L = E + A/N^alpha + B/D^beta`` by Huber
(delta = 1e-3) on log-loss residuals of the log-sum-exp form, summed, from a
grid of initialisations; bootstrap for intervals. Epoch minimised with L-BFGS;
the refit uses :func:`perfmodel.scaling.fit.fit_approach3`'s default, BFGS (that
module says why), and the report names the method it ran.

Targets: alpha and beta inside Epoch's 95% intervals, E within +-0.05.

Held-out check on the same points (no published target; it calibrates the one
on our own training runs): fit the law on the points below a compute cut, predict
every point at or above it, and give the error of the whole loss and of its
excess over the fitted floor ``E`` (:func:`perfmodel.scaling.study.excess_error_percent`).
The cuts are fixed in ``HELDOUT_CUTS_FLOPS`` (1e20 leaves 104 points, 1e21 23).
"""

from __future__ import annotations

import csv
import os
import pathlib

import attrs
import numpy as np

from perfmodel.scaling import fit as F
from perfmodel.scaling.laws import ChinchillaLaw

DATA_FILE = "chinchilla_epoch_svg_extracted.csv"
N_DROPPED = 5

EPOCH_ESTIMATES = {
    # constant: (estimate, standard error) - Besiroglu et al. 2024 Table 1 (FACTS section 5)
    "E_irr": (1.8172, 0.026), "A": (482.01, 124.5), "B": (2085.43, 1293.3),
    "alpha": (0.3478, 0.015), "beta": (0.3658, 0.021),
}
EPOCH_CI95 = {"alpha": (0.317, 0.373), "beta": (0.331, 0.415)}
E_TOLERANCE = 0.05
SOURCE = "Besiroglu et al. 2024 (Epoch AI), arXiv 2404.10102, Table 1; ../shared/FACTS.md section 5"


def data_path() -> pathlib.Path:
    """``$PERFMODEL_SHARED_DATA/<file>`` or ``<repo>/../shared/data/<file>``."""
    root = os.environ.get("PERFMODEL_SHARED_DATA")
    base = pathlib.Path(root) if root else pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    path = (base / DATA_FILE).resolve()
    if not path.exists():
        raise FileNotFoundError(f"Chinchilla data not found at {path}; set PERFMODEL_SHARED_DATA to its directory")
    return path


@attrs.frozen(kw_only=True)
class ChinchillaPoints:
    params: np.ndarray
    tokens: np.ndarray
    compute_flops: np.ndarray
    loss: np.ndarray
    n_read: int
    n_dropped: int


def load_points(path: pathlib.Path | None = None, *, drop_highest: int = N_DROPPED) -> ChinchillaPoints:
    """Read the CSV and drop the ``drop_highest`` highest-loss points."""
    path = path or data_path()
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"Model Size", "Training FLOP", "loss"} - set(rows[0] if rows else ())
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    l = np.array([float(r["loss"]) for r in rows])
    keep = np.sort(np.argsort(l, kind="stable")[: len(l) - drop_highest])
    return ChinchillaPoints(params=n[keep], tokens=c[keep] / (6 * n[keep]), compute_flops=c[keep],
                            loss=l[keep], n_read=len(rows), n_dropped=drop_highest)


@attrs.frozen(kw_only=True)
class ConstantCheck:
    name: str
    ours: F.Interval
    published: float
    published_se: float
    target: str
    ok: bool

    @property
    def delta_percent(self) -> float:
        return 100 * (self.ours.point - self.published) / self.published


@attrs.frozen(kw_only=True)
class HeldOutCut:
    """The law fitted on the points with C < ``cut_flops``, judged on the points with C >= it.

    Errors in %, signed = predicted / observed - 1; *excess* errors compare the loss above the fitted
    floor ``law.E_irr`` instead (``excess_error_percent``). *Lowest* = the held-out point with the
    lowest loss (the best run there, as in the training runs' held-out check).
    """

    cut_flops: float
    n_fitted: int
    n_heldout: int
    law: ChinchillaLaw
    loss_mape_percent: float
    loss_max_abs_percent: float
    excess_mape_percent: float
    excess_max_abs_percent: float
    lowest_compute_flops: float
    lowest_observed: float
    lowest_predicted: float
    lowest_error_percent: float
    lowest_excess_error_percent: float


HELDOUT_CUTS_FLOPS = (1e20, 1e21)  # chosen before looking: 2 decades and 1 decade below the largest run


def heldout_cut(points: ChinchillaPoints, cut_flops: float, *, grid: F.InitGrid = F.SMALL_GRID) -> HeldOutCut:
    """Fit on ``points`` with C < ``cut_flops`` and predict the rest (see :class:`HeldOutCut`)."""
    from perfmodel.scaling.study import excess_error_percent

    fit_mask = points.compute_flops < cut_flops
    n_fit, n_held = int(fit_mask.sum()), int((~fit_mask).sum())
    if n_fit < 5 or n_held < 1:  # 5 constants need at least 5 points; nothing held out is no check
        raise ValueError(f"cut_flops={cut_flops:.3g} leaves {n_fit} points to fit and {n_held} to predict; "
                         "need at least 5 and 1")
    law = F.fit_approach3(points.params[fit_mask], points.tokens[fit_mask], points.loss[fit_mask], grid=grid,
                          name=f"fit below {cut_flops:.0e} FLOPs").law
    n, d, obs = points.params[~fit_mask], points.tokens[~fit_mask], points.loss[~fit_mask]
    pred = law.loss(n, d)
    err = 100.0 * (pred / obs - 1.0)
    excess = excess_error_percent(pred, obs, law.E_irr)
    i = int(np.argmin(obs))
    return HeldOutCut(
        cut_flops=float(cut_flops), n_fitted=n_fit, n_heldout=n_held, law=law,
        loss_mape_percent=float(np.mean(np.abs(err))), loss_max_abs_percent=float(np.max(np.abs(err))),
        excess_mape_percent=float(np.nanmean(np.abs(excess))), excess_max_abs_percent=float(np.nanmax(np.abs(excess))),
        lowest_compute_flops=float(points.compute_flops[~fit_mask][i]), lowest_observed=float(obs[i]),
        lowest_predicted=float(pred[i]), lowest_error_percent=float(err[i]),
        lowest_excess_error_percent=float(excess[i]))


@attrs.frozen(kw_only=True)
class ChinchillaRefit:
    points: ChinchillaPoints
    bootstrap: F.Approach3Bootstrap
    checks: tuple[ConstantCheck, ...]
    grid_size: int
    seed: int = 0  # of the bootstrap resamples
    heldout: tuple[HeldOutCut, ...] = ()  # informational: not part of ``ok``

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def refit(*, grid: F.InitGrid = F.SMALL_GRID, n_resamples: int = 200, seed: int = 0,
          budgets_flops=(1e21, 5.76e23)) -> ChinchillaRefit:
    """Run Epoch's protocol and compare each constant with the published estimate."""
    pts = load_points()
    fit = F.fit_approach3(pts.params, pts.tokens, pts.loss, grid=grid, name="chinchilla refit")
    boot = F.bootstrap_approach3(pts.params, pts.tokens, pts.loss, fit=fit, n_resamples=n_resamples,
                                 seed=seed, budgets_flops=budgets_flops)
    checks = []
    for name in ("E_irr", "A", "B", "alpha", "beta"):
        ours: F.Interval = getattr(boot, name)
        pub, se = EPOCH_ESTIMATES[name]
        if name in EPOCH_CI95:
            lo, hi = EPOCH_CI95[name]
            target, ok = f"in Epoch 95% CI ({lo}, {hi})", lo <= ours.point <= hi
        elif name == "E_irr":
            target, ok = f"within +-{E_TOLERANCE}", abs(ours.point - pub) <= E_TOLERANCE
        else:
            target, ok = "within 2 Epoch SE", abs(ours.point - pub) <= 2 * se
        checks.append(ConstantCheck(name=name, ours=ours, published=pub, published_se=se, target=target, ok=ok))
    heldout = tuple(heldout_cut(pts, cut, grid=grid) for cut in HELDOUT_CUTS_FLOPS)
    return ChinchillaRefit(points=pts, bootstrap=boot, checks=tuple(checks), grid_size=grid.size, seed=seed,
                           heldout=heldout)



def command(r: ChinchillaRefit) -> str:
    """The CLI command that reproduces ``r`` (grid named by its size, resamples and seed spelled out)."""
    grid = next((k for k, g in F.GRIDS.items() if g.size == r.grid_size), None)
    return ("perfmodel validate chinchilla" + (f" --grid {grid}" if grid else "")
            + f" --resamples {r.bootstrap.alpha.n_resamples} --seed {r.seed}")

def report_markdown(r: ChinchillaRefit) -> str:
    from perfmodel.tables import markdown_table

    b = r.bootstrap
    level = int(round(100 * b.alpha.level))
    rows = [[c.name, f"{c.ours.point:.4g}", f"[{c.ours.low:.4g}, {c.ours.high:.4g}]",
             f"{c.published:.4g} +- {c.published_se:.3g}", f"{c.delta_percent:+.2f}%", c.target,
             "ok" if c.ok else "MISS"] for c in r.checks]
    opt_rows = [[f"{c:.3g}", f"{p}", f"{t}", f"{tp}", f"{lo}"] for c, p, t, tp, lo in
                zip(b.budgets_flops, b.params_opt, b.tokens_opt, b.tokens_per_param, b.loss_opt)]
    return "\n".join([
        "# Chinchilla refit (Epoch AI protocol)", "",
        f"Generated by `{command(r)}`. Data: `{DATA_FILE}` ({r.points.n_read} points, "
        f"{r.points.n_dropped} highest-loss dropped, {r.points.loss.size} fitted). "
        f"Huber delta={F.HUBER_DELTA} on log-loss residuals (summed), {b.fit.method} from {r.grid_size} "
        "starting points; "
        f"{b.alpha.n_resamples} bootstrap resamples ({level}% percentile intervals).", "",
        f"Published: {SOURCE}.", "",
        markdown_table(["constant", "ours", f"ours {level}% CI", "Epoch (+- SE)", "Delta", "target", ""], rows), "",
        f"Allocation exponents: a = beta/(alpha+beta) = {b.a}, b = alpha/(alpha+beta) = {b.b}.", "",
        "Compute-optimal allocation of the refitted law (C = 6ND):", "",
        markdown_table(["C (FLOPs)", "N_opt", "D_opt", "D/N", "L*"], opt_rows), "",
        *heldout_markdown(r.heldout),
        f"Overall: {'all targets met' if r.ok else 'TARGETS MISSED'}.", ""])


def heldout_markdown(cuts: tuple[HeldOutCut, ...]) -> list[str]:
    """The held-out section of the report (empty without cuts)."""
    from perfmodel.tables import markdown_table

    if not cuts:
        return []
    rows = [[f"{h.cut_flops:.0e}", f"{h.n_fitted} / {h.n_heldout}",
             f"{h.law.E_irr:.4g}, {h.law.alpha:.4g}, {h.law.beta:.4g}",
             f"{h.loss_mape_percent:.2f}% / {h.loss_max_abs_percent:.2f}%",
             f"{h.excess_mape_percent:.1f}% / {h.excess_max_abs_percent:.1f}%",
             f"{h.lowest_predicted:.4g} vs {h.lowest_observed:.4g} at {h.lowest_compute_flops:.2g} FLOPs "
             f"({h.lowest_error_percent:+.2f}%)", f"{h.lowest_excess_error_percent:+.1f}%"] for h in cuts]
    whole = [abs(h.lowest_error_percent) for h in cuts]
    excess = [abs(h.lowest_excess_error_percent) for h in cuts]
    return [
        "## Held-out check on Chinchilla's own runs", "",
        "![held-out errors](chinchilla_heldout.png)", "",
        "The same fit on the points below a compute cut, judged on every point at or above it (cuts fixed in "
        "`HELDOUT_CUTS_FLOPS`). *Excess* compares the loss above the fitted floor E, (pred - E) / (obs - E) - 1, "
        "the part compute can remove; *lowest* is the held-out point with the lowest loss.", "",
        markdown_table(["cut (FLOPs)", "points fitted / held out", "fitted E, alpha, beta", "loss MAPE / max",
                        "excess MAPE / max", "lowest held-out loss pred vs obs", "its excess error"], rows), "",
        f"The lowest held-out loss is off by {min(whole):.1f}% to {max(whole):.1f}% of the whole loss, but by "
        f"{min(excess):.1f}% to {max(excess):.1f}% of its excess over the floor: on these runs the floor is most of "
        "the loss. A % target on the whole loss is therefore a far looser test here than on a task whose floor is "
        "near 0, where the whole loss is the excess.", ""]


def report_json(r: ChinchillaRefit) -> dict:
    b = r.bootstrap

    def iv(x: F.Interval):
        return {"point": x.point, "low": x.low, "high": x.high, "level": x.level}

    return {
        "data": DATA_FILE, "n_read": r.points.n_read, "n_dropped": r.points.n_dropped,
        "n_fitted": int(r.points.loss.size), "grid_size": r.grid_size, "n_resamples": b.alpha.n_resamples,
        "seed": r.seed, "command": command(r),
        "huber_delta": F.HUBER_DELTA, "method": b.fit.method, "objective": b.fit.objective, "source": SOURCE,
        "constants": {c.name: {"ours": iv(c.ours), "published": c.published, "published_se": c.published_se,
                               "delta_percent": c.delta_percent, "target": c.target, "ok": c.ok}
                      for c in r.checks},
        "a": iv(b.a), "b": iv(b.b),
        "optimal": [{"compute_flops": c, "params": iv(p), "tokens": iv(t), "tokens_per_param": iv(tp),
                     "loss": iv(lo)} for c, p, t, tp, lo in
                    zip(b.budgets_flops, b.params_opt, b.tokens_opt, b.tokens_per_param, b.loss_opt)],
        "heldout": [{"cut_flops": h.cut_flops, "n_fitted": h.n_fitted, "n_heldout": h.n_heldout,
                     "law": {"E_irr": h.law.E_irr, "A": h.law.A, "B": h.law.B, "alpha": h.law.alpha,
                             "beta": h.law.beta},
                     "loss_mape_percent": h.loss_mape_percent, "loss_max_abs_percent": h.loss_max_abs_percent,
                     "excess_mape_percent": h.excess_mape_percent,
                     "excess_max_abs_percent": h.excess_max_abs_percent,
                     "lowest_compute_flops": h.lowest_compute_flops, "lowest_observed": h.lowest_observed,
                     "lowest_predicted": h.lowest_predicted, "lowest_error_percent": h.lowest_error_percent,
                     "lowest_excess_error_percent": h.lowest_excess_error_percent} for h in r.heldout],
        "ok": r.ok,
    }


def plot_heldout(r: ChinchillaRefit, path) -> pathlib.Path:
    """Per held-out point, its error vs its compute: the whole loss and its excess over the fitted floor,
    one colour per cut (``chinchilla_heldout.png`` + ``.svg``)."""
    from perfmodel.plots import _pyplot, save
    from perfmodel.scaling.study import excess_error_percent

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    pts = r.points
    for h, color in zip(r.heldout, ("tab:blue", "tab:orange", "tab:green")):
        held = pts.compute_flops >= h.cut_flops
        c, obs = pts.compute_flops[held], pts.loss[held]
        pred = h.law.loss(pts.params[held], pts.tokens[held])
        label = f"fitted below {h.cut_flops:.0e} FLOPs ({h.n_heldout} points held out)"
        axes[0].scatter(c, 100 * (pred / obs - 1), s=12, color=color, label=label)
        axes[1].scatter(c, excess_error_percent(pred, obs, h.law.E_irr), s=12, color=color, label=label)
        for ax in axes:
            ax.axvline(h.cut_flops, color=color, ls=":", lw=1)
    for ax, what in zip(axes, ("whole loss", "loss above the fitted floor E")):
        ax.axhline(0, color="k", lw=0.8)
        ax.axhspan(-5, 5, color="0.9", zorder=0, label="+-5%")
        ax.set_xscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("predicted / observed - 1 (%)")
        ax.set_title(f"Chinchilla's runs held out: {what}", fontsize=10)
    axes[1].legend(fontsize=8)
    return save(fig, path)


def write_reports(r: ChinchillaRefit, out_dir: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """``chinchilla_refit.md`` / ``.json`` and, with held-out cuts, ``chinchilla_heldout.png`` (+ ``.svg``)."""
    from validation import write_md_json

    paths = write_md_json(out_dir, "chinchilla_refit", report_markdown(r), report_json(r))
    if r.heldout:
        paths += (plot_heldout(r, pathlib.Path(out_dir) / "chinchilla_heldout.png"),)
    return paths
