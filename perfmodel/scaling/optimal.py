"""Compute-optimal allocation tables for ``perfmodel scaling optimal`` (one place per law choice).

Total parameters of an MoE are reported with the fine-grained convention
``N_total = N_act (1 + 2 E) / 3`` (attention ``4 d^2`` + FFN ``8 d^2`` per
block, top-1 routing over E experts of the dense FFN's size); the laws
themselves only speak of active parameters (joint) or total (fine-grained).
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from perfmodel.scaling import laws, moe_laws

ROW_HEADERS = ["law", "E", "G", "N_act (opt)", "N_total", "D (opt)", "D/N_act", "L*"]
DEFAULT_EXPERTS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_EXPANSION = 64.0
DEFAULT_GRANULARITY = 8.0  # the fine-grained law's G when none is given

SOURCES = {
    "chinchilla": "Hoffmann et al. 2022 (arXiv 2203.15556) Approach 3, unrounded constants; C = 6 N D",
    "epoch": "Besiroglu et al. 2024 (Epoch AI) refit of Chinchilla's points; C = 6 N D",
    "joint-moe": "Ludziejewski et al. 2025 (arXiv 2502.05172) joint law in E; C = 6 N_act D, router FLOPs "
                 "neglected",
    "fine-grained": "Krajewski et al. 2024 (arXiv 2402.07871), N = total non-embedding; C = 6 N_act D, "
                    "router FLOPs neglected",
    "fitted": "Approach 3 fit of the given results file (perfmodel scaling fit), per architecture group; "
              "c_f = median C / (N D) of the group's runs",
}


#: the span of Chinchilla's training runs, which the chinchilla and epoch laws are fitted to: "over 400
#: language models ranging from 70 million to over 16 billion parameters on 5 to 500 billion tokens"
#: (Hoffmann et al. 2022, arXiv 2203.15556, abstract)
CHINCHILLA_RUNS_PARAMS = (70e6, 16e9)
CHINCHILLA_RUNS_TOKENS = (5e9, 500e9)
#: the largest runs the joint-moe law is fitted to: "over 280 experiments with up to 2.7B active parameters
#: and up to 5B total parameters" (Ludziejewski et al. 2025, arXiv 2502.05172, abstract)
JOINT_MOE_RUNS_MAX_PARAMS_ACTIVE = 2.7e9
JOINT_MOE_RUNS_MAX_PARAMS_TOTAL = 5e9


@attrs.frozen(kw_only=True)
class OptimalRow:
    law: str
    n_experts: float
    granularity: float | None
    compute_flops: float
    params_active: float
    params_total: float
    tokens: float
    loss: float
    # law "fitted": the smallest and largest compute budget of the group's runs, the span the fit saw
    fitted_budgets_flops: tuple[float, float] | None = None

    @property
    def tokens_per_active_param(self) -> float:
        return self.tokens / self.params_active

    def as_dict(self) -> dict:
        return attrs.asdict(self) | {"tokens_per_active_param": self.tokens_per_active_param}

    def cells(self) -> list[str]:
        from perfmodel.hardware import format_si

        return [self.law, f"{self.n_experts:g}", "-" if self.granularity is None else f"{self.granularity:g}",
                format_si(self.params_active), format_si(self.params_total), format_si(self.tokens),
                f"{self.tokens_per_active_param:.3g}", f"{self.loss:.4f}"]


def _row(name: str, o: laws.ComputeOptimal, *, experts: float, active: float, total: float,
         granularity: float | None = None, fitted_budgets_flops: tuple[float, float] | None = None) -> OptimalRow:
    return OptimalRow(law=name, n_experts=float(experts), granularity=granularity,
                      compute_flops=float(o.compute_flops), params_active=float(active), params_total=float(total),
                      tokens=float(o.tokens), loss=float(o.loss), fitted_budgets_flops=fitted_budgets_flops)


def _describes_a_model(r: OptimalRow) -> bool:
    """At least one parameter and one token, and every number a finite float."""
    return (all(math.isfinite(v) for v in (r.params_active, r.params_total, r.tokens, r.loss))
            and r.params_active >= 1 and r.tokens >= 1)


def optimal_rows(compute_flops: float, *, law: str = "chinchilla", experts: float | None = None,
                 granularity: float | None = None, results=None, skipped: list[str] | None = None) -> list[OptimalRow]:
    """Rows of the compute-optimal allocation at ``compute_flops`` for the named law.

    ``skipped``: with ``law="fitted"``, receives the groups left out and why (:func:`fitted_rows`).

    ``granularity``: the fine-grained law's G (default :data:`DEFAULT_GRANULARITY`)."""
    if experts is not None and not (np.isfinite(experts) and experts >= 1):
        raise ValueError(f"--experts must be a finite number >= 1 (experts E, or the fine-grained expansion rate), "
                         f"got --experts={experts!r}")
    if law == "joint-moe" and experts is not None and not float(experts).is_integer():
        raise ValueError(f"--experts must be a whole number of experts for --law joint-moe, got --experts={experts:g}")
    kw = dict(law=law, granularity=granularity, results=results)
    rows = _optimal_rows(compute_flops, experts=experts, skipped=skipped, **kw)
    for r in rows:  # a law evaluated where it predicts less than one parameter or token describes no model
        if _describes_a_model(r):
            continue
        small = r.params_active < 1 or r.tokens < 1  # else a number is beyond the float range
        gives = (f"at E={r.n_experts:g} it gives N_act={r.params_active:.3g} parameters (N_total="
                 f"{r.params_total:.3g}), D={r.tokens:.3g} tokens and L*={r.loss:.3g}: "
                 + ("less than one parameter or token" if small else "beyond the float range"))
        if (law in ("joint-moe", "fine-grained") and experts not in (None, 1) and r.n_experts == float(experts)
                and all(map(_describes_a_model, _optimal_rows(compute_flops, experts=1, skipped=None, **kw)))):
            # the budget is fine for E=1: the expert count (or expansion rate) alone breaks the allocation
            raise ValueError(f"--experts is too large for --law {law} at --compute {compute_flops:g}, got "
                             f"--experts={experts:g}: {gives}")
        raise ValueError(f"--compute {compute_flops:g} is too {'small' if small else 'large'} for --law {law}: "
                         f"{gives}")
    return rows


