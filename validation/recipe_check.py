"""Is the held-out miss of the scaling fit a recipe effect? Learning-rate sensitivity per budget.

Hypothesis under test (validation/results/arith_full.md): the arithmetic study's recipe changes
with the budget (batch ``B`` grows with the token count, peak lr scales with ``sqrt(B / 256)``),
so the smaller budgets could be relatively under-tuned, which would make a law fitted on them
over-predict the loss of the largest budget.

Data: the study's own runs at the recipe's lr (``lr x1``) and the same grid and seeds re-run at
``lr x0.5`` and ``lr x2`` (``perfmodel train sweep --study full --arch both --seeds S
--lr-scale 0.5|2 --out validation/results/arith_lr.jsonl``; run ids end in ``/lr_x<scale>``).
With several seeds, the best lr is picked per seed and configuration and the losses are then
averaged over seeds, for ``x1`` and tuned alike.

Reported, per architecture:

* per budget: the best-width loss at ``lr x1`` and the best over the three learning rates
  (``tuned``), the gain ``1 - tuned / x1`` in %, and how often each lr wins a width;
* the held-out check (fit the three smaller budgets, predict the largest budget's best loss) on
  the ``lr x1`` runs and on the per-configuration best over learning rates.

If the recipe explanation holds, tuning gains are larger at the smaller budgets and the tuned
fit's held-out error is smaller. The best of three noisy runs is biased low by the same amount
at every budget, so it shifts both sides of the comparison alike.
"""

from __future__ import annotations

import pathlib

import attrs
import numpy as np

LR_SCALES = (0.5, 1.0, 2.0)


def lr_scale_of(record: dict) -> float:
    """The lr multiplier of a sweep record: the ``/lr_x<scale>`` run-id suffix, 1 without one."""
    rid = str(record.get("run_id", ""))
    tail = rid.rsplit("/", 1)[-1]
    return float(tail[len("lr_x"):]) if tail.startswith("lr_x") else 1.0


@attrs.frozen(kw_only=True)
class BudgetRow:
    budget_flops: float
    best_loss_x1: float
    best_loss_tuned: float
    wins: tuple[tuple[float, int], ...]  # (lr scale, widths at which it is best)

    @property
    def gain_percent(self) -> float:
        return 100.0 * (1.0 - self.best_loss_tuned / self.best_loss_x1)


@attrs.frozen(kw_only=True)
class GroupCheck:
    label: str
    budgets: tuple[BudgetRow, ...]
    fit_x1: object  # perfmodel.scaling.study.GroupFit (law on all budgets + held-out check)
    fit_tuned: object

    @property
    def heldout_x1(self):
        return self.fit_x1.heldout

    @property
    def heldout_tuned(self):
        return self.fit_tuned.heldout

    @property
    def law_x1(self):
        return self.fit_x1.approach3

    @property
    def law_tuned(self):
        return self.fit_tuned.approach3


@attrs.frozen(kw_only=True)
class RecipeCheck:
    base: str
    lr_file: str
    seeds: tuple[int, ...]
    groups: tuple[GroupCheck, ...]
    missing: tuple[str, ...]  # configurations without all three learning rates (left out)


def _key(runs, i) -> tuple:
    return (runs.arch[i], int(runs.n_experts[i]), int(runs.top_k[i]), float(runs.budget_flops[i]),
            float(runs.params[i]))


def _concat(runs_list):
    first = runs_list[0]
    return attrs.evolve(first, **{f.name: np.concatenate([getattr(r, f.name) for r in runs_list])
                                  for f in attrs.fields(type(first))
                                  if isinstance(getattr(first, f.name), np.ndarray)})


