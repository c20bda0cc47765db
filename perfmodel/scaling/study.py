"""The project's own answer: fit dense and MoE laws to the sweep, compare, check held-out.

For each architecture group (``dense``, ``moe E=8 k=1``, ...) with at least 3
compute budgets:

* Approach 3 law with bootstrap intervals on every constant, on the exponents
  ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)`` and on N_opt, D_opt,
  D/N and L* at each budget;
* Approach 2 (IsoFLOP parabolas, power laws) with bootstrap intervals;
* **held-out check**: refit both approaches on all budgets but the largest,
  then predict the largest budget: every run's loss (mean absolute % error),
  the best loss (law's ``L*(C_max)`` vs the lowest observed loss), and the
  optimal size (law's ``N_opt(C_max)`` and Approach 2's extrapolated power law
  vs the vertex of the held-out budget's own parabola). With more than
  ``MIN_BUDGETS`` budgets the same check is also made at every earlier budget
  that has at least ``MIN_BUDGETS`` budgets below it (rolling origin: fit on the
  budgets below ``C``, predict ``C``), so one can see whether the extrapolation
  improves as the fitted span grows.

Each MoE group is compared with ``dense`` at every budget: tokens per active
parameter at the optimum (both approaches) and the loss advantage at equal
compute ``L*_dense(C) - L*_moe(C)`` (Approach 3; interval from pairing the two
groups' bootstrap samples).
"""

from __future__ import annotations

import pathlib

import attrs
import numpy as np

from perfmodel import jsonout
from perfmodel.scaling import fit as F
from perfmodel.scaling import laws
from perfmodel.scaling.results import Runs, read_runs

MIN_BUDGETS = 3


@attrs.frozen(kw_only=True)
class HeldOut:
    """Prediction of one budget from a fit on the smaller ones (errors in %, signed = predicted/observed - 1)."""

    budget_flops: float
    fitted_budgets: int  # how many smaller budgets the law was fitted on
    n_runs: int
    runs_loss_mape_percent: float
    best_loss_observed: float
    best_loss_predicted: float
    best_loss_error_percent: float
    # The same best-loss error on the loss above the law's fitted floor E (excess_error_percent): equal to
    # best_loss_error_percent when E ~ 0, far larger when E is most of the loss (Chinchilla's runs).
    floor_loss: float
    best_loss_excess_error_percent: float
    params_opt_observed: float  # vertex of the held-out budget's parabola (best run's N if not convex)
    # "parabola" | "parabola (vertex outside the sampled sizes)" | "best run" | "best run (edge of sampled sizes)"
    params_opt_observed_from: str
    params_opt_predicted_approach3: float
    params_opt_predicted_approach2: float | None
    params_opt_error_percent_approach3: float
    params_opt_error_percent_approach2: float | None
    # The same best-loss comparison at each *fitted* budget, with the same law: (budget, error %). The
    # observed best loss is a minimum over a few noisy runs, so even in-sample it sits below a smooth
    # law's L*(C); these errors show how close to 0 the held-out error can be expected to get.
    insample_best_loss_error_percent: tuple[tuple[float, float], ...] = ()
    # Baseline: a power law in C through the best run of each fitted budget (F.fit_best_loss_frontier),
    # extrapolated to the held-out budget; None for results made before it was added.
    best_loss_predicted_frontier: float | None = None
    best_loss_error_percent_frontier: float | None = None
    # Seed-noise interval of best_loss_error_percent (heldout_error_interval); None where not computed.
    best_loss_error_interval_percent: F.Interval | None = None
    # The fitted law's log constants (e, a, b, alpha, beta) as F.fit_approach3 returns them: resamples start there.
    law_log_constants: tuple[float, ...] = ()


@attrs.frozen(kw_only=True)
class Frontier:
    """Shape of the observed loss frontier (best loss per budget) beside the fitted law's.

    ``exponents[i]`` is the local exponent ``g`` of ``L_best ~ C^g`` between budgets ``i`` and ``i + 1``
    (:func:`F.frontier_exponents`); ``overall`` the exponent of a power law through all of them
    (:func:`F.fit_best_loss_frontier`); ``curvature`` is ``d g / d ln C`` = twice the quadratic coefficient of
    a least-squares parabola of ``ln L_best`` in ``ln C`` (all budgets; < 0: the frontier steepens). Both
    carry seed-noise intervals (:func:`frontier_check`). ``law_exponents`` and ``law_curvature`` are the
    same quantities for the law fitted on all budgets, read off its ``L*(C)`` at the same budgets; for a
    Chinchilla law the curvature is >= 0 (``laws.ComputeOptimalExprs.loss_exponent`` rises with C).
    """

    budgets_flops: tuple[float, ...]
    exponents: tuple[F.Interval, ...]
    overall: F.Interval
    curvature: F.Interval | None  # None with fewer than 3 budgets
    law_exponents: tuple[float, ...]
    law_overall: float
    law_curvature: float | None


@attrs.frozen(kw_only=True)
class GroupFit:
    label: str
    runs: Runs = attrs.field(repr=False)
    approach3: F.Approach3Bootstrap
    approach2: F.Approach2Bootstrap | None
    approach2_error: str | None
    tokens_per_param_a2: tuple[F.Interval, ...]  # per budget of the approach-2 fit
    heldout: HeldOut | None  # the largest budget, fitted on all the others
    heldout_error: str | None
    heldout_earlier: tuple[HeldOut, ...] = ()  # rolling origin: earlier budgets with >= MIN_BUDGETS below them
    frontier: Frontier | None = None  # shape of the observed frontier vs the law's (needs the repeats)