def _optimal_rows(compute_flops, *, law, experts, granularity, results, skipped) -> list[OptimalRow]:
    ratio = moe_laws.FineGrainedMoELaw.total_per_active
    if law in ("chinchilla", "epoch"):
        if experts not in (None, 1, 1.0):
            raise ValueError(f"--law {law} is a dense law; --experts applies to joint-moe, fine-grained, fitted")
        lw = laws.chinchilla_hoffmann() if law == "chinchilla" else laws.chinchilla_epoch()
        o = lw.optimal(compute_flops)
        return [_row(law, o, experts=1, active=float(o.params), total=float(o.params))]
    if law == "joint-moe":
        joint = moe_laws.JointMoELaw()
        es = DEFAULT_EXPERTS if experts is None else tuple(sorted({1.0, float(experts)}))
        rows = []
        for e in es:
            o = joint.optimal(compute_flops, e)
            rows.append(_row(law, o, experts=e, active=float(o.params), total=float(o.params) * ratio(e)))
        return rows
    if law == "fine-grained":
        fgl = moe_laws.FineGrainedMoELaw()
        e = DEFAULT_EXPANSION if experts is None else float(experts)
        granularity = DEFAULT_GRANULARITY if granularity is None else granularity
        moe_laws.check_granularity(granularity, name="--granularity")
        o = fgl.optimal(compute_flops, granularity=granularity, expansion=e)
        return [_row(law, o, experts=e, active=float(o.params) / ratio(e), total=float(o.params),
                     granularity=granularity)]
    if law == "fitted":
        if results is None:
            raise ValueError("--law fitted needs --results FILE (a training results JSONL)")
        return fitted_rows(compute_flops, results, experts=experts, skipped=skipped)
    raise ValueError(f"unknown law {law!r}; choose from {sorted(SOURCES)}")