def _one_seed(base, lr_file, seed: int):
    """(x1 runs, tuned runs, winning lr per run, missing labels) of one seed, configurations at every lr only."""
    from perfmodel.scaling import results

    by_scale = {}
    for scale in LR_SCALES:
        path = base if scale == 1.0 else lr_file
        try:
            by_scale[scale] = results.read_runs(
                path, keep=lambda r, s=scale: r.get("seed", 0) == seed and lr_scale_of(r) == s)
        except ValueError as err:
            if "no finished runs" not in str(err):
                raise
            raise ValueError(f"need runs at every lr scale {LR_SCALES}: {path} has none of seed {seed} at "
                             f"lr x{scale:g}") from None
    x1 = by_scale[1.0]
    index = {s: {_key(r, i): i for i in range(len(r))} for s, r in by_scale.items()}
    complete, missing = [], []
    for i in range(len(x1)):
        k = _key(x1, i)
        if all(k in index[s] for s in LR_SCALES):
            complete.append(i)
        else:
            missing.append(f"seed {seed} {k[0]} C={k[3]:.0e} N={k[4]:.0f}")
    if not complete:
        raise ValueError(f"no configuration of seed {seed} has runs at every lr scale {LR_SCALES} "
                         f"in {base} and {lr_file}")
    x1 = x1.select(np.isin(np.arange(len(x1)), complete))
    losses = np.array([[by_scale[s].loss[index[s][_key(x1, i)]] for s in LR_SCALES] for i in range(len(x1))])
    return x1, attrs.evolve(x1, loss=losses.min(axis=1)), np.array(LR_SCALES)[losses.argmin(axis=1)], missing


def run(base: str | pathlib.Path, lr_file: str | pathlib.Path, *, seeds=(0,), grid=None,
        n_resamples: int = 200) -> RecipeCheck:
    """Compare the recipe's lr with the best of ``LR_SCALES`` at every configuration of ``seeds``.

    With several seeds, the best-of-lr loss is taken per seed and configuration, then both the
    ``x1`` and the tuned losses are averaged over seeds (as ``scaling fit --average-seeds``).
    """
    from perfmodel.scaling import fit as F
    from perfmodel.scaling import study

    grid = F.SMALL_GRID if grid is None else grid
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(set(seeds)) < len(seeds):  # a seed twice would count twice in the seed average
        raise ValueError(f"seeds must not repeat a seed, got seeds={seeds}")
    parts = [_one_seed(base, lr_file, s) for s in seeds]
    x1, tuned = _concat([p[0] for p in parts]), _concat([p[1] for p in parts])
    winner = np.concatenate([p[2] for p in parts])
    missing = tuple(m for p in parts for m in p[3])
    groups = []
    for label in x1.groups():
        mask = x1.labels == label
        g, t, w = x1.select(mask), tuned.select(mask), winner[mask]
        wins = {c: tuple((s, int(np.sum(w[g.budget_flops == c] == s))) for s in LR_SCALES) for c in g.budgets}
        if len(seeds) > 1:
            g, t = g.average_repeats(), t.average_repeats()
        rows = tuple(BudgetRow(budget_flops=float(c), best_loss_x1=float(g.loss[g.budget_flops == c].min()),
                               best_loss_tuned=float(t.loss[t.budget_flops == c].min()), wins=wins[c])
                     for c in g.budgets)
        fits = [study.fit_group(label, runs, n_resamples=n_resamples, grid=grid) for runs in (g, t)]
        for f in fits:
            if f.heldout is None:
                raise ValueError(f"{label}: held-out check failed: {f.heldout_error}")
        groups.append(GroupCheck(label=label, budgets=rows, fit_x1=fits[0], fit_tuned=fits[1]))
    return RecipeCheck(base=str(base), lr_file=str(lr_file), seeds=seeds, groups=tuple(groups), missing=missing)



def missing_summary(missing) -> str:
    """``missing`` labels (``seed S ARCH C=... N=...``) counted per budget and architecture, with their seeds."""
    by: dict[tuple[str, str], list[str]] = {}
    for m in missing:
        _, seed, arch, budget, _n = m.split()
        by.setdefault((budget, arch), []).append(seed)
    return "; ".join(f"{len(seeds)} {arch} run(s) at {budget} (seeds {', '.join(sorted(set(seeds)))})"
                     for (budget, arch), seeds in sorted(by.items()))