@attrs.frozen(kw_only=True)
class Comparison:
    """An MoE group against dense at the common budgets."""

    label: str
    budgets_flops: tuple[float, ...]
    tokens_per_param_dense: tuple[F.Interval, ...]
    tokens_per_param_moe: tuple[F.Interval, ...]
    params_opt_dense: tuple[F.Interval, ...]
    params_opt_moe: tuple[F.Interval, ...]
    loss_advantage: tuple[F.Interval, ...]  # L*_dense - L*_moe (positive: MoE better)


@attrs.frozen(kw_only=True)
class Study:
    source: str
    loss_key: str
    params_key: str
    average_seeds: bool
    groups: tuple[GroupFit, ...]
    comparisons: tuple[Comparison, ...]
    skipped: tuple[str, ...]  # groups skipped, with the reason
    joint: F.JointFit | None = None  # joint law in E over all fitted groups (>= 2 expert counts)
    joint_bootstrap: F.JointBootstrap | None = None
    joint_error: str | None = None  # why the joint law was not fitted
    joint_bootstrap_error: str | None = None  # why a fitted joint law has no intervals
    uncompared: tuple[str, ...] = ()  # MoE groups not compared with dense, with the reason (no common budget)


def _pct(pred: float, obs: float) -> float:
    return 100.0 * (pred / obs - 1.0)