def fitted_rows(compute_flops: float, results, *, experts: float | None = None,
                skipped: list[str] | None = None) -> list[OptimalRow]:
    """Approach-3 point fits of each group in ``results``, evaluated at ``compute_flops``.

    A group that cannot be fitted (fewer than ``MIN_BUDGETS`` budgets, or a failed fit) is left out, as
    ``perfmodel scaling fit`` leaves it out, and its reason appended to ``skipped`` when a list is given;
    no fittable group at all is an error listing every reason."""
    from perfmodel.scaling import fit as F
    from perfmodel.scaling.results import read_runs

    from perfmodel.scaling.study import MIN_BUDGETS, flops_per_param_token

    runs = read_runs(results)
    groups = runs.groups()
    found = sorted({float(g.n_experts[0]) for g in groups.values()})
    if experts is not None and float(experts) not in found:
        raise ValueError(f"{results}: no group with experts={experts:g}; the file has "
                         + ", ".join(f"E={e:g}" for e in found))
    rows, reasons = [], []
    for label, g in groups.items():
        e = float(g.n_experts[0])
        if experts is not None and e not in (1.0, float(experts)):
            continue
        if g.budgets.size < MIN_BUDGETS:
            reasons.append(f"{label} has {g.budgets.size} compute budget(s); a fitted law needs at least "
                           f"{MIN_BUDGETS} (as `perfmodel scaling fit` does)")
            continue
        try:
            lw = F.fit_approach3(g.params, g.tokens, g.loss, flops_per_param_token=flops_per_param_token(g),
                                 name=f"fitted {label}").law
        except RuntimeError as err:  # no finite start, or exponents <= 0: a message, not a traceback
            reasons.append(f"{label}: {err}")
            continue
        o = lw.optimal(compute_flops)
        total_ratio = float(np.median(g.params_total / g.params))
        rows.append(_row(f"fitted {label}", o, experts=e, active=float(o.params),
                         total=float(o.params) * total_ratio,
                         fitted_budgets_flops=(float(g.budgets.min()), float(g.budgets.max()))))
    if not rows or experts is not None and float(experts) not in {r.n_experts for r in rows}:
        # nothing to show, or not the group asked for by --experts: an error, not a table of the others
        raise ValueError(f"{results}: no group can be fitted" + ("" if experts is None else f" at E={experts:g}")
                         + ": " + "; ".join(reasons))
    if skipped is not None:
        skipped.extend(f"{results}: {r}" for r in reasons)
    return rows


def notes(law: str, rows: list[OptimalRow] = ()) -> list[str]:
    """Source and conventions of ``law``, and a warning when ``rows`` leave the span of the runs the law was
    fitted to: Chinchilla's (:data:`CHINCHILLA_RUNS_PARAMS`, :data:`CHINCHILLA_RUNS_TOKENS`) for the dense
    laws, the joint law's largest (:data:`JOINT_MOE_RUNS_MAX_PARAMS_ACTIVE`, ``..._TOTAL``), and for a fitted
    law the compute budgets of its group's runs (:attr:`OptimalRow.fitted_budgets_flops`)."""
    from perfmodel.hardware import format_si

    out = [f"source: {SOURCES[law]}"]
    (n_lo, n_hi), (d_lo, d_hi) = CHINCHILLA_RUNS_PARAMS, CHINCHILLA_RUNS_TOKENS
    if law in ("chinchilla", "epoch") and any(not (n_lo <= r.params_active <= n_hi and d_lo <= r.tokens <= d_hi)
                                              for r in rows):
        out.append(f"extrapolated: the law is fitted to Chinchilla's runs of {format_si(n_lo)}..{format_si(n_hi)} "
                   f"parameters on {format_si(d_lo)}..{format_si(d_hi)} tokens (Hoffmann et al. 2022, abstract); "
                   "this allocation is outside them")
    n_act_hi, n_tot_hi = JOINT_MOE_RUNS_MAX_PARAMS_ACTIVE, JOINT_MOE_RUNS_MAX_PARAMS_TOTAL
    beyond = [r for r in rows if r.params_active > n_act_hi or r.params_total > n_tot_hi]
    if law == "joint-moe" and beyond:
        out.append(f"extrapolated: the law is fitted to runs of up to {format_si(n_act_hi)} active and "
                   f"{format_si(n_tot_hi)} total parameters (Ludziejewski et al. 2025, abstract); the rows at E = "
                   + ", ".join(f"{r.n_experts:g}" for r in beyond) + " are beyond them")
    for r in rows:
        if r.fitted_budgets_flops is not None and not (
                r.fitted_budgets_flops[0] <= r.compute_flops <= r.fitted_budgets_flops[1]):
            out.append(f"extrapolated: {r.law} is fitted to runs at budgets of {r.fitted_budgets_flops[0]:.3g}.."
                       f"{r.fitted_budgets_flops[1]:.3g} FLOPs (the results file); C = {r.compute_flops:.3g} is "
                       "outside them")
    if law in ("joint-moe", "fine-grained"):
        out.append("N_total assumes N_total / N_act = (1 + 2E) / 3 (attention 4d^2 + FFN 8d^2 per block, "
                   "E experts of the dense FFN size, top-1).")
    if law == "fitted":
        out.append("N_total = N_act x the group's median total/active ratio.")
    return out