def report_markdown(r: RecipeCheck, command: str) -> str:
    from perfmodel.tables import markdown_table

    lines = ["# Recipe check: learning-rate sensitivity of the IsoFLOP study", "",
             f"Produced by `{command}`; the lr-scaled runs by `JAX_PLATFORMS=cpu perfmodel train sweep --study "
             f"full --arch both --seeds S --lr-scale 0.5|2 --out {r.lr_file}` for each seed S (resumable).", "",
             f"Runs: seed(s) {', '.join(map(str, r.seeds))} of `{r.base}` at the recipe's lr (x1) and "
             f"`{r.lr_file}` at lr x0.5 and x2 (same grid, same seeds). *tuned* = per configuration and seed, "
             "the lowest held-out loss of the three learning rates"
             + ("; losses are then averaged over the seeds (x1 and tuned alike)" if len(r.seeds) > 1 else "")
             + ". Widths won count every seed. Hypothesis and method: `validation/recipe_check.py`.", ""]
    if r.missing:
        lines += [f"Left out (not run at every lr; listed in the JSON): {missing_summary(r.missing)}.", ""]
    for g in r.groups:
        lines += [f"## {g.label}", ""]
        lines.append(markdown_table(
            ["C (FLOPs)", "best loss lr x1", "best loss tuned", "tuning gain", "widths won by lr x0.5 / x1 / x2"],
            [[f"{b.budget_flops:.0e}", f"{b.best_loss_x1:.4f}", f"{b.best_loss_tuned:.4f}",
              f"{b.gain_percent:+.1f}%", " / ".join(str(n) for _, n in b.wins)] for b in g.budgets]))
        lines += ["", "Held-out check (fit on the smaller budgets, predict the largest):", ""]
        lines.append(markdown_table(
            ["runs", "best loss pred vs obs", "runs' loss MAPE", "N_opt pred vs obs"],
            [[name, f"{h.best_loss_predicted:.4g} vs {h.best_loss_observed:.4g} ({h.best_loss_error_percent:+.1f}%)",
              f"{h.runs_loss_mape_percent:.1f}%",
              f"{h.params_opt_predicted_approach3:.3g} vs {h.params_opt_observed:.3g} "
              f"({h.params_opt_error_percent_approach3:+.0f}%)"]
             for name, h in (("lr x1", g.heldout_x1), ("tuned (best of 3 lr)", g.heldout_tuned))]))
        lines += ["", f"Law fitted on all budgets (Approach 3, {g.law_x1.a.n_resamples} bootstrap resamples, 95%):",
                  ""]
        lines.append(markdown_table(
            ["runs", "alpha", "beta", "a (N_opt ~ C^a)", f"D/N at {g.law_x1.budgets_flops[-1]:.0e}"],
            [[name, _iv(law.alpha), _iv(law.beta), _iv(law.a), _iv(law.tokens_per_param[-1], "{:.3g}")]
             for name, law in (("lr x1", g.law_x1), ("tuned (best of 3 lr)", g.law_tuned))]))
        lines.append("")
    return "\n".join(lines)


def _iv(x, fmt="{:.3g}") -> str:
    return f"{fmt.format(x.point)} [{fmt.format(x.low)}, {fmt.format(x.high)}]"


def _law_json(b) -> dict:
    return {k: attrs.asdict(getattr(b, k)) for k in ("E_irr", "A", "B", "alpha", "beta", "a", "b")} | {
        "budgets_flops": list(b.budgets_flops),
        "tokens_per_param": [attrs.asdict(i) for i in b.tokens_per_param],
        "flops_per_param_token": b.fit.law.flops_per_param_token}


def report_json(r: RecipeCheck) -> dict:
    def held(h):
        return attrs.asdict(h)

    return {"base": r.base, "lr_file": r.lr_file, "seeds": list(r.seeds), "lr_scales": list(LR_SCALES),
            "missing": list(r.missing),
            "groups": [{"label": g.label,
                        "budgets": [attrs.asdict(b) | {"gain_percent": b.gain_percent} for b in g.budgets],
                        "heldout_x1": held(g.heldout_x1), "heldout_tuned": held(g.heldout_tuned),
                        "law_x1": _law_json(g.law_x1), "law_tuned": _law_json(g.law_tuned)}
                       for g in r.groups]}


def write_reports(r: RecipeCheck, out_dir: str | pathlib.Path, command: str) -> tuple[pathlib.Path, pathlib.Path]:
    from validation import write_md_json

    return write_md_json(out_dir, "recipe_check", report_markdown(r, command) + "\n", report_json(r))