def excess_error_percent(pred, obs, floor: float):
    """Error of the loss above a law's floor: ``100 ((pred - E) / (obs - E) - 1)``, ``E`` = ``floor``.

    A % error of the whole loss shrinks as the irreducible part ``E`` grows (Chinchilla's E is ~1.8
    nats of ~2.1), so it says little about how well a law extrapolates the part compute can remove;
    this error does not. ``nan`` where ``obs <= E`` (no excess to compare).
    """
    pred, obs = np.asarray(pred, float), np.asarray(obs, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = 100.0 * ((pred - floor) / (obs - floor) - 1.0)
    return np.where(obs > floor, err, np.nan)


def loss_opt_samples(samples: np.ndarray, compute_flops: float, flops_per_param_token: float = 6.0) -> np.ndarray:
    """L*(C) for each row (E_irr, A, B, alpha, beta) of bootstrap samples (vectorised derived closed form)."""
    f = laws._compiled()["loss"]
    return np.asarray(f(compute_flops, flops_per_param_token, *samples.T), float)


def flops_per_param_token(runs: Runs) -> float:
    """``c_f`` of the constraint ``C = c_f N D`` as the runs count compute: median of ``C_run / (N D)``.

    The runs' budgets are training FLOPs of the whole model (attention, embeddings) while ``N`` is the
    active non-embedding parameter count, so ``c_f`` is above 6 (6.75 dense, 6.73 MoE in the arithmetic study).
    """
    return float(np.median(runs.compute_flops / (runs.params * runs.tokens)))


def heldout_check(runs: Runs, *, budget_flops: float | None = None, grid=F.SMALL_GRID) -> HeldOut:
    """Fit on the budgets below ``budget_flops`` (default: the largest), predict that budget.

    Needs >= 3 budgets in all and >= 2 below the held-out one; runs above it are not used.
    """
    budgets = runs.budgets
    if budgets.size < MIN_BUDGETS:
        raise ValueError(f"held-out check needs at least {MIN_BUDGETS} compute budgets, got {budgets.size}")
    top = budgets.max() if budget_flops is None else float(budget_flops)
    if top not in budgets:
        raise ValueError(f"budget_flops={top:.3g} is not one of the runs' budgets "
                         f"({', '.join(f'{b:.3g}' for b in budgets)})")
    if np.sum(budgets < top) < MIN_BUDGETS - 1:
        raise ValueError(f"held-out check of budget_flops={top:.3g} needs at least {MIN_BUDGETS - 1} budgets "
                         f"below it, got {int(np.sum(budgets < top))}")
    train, test = runs.select(runs.budget_flops < top), runs.select(runs.budget_flops == top)
    fit3 = F.fit_approach3(train.params, train.tokens, train.loss, grid=grid,
                           flops_per_param_token=flops_per_param_token(train))
    law = fit3.law
    pred_runs = law.loss(test.params, test.tokens)
    mape = float(np.mean(np.abs(pred_runs / test.loss - 1.0)) * 100)
    best_obs = float(test.loss.min())
    opt = law.optimal(top)
    try:
        iso = F.fit_isoflop(top, test.params, test.tokens, test.loss, test.compute_flops)
        # a vertex beyond the sampled sizes is itself an extrapolation: say so beside the N_opt error
        n_obs, n_from = iso.params_opt, "parabola" if iso.vertex_inside else "parabola (vertex outside the sampled sizes)"
    except ValueError:
        n_obs, n_from = float(test.params[np.argmin(test.loss)]), "best run"
        if n_obs in (test.params.min(), test.params.max()):
            n_from = "best run (edge of sampled sizes)"
    try:
        a2 = F.fit_approach2(train.budget_flops, train.params, train.tokens, train.loss, train.compute_flops)
        n_a2 = float(a2.params_law(top))
    except ValueError:
        n_a2 = None
    insample = tuple((float(c), _pct(float(law.optimal(float(c)).loss), float(best)))
                     for c, best in zip(*F.best_loss_per_budget(train.budget_flops, train.loss)))
    frontier = float(F.fit_best_loss_frontier(train.budget_flops, train.loss)(top))
    return HeldOut(
        law_log_constants=tuple(float(v) for v in fit3.log_constants), insample_best_loss_error_percent=insample,
        best_loss_predicted_frontier=frontier, best_loss_error_percent_frontier=_pct(frontier, best_obs),
        budget_flops=float(top), fitted_budgets=int(train.budgets.size), n_runs=len(test),
        runs_loss_mape_percent=mape, best_loss_observed=best_obs,
        best_loss_predicted=float(opt.loss), best_loss_error_percent=_pct(float(opt.loss), best_obs),
        floor_loss=law.E_irr, best_loss_excess_error_percent=float(excess_error_percent(opt.loss, best_obs, law.E_irr)),
        params_opt_observed=n_obs, params_opt_observed_from=n_from,
        params_opt_predicted_approach3=float(opt.params), params_opt_predicted_approach2=n_a2,
        params_opt_error_percent_approach3=_pct(float(opt.params), n_obs),
        params_opt_error_percent_approach2=None if n_a2 is None else _pct(n_a2, n_obs))


def seed_resamples(repeats: Runs, *, average_seeds: bool, n_resamples: int, seed: int = 0):
    """Yield ``n_resamples`` resamples of ``repeats`` that vary only the seed noise.

    Each draws, within every configuration (arch, E, k, budget, N), as many of its runs as it has, with
    replacement, and averages them per configuration if ``average_seeds``. Configurations with one run
    add no noise.
    """
    cells = repeats.configurations()
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        sample = repeats.take(np.concatenate([c[rng.integers(0, c.size, c.size)] for c in cells]))
        yield sample.average_repeats() if average_seeds else sample


def _frontier_shape(budget_flops, loss) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """``(budgets, exponents, overall, curvature)`` of the frontier of runs (curvature None below 3 budgets)."""
    budgets, g = F.frontier_exponents(budget_flops, loss)
    overall = F.fit_best_loss_frontier(budget_flops, loss).exponent
    if budgets.size < 3:
        return budgets, g, overall, None
    _, best = F.best_loss_per_budget(budget_flops, loss)  # checked by the two calls above
    return budgets, g, overall, float(2.0 * np.polyfit(np.log(budgets), np.log(best), 2)[0])


def frontier_check(runs: Runs, repeats: Runs, law: laws.ChinchillaLaw, *, average_seeds: bool,
                   n_resamples: int = 200, level: float = 0.95, seed: int = 0) -> Frontier:
    """The observed frontier's exponents and curvature (``runs`` as fitted) with seed-noise intervals.

    Intervals: percentiles over :func:`seed_resamples` of ``repeats`` (no refit: the frontier is read
    off the runs). Without ``average_seeds`` each resampled best loss is >= the observed one, so the
    intervals are lopsided: a spread of the seed noise rather than a calibrated interval. The law's values use its ``L*(C)`` at the runs' budgets in place of the best losses.
    """
    budgets, g, overall, curv = _frontier_shape(runs.budget_flops, runs.loss)
    samples = [_frontier_shape(x.budget_flops, x.loss) for x in
               seed_resamples(repeats, average_seeds=average_seeds, n_resamples=n_resamples, seed=seed)]
    samples_g = np.asarray([x[1] for x in samples]).reshape(-1, g.size)
    law_loss = np.asarray(law.optimal(budgets).loss, float)
    if not np.all(np.isfinite(law_loss) & (law_loss > 0)):  # a degenerate fit; the runs themselves were checked
        raise ValueError(f"the law fitted on all budgets (alpha={law.alpha:.4g}, beta={law.beta:.4g}) has no finite "
                         f"L*(C) at budgets {', '.join(f'{c:.3g}' for c in budgets)}: no frontier to compare")
    _, lg, lo, lc = _frontier_shape(budgets, law_loss)
    return Frontier(
        budgets_flops=tuple(float(c) for c in budgets),
        exponents=tuple(F._interval(v, samples_g[:, i], level) for i, v in enumerate(g)),
        overall=F._interval(overall, [x[2] for x in samples], level),
        curvature=None if curv is None else F._interval(curv, [x[3] for x in samples], level),
        law_exponents=tuple(float(v) for v in lg), law_overall=float(lo), law_curvature=lc)


def heldout_error_interval(repeats: Runs, *, average_seeds: bool, point: HeldOut | None = None,
                           n_resamples: int = 200, level: float = 0.95, seed: int = 0,
                           grid=F.SMALL_GRID) -> F.Interval:
    """Seed-noise interval of the held-out best-loss error (%), by resampling every configuration's repeats.

    ``repeats`` holds every run (seeds separate). Each resample (:func:`seed_resamples`) draws, within
    every configuration (arch, E, k, budget, N), as many of its runs as it has, with replacement;
    averages them per configuration if ``average_seeds``; refits the law on the budgets below the held-out one
    (``point.budget_flops``), BFGS started from the optimum of the point fit (which starts from
    ``grid``) and from it with ``e`` at the grid's values (``F.warm_starts``), as ``F.bootstrap_approach3``
    does; and recomputes ``100 (L*(C) / best observed - 1)``. With ``average_seeds`` the best observed is the
    resample's (its seed means move both ways: the held-out budget's noise counts too). With every run it
    is the point's (``point.best_loss_observed``), held fixed: a resample draws a configuration's runs
    from its own runs, so its minimum can only be at or above the observed one, a biased interval; there
    the interval is the noise of the prediction alone. The design stays fixed. Percentile interval
    around ``point`` (default: :func:`heldout_check` of the largest budget on the runs as given, seed
    means if ``average_seeds``). Configurations with one run add no noise.
    """
    point_runs = repeats.average_repeats() if average_seeds else repeats
    point = heldout_check(point_runs, grid=grid) if point is None else point
    top = point.budget_flops
    start = point.law_log_constants
    samples = list(seed_resamples(repeats, average_seeds=average_seeds, n_resamples=n_resamples, seed=seed))
    trains = [x.select(x.budget_flops < top) for x in samples]
    laws_ = F.refit_approach3_each([(tr.params, tr.tokens, tr.loss, flops_per_param_token(tr)) for tr in trains],
                                   starts=F.warm_starts(start))
    errors = []
    for sample, law in zip(samples, laws_):
        if law is None:
            continue
        observed = float(sample.loss[sample.budget_flops == top].min()) if average_seeds else point.best_loss_observed
        errors.append(_pct(float(law.optimal(top).loss), observed))
    return F._interval(point.best_loss_error_percent, errors, level)


def fit_group(label: str, runs: Runs, *, n_resamples: int = 200, grid=F.SMALL_GRID, seed: int = 0,
              repeats: Runs | None = None, average_seeds: bool = False,
              n_resamples_approach2: int | None = None) -> GroupFit:
    """Fit one architecture group; ``runs`` as fitted (seed means if ``average_seeds``).

    ``n_resamples_approach2`` (default ``n_resamples``) sets Approach 2's own count: its refits are parabolas,
    far cheaper than Approach 3's, and only the resamples in which every budget's parabola stays usable are kept.

    With ``repeats`` (the group's runs, seeds separate) the held-out check also gets its seed-noise
    interval (:func:`heldout_error_interval`, ``n_resamples`` resamples) and the group its :class:`Frontier`.
    Both are skipped when every configuration has a single run: resampling it changes nothing, and the
    zero-width intervals would read as a resolved bend or a miss that is "not seed noise".
    """
    budgets = runs.budgets
    if repeats is not None and all(ix.size == 1 for ix in repeats.configurations()):
        repeats = None
    if budgets.size < MIN_BUDGETS:
        raise ValueError(f"{label}: need at least {MIN_BUDGETS} compute budgets to fit and hold one out, got "
                         f"{budgets.size} ({', '.join(f'{b:.3g}' for b in budgets) or 'none'})")
    cf = flops_per_param_token(runs)
    fit3 = F.fit_approach3(runs.params, runs.tokens, runs.loss, grid=grid, name=f"fitted {label}",
                           flops_per_param_token=cf)
    b3 = F.bootstrap_approach3(runs.params, runs.tokens, runs.loss, fit=fit3, n_resamples=n_resamples, seed=seed,
                               budgets_flops=tuple(budgets))
    b2, err2, tpp = None, None, ()
    try:
        b2 = F.bootstrap_approach2(runs.budget_flops, runs.params, runs.tokens, runs.loss, runs.compute_flops,
                                   n_resamples=n_resamples_approach2 or n_resamples, seed=seed)
        tpp = b2.tokens_per_param
    except ValueError as err:
        err2 = str(err)
    try:
        ho, ho_err = heldout_check(runs, grid=grid), None
    except (ValueError, RuntimeError) as err:
        ho, ho_err = None, str(err)
    frontier = None if repeats is None else frontier_check(
        runs, repeats, fit3.law, average_seeds=average_seeds, n_resamples=n_resamples, seed=seed)
    if ho is not None and repeats is not None:
        ho = attrs.evolve(ho, best_loss_error_interval_percent=heldout_error_interval(
            repeats, average_seeds=average_seeds, point=ho, n_resamples=n_resamples, seed=seed, grid=grid))
    earlier = []
    for c in budgets[MIN_BUDGETS:-1]:  # each earlier budget with >= MIN_BUDGETS budgets below it
        try:
            earlier.append(heldout_check(runs, budget_flops=float(c), grid=grid))
        except (ValueError, RuntimeError):
            continue  # the main check's error (if any) is reported; an earlier one is extra
    return GroupFit(label=label, runs=runs, approach3=b3, approach2=b2, approach2_error=err2,
                    tokens_per_param_a2=tpp, heldout=ho, heldout_error=ho_err, heldout_earlier=tuple(earlier),
                    frontier=frontier)


def compare(dense: GroupFit, moe: GroupFit) -> Comparison:
    common = tuple(c for c in dense.approach3.budgets_flops if c in set(moe.approach3.budgets_flops))
    d_idx = [dense.approach3.budgets_flops.index(c) for c in common]
    m_idx = [moe.approach3.budgets_flops.index(c) for c in common]
    adv = []
    ds, ms = dense.approach3.samples, moe.approach3.samples
    k = min(len(ds), len(ms))
    cf_d = dense.approach3.fit.law.flops_per_param_token
    cf_m = moe.approach3.fit.law.flops_per_param_token
    for c, i, j in zip(common, d_idx, m_idx):
        point = dense.approach3.loss_opt[i].point - moe.approach3.loss_opt[j].point
        diff = loss_opt_samples(ds[:k], c, cf_d) - loss_opt_samples(ms[:k], c, cf_m)
        adv.append(F._interval(point, diff, dense.approach3.alpha.level))
    return Comparison(
        label=moe.label, budgets_flops=common,
        tokens_per_param_dense=tuple(dense.approach3.tokens_per_param[i] for i in d_idx),
        tokens_per_param_moe=tuple(moe.approach3.tokens_per_param[j] for j in m_idx),
        params_opt_dense=tuple(dense.approach3.params_opt[i] for i in d_idx),
        params_opt_moe=tuple(moe.approach3.params_opt[j] for j in m_idx), loss_advantage=tuple(adv))


def run_study(path, *, loss: str = "eval", params_key: str = "active_non_embedding", n_resamples: int = 200,
              grid=F.SMALL_GRID, seed: int = 0, average_seeds: bool = False,
              n_resamples_approach2: int | None = None, n_resamples_joint: int | None = None) -> Study:
    """Read ``path``, fit every group with enough budgets, compare MoE groups with dense.

    ``n_resamples_approach2``: see :func:`fit_group`. ``n_resamples_joint`` (default ``n_resamples // 4``, at
    least 2): the joint law's bootstrap.

    ``average_seeds`` replaces repeats of one configuration by their mean
    (:meth:`Runs.average_repeats`). Raises ``ValueError`` if no group has at
    least 3 compute budgets.
    """
    repeats = read_runs(path, loss=loss, params_key=params_key)
    runs = repeats.average_repeats() if average_seeds else repeats
    by_label = repeats.groups()
    fits, skipped = [], []
    for i, (label, group) in enumerate(runs.groups().items()):
        try:
            # seed + i: each group's resamples are drawn independently (with one seed, groups of equal size and
            # row order would draw the same indices, and compare() would pair correlated resamples)
            fits.append(fit_group(label, group, n_resamples=n_resamples, grid=grid, seed=seed + i,
                                  repeats=by_label[label], average_seeds=average_seeds,
                                  n_resamples_approach2=n_resamples_approach2))
        except (ValueError, RuntimeError) as err:  # too few budgets; a fit that lands on alpha or beta <= 0
            skipped.append(f"{label}: {err}" if not str(err).startswith(label) else str(err))
    if not fits:
        raise ValueError(f"{path}: no architecture group can be fitted: " + "; ".join(skipped))
    dense = next((g for g in fits if g.label == "dense"), None)
    comps, uncompared = [], []
    for g in fits:
        if dense is None or g is dense:
            continue
        if set(g.approach3.budgets_flops) & set(dense.approach3.budgets_flops):
            comps.append(compare(dense, g))
        else:
            uncompared.append(f"{g.label}: no compute budget in common with dense (dense: "
                              f"{_budget_list(dense.approach3.budgets_flops)}; {g.label}: "
                              f"{_budget_list(g.approach3.budgets_flops)}), so no comparison at equal compute")
    joint, joint_err, joint_boot, joint_boot_err = None, None, None, None
    cat = {k: np.concatenate([getattr(g.runs, k) for g in fits]) for k in ("params", "tokens", "loss", "n_experts")}
    try:
        joint = F.fit_joint(cat["params"], cat["tokens"], cat["loss"], cat["n_experts"], seed=seed)
    except (ValueError, RuntimeError) as err:
        joint_err = str(err)
    if joint is not None:
        try:
            joint_boot = F.bootstrap_joint(cat["params"], cat["tokens"], cat["loss"], cat["n_experts"], fit=joint,
                                           n_resamples=n_resamples_joint or max(2, n_resamples // 4), seed=seed)
        except (ValueError, RuntimeError) as err:
            joint_boot_err = str(err)
    return Study(source=str(path), loss_key=loss, params_key=params_key, average_seeds=average_seeds,
                 groups=tuple(fits), comparisons=tuple(comps), uncompared=tuple(uncompared),
                 skipped=tuple(skipped), joint=joint, joint_error=joint_err,
                 joint_bootstrap=joint_boot, joint_bootstrap_error=joint_boot_err)


def _budget_list(budgets_flops) -> str:
    return ", ".join(f"{c:.3g}" for c in budgets_flops)


# ---------------------------------------------------------------- reports


def _si(x: float) -> str:
    from perfmodel.hardware import format_si

    return format_si(float(x))


def _iv(x: F.Interval, fmt=None) -> str:
    """``point [low, high]``; an interval from too few resamples to estimate its ends says how many it had."""
    f = fmt or (lambda v: f"{v:.4g}")
    few = f" (only {x.n_resamples} resamples)" if x.too_few_resamples else ""
    return f"{f(x.point)} [{f(x.low)}, {f(x.high)}]{few}"


def report_markdown(s: Study) -> str:
    from perfmodel.tables import markdown_table

    out = [f"# Scaling-law fit of `{pathlib.Path(s.source).name}`", "",
           f"Loss: final {s.loss_key} loss"
           + (" (mean over seeds of each configuration)" if s.average_seeds else " (every run, seeds separate)")
           + f". N = {s.params_key.replace('_', ' ')} parameters. "
           "Approach 3: Huber (delta=1e-3) on log-loss residuals, summed, BFGS from a grid. "
           "Approach 2: IsoFLOP parabolas in ln N. Intervals: bootstrap percentile "
           f"({int(round(100 * s.groups[0].approach3.alpha.level))}%, "
           f"{s.groups[0].approach3.alpha.n_resamples} resamples).", ""]
    out += answer_markdown(s)
    rows, notes = [], []
    for g in s.groups:
        b = g.approach3
        rows.append([g.label, len(g.runs), len(b.budgets_flops), _iv(b.E_irr), _iv(b.alpha), _iv(b.beta),
                     _iv(b.a), _iv(b.b),
                     _iv(g.approach2.a) if g.approach2 else f"- ({g.approach2_error})",
                     _iv(g.approach2.b) if g.approach2 else "-"])
        if g.approach2 is not None and g.approach2.fit.skipped:
            fit2 = g.approach2.fit
            notes.append(f"{g.label}, Approach 2 fitted on {len(fit2.isoflops)} of "
                         f"{len(fit2.isoflops) + len(fit2.skipped)} budgets; skipped: " + "; ".join(fit2.skipped))
        if g.approach2 is not None:
            notes.append(f"{g.label}, Approach 2 intervals: {g.approach2.a.n_resamples} of {g.approach2.n_attempted} "
                         "resamples kept (a resample counts only if every budget's parabola is usable, as in the "
                         "full fit; the intervals are conditional on that and narrower than an unconditional one)")
    out += ["## Fitted laws", "", markdown_table(
        ["group", "runs", "budgets", "E", "alpha", "beta", "a (A3)", "b (A3)", "a (A2)", "b (A2)"], rows), ""]
    inferred = sum(int(g.runs.budget_inferred.sum()) for g in s.groups)
    if inferred:  # IsoFLOP grouping by exact compute: Approach 2 and the held-out check see one-run "budgets"
        notes.insert(0, f"{inferred} of {sum(len(g.runs) for g in s.groups)} runs have no budget field "
                        "(budget_flops or an alias), so each one's budget is its own compute: runs group into "
                        "IsoFLOP curves only where they spent exactly the same FLOPs, and Approach 2 and the "
                        "held-out check compare those; add each run's nominal budget to the results file")
    out += [f"- {n}" for n in notes] + ([""] if notes else [])
    for g in s.groups:
        b = g.approach3
        rows = []
        a2_by_c = {} if g.approach2 is None else {
            x.budget_flops: t for x, t in zip(g.approach2.fit.isoflops, g.tokens_per_param_a2)}
        for i, c in enumerate(b.budgets_flops):
            a2 = a2_by_c.get(c)
            rows.append([f"{c:.3g}", _iv(b.params_opt[i], _si), _iv(b.tokens_opt[i], _si),
                         _iv(b.tokens_per_param[i]), _iv(a2) if a2 else "-", _iv(b.loss_opt[i])])
        out += [f"### {g.label}: compute-optimal allocation", "", markdown_table(
            ["C (FLOPs)", "N_opt (A3)", "D_opt (A3)", "D/N (A3)", "D/N (A2)", "L* (A3)"], rows), ""]
    if s.comparisons:
        out += ["## MoE vs dense at equal compute", "",
                "Loss advantage = L*_dense(C) - L*_moe(C) (positive: MoE reaches lower loss).", ""]
        for cmp in s.comparisons:
            rows = [[f"{c:.3g}", _iv(nd, _si), _iv(nm, _si), _iv(td), _iv(tm), _iv(adv)] for c, nd, nm, td, tm, adv in
                    zip(cmp.budgets_flops, cmp.params_opt_dense, cmp.params_opt_moe, cmp.tokens_per_param_dense,
                        cmp.tokens_per_param_moe, cmp.loss_advantage)]
            out += [f"### {cmp.label}", "", markdown_table(
                ["C (FLOPs)", "N_opt dense", "N_act,opt MoE", "D/N dense", "D/N_act MoE", "loss advantage"],
                rows), ""]
    if s.joint is not None:
        j = s.joint.law
        budgets = sorted({c for g in s.groups for c in g.approach3.budgets_flops})
        rows = [[f"{c:.3g}"] + [f"{_si(j.optimal(c, e).params)} / {_si(j.optimal(c, e).tokens)}"
                                for e in s.joint.experts] for c in budgets]
        out += ["## Joint law in E (Ludziejewski et al. 2025 form, E_start and E_max at published values)", "",
                f"Fitted on {s.joint.n_points} runs at E = {', '.join(map(str, s.joint.experts))} (top-k as run); "
                + (f"bootstrap intervals from {s.joint_bootstrap.constants['c'].n_resamples} resamples:"
                   if s.joint_bootstrap else f"no bootstrap intervals ({s.joint_bootstrap_error}):"
                   if s.joint_bootstrap_error else ""), "",
                markdown_table(["constant", "value"],
                               [[k, _iv(v)] for k, v in s.joint_bootstrap.constants.items()] if s.joint_bootstrap
                               else [[k, f"{getattr(j, k):.4g}"] for k in
                                     ("a", "alpha", "delta", "gamma", "b", "beta", "omega", "zeta", "c")]), "",
                markdown_table(["C (FLOPs)"] + [f"E={e}: N_act / D" for e in s.joint.experts], rows), ""]
    elif s.joint_error:
        out += [f"Joint law in E not fitted: {s.joint_error}.", ""]
    out += frontier_markdown(s)
    out += ["## Held-out check (fit on all budgets but the largest, predict the largest)", "",
            "Rows marked *earlier* repeat the check at a smaller budget from the budgets below it (rolling "
            "origin); the target applies to the largest budget.", ""]
    rows = []
    for g in s.groups:
        h = g.heldout
        if h is None:
            rows.append([g.label, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", g.heldout_error or ""])
            continue
        for e in (*g.heldout_earlier, h):
            rows.append([g.label, f"{e.budget_flops:.3g}", str(e.fitted_budgets), f"{e.runs_loss_mape_percent:.2f}%",
                         f"{e.best_loss_predicted:.4g} vs {e.best_loss_observed:.4g} "
                         f"({e.best_loss_error_percent:+.2f}%{seed_ci_text(e.best_loss_error_interval_percent)})",
                         f"{e.best_loss_excess_error_percent:+.2f}% (E = {e.floor_loss:.3g})",
                         f"{_si(e.params_opt_predicted_approach3)} vs {_si(e.params_opt_observed)} "
                         f"({e.params_opt_error_percent_approach3:+.1f}%)",
                         "-" if e.params_opt_predicted_approach2 is None else
                         f"{_si(e.params_opt_predicted_approach2)} ({e.params_opt_error_percent_approach2:+.1f}%)",
                         e.params_opt_observed_from,
                         ", ".join(f"{c:.0e} {v:+.1f}%" for c, v in e.insample_best_loss_error_percent) or "-",
                         "-" if e.best_loss_predicted_frontier is None else
                         f"{e.best_loss_predicted_frontier:.4g} ({e.best_loss_error_percent_frontier:+.2f}%)",
                         "" if e is h else "earlier"])
    out += [markdown_table(["group", "held-out C", "budgets fitted", "runs' loss MAPE", "best loss pred vs obs",
                            "best loss above the fitted floor E", "N_opt A3 pred vs obs", "N_opt A2 pred", "obs N_opt from",
                            "same law, best loss at the fitted budgets", "baseline: power law through best runs",
                            "note"], rows), "",
            "*Best loss above the fitted floor E* compares (L* - E) with (L_best - E), the part of the loss that "
            "compute removes: with E near 0 it equals the whole-loss error, where E is most of the loss it is far "
            "larger (Chinchilla's own runs, held out the same way: `perfmodel validate chinchilla`). "
            "*Same law, best loss at the fitted budgets* compares the law's L*(C) with the best run at each budget "
            "it was fitted on: the observed best loss is the minimum over a few noisy runs, so even in-sample it "
            "differs from a smooth law by this much. *Baseline* is the simplest extrapolation, L_best(C) = k C^g "
            "through the best run of each fitted budget (no floor, no off-optimum runs); it is reported beside "
            "the target's Approach 3 prediction, not instead of it. *Seed CI* (largest budget): percentile "
            "interval of the best-loss error over resamples of every configuration's seeds, refitted each time "
            "(`heldout_error_interval`); fitting every run, the observed best is held fixed (a resampled minimum "
            "of runs can only rise), fitting seed means it is resampled too. Where the interval excludes the "
            "target, the miss is not seed noise.", ""]
    if s.skipped:
        out += ["Skipped groups: " + "; ".join(s.skipped), ""]
    return "\n".join(out)


def advantage_text(x: F.Interval) -> str:
    """Verdict on a loss-advantage interval (L*_dense - L*_moe): which is lower, or not resolved."""
    level = f"{x.level:.0%}"
    if x.too_few_resamples:
        return f"not resolved: only {x.n_resamples} resamples"
    return (f"MoE lower, resolved at {level}" if x.low > 0 else f"dense lower, resolved at {level}" if x.high < 0
            else f"not resolved at {level}")


def answer_markdown(s: Study) -> list[str]:
    """The answer first: how each MoE group changes the compute-optimal allocation, at the largest common budget.

    Every figure is one of the study's Approach 3 bootstrap intervals (the tables below give every budget);
    the D/N ratio MoE / dense is the ratio of the two point estimates.
    """
    dense = next((g for g in s.groups if g.label == "dense"), None)
    if dense is None or not (s.comparisons or s.uncompared):
        return []
    out = ["## Answer: how MoE changes the compute-optimal allocation", ""]
    out += [f"- Not compared with dense: {u}." for u in s.uncompared]
    for cmp in s.comparisons:
        moe = next(g for g in s.groups if g.label == cmp.label)
        c, adv = cmp.budgets_flops[-1], cmp.loss_advantage[-1]
        nd, nm, td, tm = (cmp.params_opt_dense[-1], cmp.params_opt_moe[-1], cmp.tokens_per_param_dense[-1],
                          cmp.tokens_per_param_moe[-1])
        out += [f"- **{cmp.label} vs dense at {c:.0e} FLOPs** (Approach 3, {adv.level:.0%} bootstrap intervals, "
                f"{dense.approach3.alpha.n_resamples} resamples): "
                f"N_opt {_iv(nm, _si)} active parameters vs {_iv(nd, _si)}; tokens per active parameter "
                f"{_iv(tm, _si)} vs {_iv(td, _si)} ({tm.point / td.point:.2g}x dense's).",
                f"- N_opt grows as C^a with a = {_iv(moe.approach3.a, lambda v: f'{v:.2f}')} ({cmp.label}) vs "
                f"{_iv(dense.approach3.a, lambda v: f'{v:.2f}')} (dense); D_opt as C^b with b = "
                f"{_iv(moe.approach3.b, lambda v: f'{v:.2f}')} vs {_iv(dense.approach3.b, lambda v: f'{v:.2f}')}.",
                f"- Loss at equal compute, L*_dense - L*_moe = {_iv(adv, lambda v: f'{v:.3f}')} nats "
                f"({advantage_text(adv)})."]
    held = [g for g in s.groups if g.heldout is not None]
    if held:
        out.append("- How far to trust L*(C) beyond the fitted budgets: the law fitted below the largest budget "
                   "predicts its best loss at " + ", ".join(f"{g.heldout.best_loss_error_percent:+.1f}% ({g.label})"
                                                              for g in held) + " (held-out check below).")
    return out + [""]


def bend_text(x: F.Interval) -> str:
    """Verdict on a frontier curvature interval: steepens / flattens / no bend resolved."""
    if x.too_few_resamples:
        return f"no bend resolved: only {x.n_resamples} resamples"
    return "steepens" if x.high < 0 else "flattens" if x.low > 0 else "no bend resolved"


def frontier_markdown(s: Study) -> list[str]:
    """The frontier section of :func:`report_markdown` (empty when no group has a :class:`Frontier`)."""
    from perfmodel.tables import markdown_table

    groups = [g for g in s.groups if g.frontier is not None]
    if not groups:
        return []
    seg, curv = [], []
    for g in groups:
        f = g.frontier
        for lo, hi, x, law in zip(f.budgets_flops, f.budgets_flops[1:], f.exponents, f.law_exponents):
            seg.append([g.label, f"{lo:.0e} to {hi:.0e}", _iv(x, lambda v: f"{v:.3f}"), f"{law:.3f}"])
        seg.append([g.label, "all (one power law)", _iv(f.overall, lambda v: f"{v:.3f}"), f"{f.law_overall:.3f}"])
        if f.curvature is not None:
            law_curv = 0.0 if abs(f.law_curvature) < 1e-9 else f.law_curvature  # E = 0: zero up to rounding
            curv.append([g.label, _iv(f.curvature, lambda v: f"{v:+.4f}"), f"{law_curv:+.4f}",
                         bend_text(f.curvature)])
    level, n = groups[0].frontier.exponents[0].level, groups[0].frontier.exponents[0].n_resamples
    out = ["## Loss frontier: its observed shape vs the law's", "",
           "Local exponent g of L_best ~ C^g between consecutive budgets (L_best: the lowest loss at each "
           "budget), observed and read off the law fitted on all budgets (its L*(C)). Curvature: d g / d ln C "
           "of a parabola through ln L_best vs ln C (negative: the frontier steepens). A Chinchilla law's g "
           "lies in [-gamma, 0] and rises with C (gamma = alpha beta / (alpha + beta)), so its curvature is "
           f">= 0 (0 when E = 0). Intervals: {level:.0%} over {n} resamples of every configuration's seeds "
           "(`frontier_check`)."
           + ("" if s.average_seeds else " Fitting every run, a resampled best loss can only be at or above the "
              "observed one (a configuration's resampled runs are drawn from its own runs), so these intervals are "
              "lopsided and do not say how much lower a budget's best could have come out: read them as a "
              "spread, not a calibrated interval."), "",
           markdown_table(["group", "budgets", "observed g", "law g"], seg), ""]
    if curv:
        out += [markdown_table(["group", "observed curvature", "law curvature", "observed frontier"], curv), ""]
    return out


def frontier_text(f: Frontier | None) -> str:
    """``"; observed frontier exponent g [lo, hi] vs the all-budget law's g_law, curvature ..."``; ``""`` if none."""
    if f is None or f.curvature is None:
        return ""
    return (f"; observed frontier exponent {_iv(f.overall, lambda v: f'{v:.3f}')} vs the all-budget law's "
            f"{f.law_overall:.3f}, curvature {_iv(f.curvature, lambda v: f'{v:+.3f}')} "
            f"({bend_text(f.curvature)}; a Chinchilla law's is >= 0)")


def seed_ci_text(x: F.Interval | None) -> str:
    """``"; 95% seed CI +a% to +b%"`` for a held-out error interval, ``""`` for None."""
    few = f" (only {x.n_resamples} resamples)" if x is not None and x.too_few_resamples else ""
    return "" if x is None else f"; {x.level:.0%} seed CI {x.low:+.1f}% to {x.high:+.1f}%{few}"


def _ivd(x: F.Interval) -> dict:
    return {"point": x.point, "low": x.low, "high": x.high, "n_resamples": x.n_resamples}


def report_json(s: Study) -> dict:
    groups = []
    for g in s.groups:
        b = g.approach3
        groups.append({
            "label": g.label, "n_runs": len(g.runs), "budgets_flops": list(b.budgets_flops),
            "approach3": {k: _ivd(getattr(b, k)) for k in ("E_irr", "A", "B", "alpha", "beta", "a", "b")}
            | {"flops_per_param_token": b.fit.law.flops_per_param_token, "objective": b.fit.objective,
               "params_opt": [_ivd(x) for x in b.params_opt], "tokens_opt": [_ivd(x) for x in b.tokens_opt],
               "tokens_per_param": [_ivd(x) for x in b.tokens_per_param],
               "loss_opt": [_ivd(x) for x in b.loss_opt]},
            "approach2": None if g.approach2 is None else {
                "budgets_flops": [x.budget_flops for x in g.approach2.fit.isoflops],
                "n_attempted": g.approach2.n_attempted, "a": _ivd(g.approach2.a), "b": _ivd(g.approach2.b),
                "params_opt": [_ivd(x) for x in g.approach2.params_opt],
                "tokens_opt": [_ivd(x) for x in g.approach2.tokens_opt],
                "tokens_per_param": [_ivd(x) for x in g.tokens_per_param_a2],
                "loss_opt": [_ivd(x) for x in g.approach2.loss_opt]},
            "approach2_error": g.approach2_error,
            "approach2_skipped": [] if g.approach2 is None else list(g.approach2.fit.skipped),
            "heldout": None if g.heldout is None else attrs.asdict(g.heldout), "heldout_error": g.heldout_error,
            "heldout_earlier": [attrs.asdict(e) for e in g.heldout_earlier],
            "frontier": None if g.frontier is None else attrs.asdict(g.frontier)})
    comps = [{"label": c.label, "budgets_flops": list(c.budgets_flops),
              "tokens_per_param_dense": [_ivd(x) for x in c.tokens_per_param_dense],
              "tokens_per_param_moe": [_ivd(x) for x in c.tokens_per_param_moe],
              "params_opt_dense": [_ivd(x) for x in c.params_opt_dense],
              "params_opt_moe": [_ivd(x) for x in c.params_opt_moe],
              "loss_advantage": [_ivd(x) for x in c.loss_advantage]} for c in s.comparisons]
    joint = None if s.joint is None else {
        "experts": list(s.joint.experts), "n_points": s.joint.n_points, "objective": s.joint.objective,
        "constants": attrs.asdict(s.joint.law),
        "intervals": None if s.joint_bootstrap is None else
        {k: _ivd(v) for k, v in s.joint_bootstrap.constants.items()}}
    return {"source": s.source, "loss": s.loss_key, "params": s.params_key, "average_seeds": s.average_seeds,
            "groups": groups,
            "comparisons": comps, "joint": joint, "joint_error": s.joint_error,
            "joint_bootstrap_error": s.joint_bootstrap_error, "skipped": list(s.skipped),
            "uncompared": list(s.uncompared)}


def write_outputs(s: Study, out_dir: pathlib.Path, *, plots: bool = True, stem: str = "scaling_fit") -> list[pathlib.Path]:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(report_markdown(s))
    js.write_text(jsonout.dumps(report_json(s), indent=2) + "\n")
    paths = [md, js]
    if plots:
        from perfmodel.scaling import plots as P

        paths += P.plot_study(s, out_dir, suffix=stem.removeprefix("scaling_fit"))
    return paths

