"""Plots of a scaling study: IsoFLOP curves, fitted law vs data, compute-optimal and loss frontiers.

All functions take a :class:`perfmodel.scaling.study.Study` and write PNG files;
matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import pathlib

import numpy as np

from perfmodel.plots import _pyplot, save  # one home for backend setup and PNG+SVG saving

from perfmodel.scaling import laws


def _plt():
    return _pyplot()


def _colors(n):
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def plot_isoflops(study, path: pathlib.Path) -> pathlib.Path:
    """Loss vs N per budget, the parabola fitted in ln N, and its vertex (Approach 2)."""
    plt = _plt()
    groups = study.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        budgets = g.runs.budgets
        for color, c in zip(_colors(len(budgets)), budgets):
            m = g.runs.budget_flops == c
            ax.scatter(g.runs.params[m], g.runs.loss[m], color=color, s=18, label=f"C={c:.2g}")
            iso = None if g.approach2 is None else next(
                (i for i in g.approach2.fit.isoflops if i.budget_flops == c), None)
            if iso is not None:
                x = np.linspace(np.log(g.runs.params[m]).min(), np.log(g.runs.params[m]).max(), 100)
                p0, p1, p2 = iso.coeffs
                ax.plot(np.exp(x), p0 + p1 * x + p2 * x * x, color=color, lw=1)
                ax.scatter([iso.params_opt], [iso.loss_opt], color=color, marker="*", s=120, edgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel(f"N ({study.params_key.replace('_', ' ')} parameters)")
        ax.set_ylabel(f"final {study.loss_key} loss")
        ax.set_title(f"{g.label}: IsoFLOP curves")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_law_vs_data(study, path: pathlib.Path) -> pathlib.Path:
    """Observed losses and the Approach-3 law ``L(N, C / (c_f N))`` along each budget."""
    plt = _plt()
    groups = study.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        law = g.approach3.fit.law
        budgets = g.runs.budgets
        lo, hi = g.runs.params.min() / 2, g.runs.params.max() * 2
        n = np.logspace(np.log10(lo), np.log10(hi), 200)
        for color, c in zip(_colors(len(budgets)), budgets):
            m = g.runs.budget_flops == c
            ax.scatter(g.runs.params[m], g.runs.loss[m], color=color, s=18, label=f"C={c:.2g}")
            ax.plot(n, law.loss(n, c / (law.flops_per_param_token * n)), color=color, lw=1)
        opt = law.optimal(budgets)
        ax.plot(opt.params, opt.loss, "k--", lw=1, label="L*(C) of the law")
        ax.set_xscale("log")
        ax.set_xlabel("N")
        ax.set_ylabel(f"final {study.loss_key} loss")
        ax.set_title(f"{g.label}: alpha={law.alpha:.3f}, beta={law.beta:.3f}, E={law.E_irr:.3f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_frontier(study, path: pathlib.Path, *, level: float = 0.95) -> pathlib.Path:
    """N_opt(C) and D/N at the optimum per group, with bootstrap bands (Approach 3)."""
    plt = _plt()
    f = laws._compiled()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    all_b = np.concatenate([g.runs.budgets for g in study.groups])
    cs = np.logspace(np.log10(all_b.min()) - 0.5, np.log10(all_b.max()) + 1.0, 60)
    q = ((1 - level) / 2, (1 + level) / 2)
    for color, g in zip(_colors(len(study.groups) + 1), study.groups):
        law = g.approach3.fit.law
        cf = law.flops_per_param_token
        s = g.approach3.samples
        o = law.optimal(cs)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            n_s = np.array([f["params"](cs, np.float64(cf), *row) for row in s])
            r_s = np.array([f["tokens"](cs, np.float64(cf), *row) for row in s]) / n_s
        ax1.plot(cs, o.params, color=color, label=g.label)
        ax2.plot(cs, o.tokens_per_param, color=color, label=g.label)
        if len(s) >= 5:
            ax1.fill_between(cs, *np.quantile(n_s, q, axis=0), color=color, alpha=0.2)
            ax2.fill_between(cs, *np.quantile(r_s, q, axis=0), color=color, alpha=0.2)
        if g.approach2 is not None:
            isos = g.approach2.fit.isoflops
            ax1.scatter([i.budget_flops for i in isos], [i.params_opt for i in isos], color=color, marker="*",
                        edgecolor="k", s=80)
            ax2.scatter([i.budget_flops for i in isos], [i.tokens_opt / i.params_opt for i in isos], color=color,
                        marker="*", edgecolor="k", s=80)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.axvspan(all_b.min(), all_b.max(), color="0.9", zorder=0)
        ax.legend(fontsize=8)
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    ax1.set_ylabel("N_opt (active parameters)")
    ax2.set_ylabel("D_opt / N_opt (tokens per active parameter)")
    ax1.set_title(f"compute-optimal frontier ({int(level * 100)}% bootstrap band; stars: IsoFLOP vertices)")
    fig.tight_layout()
    return save(fig, path)


def plot_loss_frontier(study, path: pathlib.Path) -> pathlib.Path:
    """Best loss per budget vs C (log-log) beside the laws' L*(C): fitted on all budgets, and the held-out fit.

    Grey dots: every run (seed means if the study averaged them). Black dots: the best run of each
    budget (the frontier the held-out check predicts); the held-out budget's is ringed in red. Solid: L*(C) of the law fitted on all budgets;
    dashed: L*(C) of the law fitted below the held-out budget, extended to it; dotted: the baseline power
    law through the best runs below it. The title gives the observed frontier's exponent and curvature
    (``study.Frontier``) against the all-budget law's.
    """
    from perfmodel.scaling import fit as F
    from perfmodel.scaling import study as S

    plt = _plt()
    groups = study.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, color, g in zip(axes[0], _colors(len(groups) + 1), groups):
        budgets, best = F.best_loss_per_budget(g.runs.budget_flops, g.runs.loss)
        cs = np.logspace(np.log10(budgets.min()), np.log10(budgets.max()), 60)
        ax.scatter(g.runs.budget_flops, g.runs.loss, color="0.75", s=10,
                   label="every configuration (seed mean)" if study.average_seeds else "every run")
        ax.scatter(budgets, best, color="k", s=24, zorder=3, label="best run per budget")
        ax.plot(cs, g.approach3.fit.law.optimal(cs).loss, color=color, lw=1.5, label="L*(C), law fitted on all")
        h = g.heldout
        if h is not None:
            train = g.runs.select(g.runs.budget_flops < h.budget_flops)
            held = F.law_from_log_constants(h.law_log_constants, flops_per_param_token=S.flops_per_param_token(train))
            ax.plot(cs, held.optimal(cs).loss, color=color, ls="--", lw=1.2,
                    label=f"L*(C), law fitted below {h.budget_flops:.0e} ({h.best_loss_error_percent:+.1f}%)")
            base = F.fit_best_loss_frontier(train.budget_flops, train.loss)
            ax.plot(cs, base(cs), color="0.4", ls=":", lw=1.2,
                    label=f"power law through the best runs below it ({h.best_loss_error_percent_frontier:+.1f}%)")
            ax.scatter([h.budget_flops], [h.best_loss_observed], s=110, facecolor="none", edgecolor="tab:red",
                       lw=1.5, zorder=4, label="held-out best")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel(f"final {study.loss_key} loss")
        f = g.frontier
        title = g.label
        if f is not None:
            title += f": best ~ C^{f.overall.point:.3f}, law C^{f.law_overall:.3f}"
            if f.curvature is not None:
                title += f"; curvature {f.curvature.point:+.3f} ({S.bend_text(f.curvature)})"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_study(study, out_dir: pathlib.Path, *, suffix: str = "") -> list[pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    return [plot_isoflops(study, out_dir / f"scaling_isoflops{suffix}.png"),
            plot_law_vs_data(study, out_dir / f"scaling_law_vs_data{suffix}.png"),
            plot_frontier(study, out_dir / f"scaling_frontier{suffix}.png"),
            plot_loss_frontier(study, out_dir / f"scaling_loss_frontier{suffix}.png")]


def plot_time_budget(curves, allocations, path, *, ffn: str = "") -> pathlib.Path:
    """Loss vs active parameters when every size trains for the same time; time- and FLOP-optimal marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for color, c in zip(_colors(len(curves) + 1), curves):
        ax.plot(c.params_active, c.loss, color=color, label=f"{c.arch}")
        for a in allocations:
            if a.arch == c.arch:
                marker = "*" if a.choice == "time-optimal" else "o"
                ax.scatter([a.size.params_active], [a.loss], color=color, marker=marker, s=120 if marker == "*" else 50,
                           edgecolor="k", zorder=3, label=f"{c.arch} {a.choice} (MFU {a.mfu:.0%})")
    ax.set_xscale("log")
    ax.set_xlabel("N_act (active non-embedding parameters)")
    ax.set_ylabel("predicted loss (joint MoE law)")
    hours = curves[0].time_s / 3600
    ax.set_title(f"{hours:g} chip-hours on {curves[0].chip}" + (f", MoE FFN: {ffn}" if ffn else ""))
    lo = min(float(np.min(c.loss)) for c in curves)
    ax.set_ylim(lo - 0.05, lo + 0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, path)
