"""Fitting scaling laws to runs: Approach 3, Approach 2, bootstrap intervals.

**Approach 3** (Hoffmann et al. 2022; protocol as refit by Besiroglu et al.
2024, Epoch AI) fits ``L = E_irr + A / N^alpha + B / D^beta`` in the
log-sum-exp form with ``A = exp(a_), B = exp(b_), E_irr = exp(e)``::

    log L_hat = LSE(a_ - alpha log N, b_ - beta log D, e)
    objective = sum_i Huber_delta(log L_hat_i - log L_i),  delta = 1e-3

minimised with BFGS (analytic gradient; ``method="L-BFGS-B"`` for Epoch's
exact choice) from every point of a grid of initialisations; the best end
point wins. Both reach the same optimum on Chinchilla's points (objective
equal to 1e-15); BFGS is the default because scipy's L-BFGS-B calls
multi-threaded BLAS on 5-vectors and slows down ~15x on a loaded machine. The Huber loss is **summed**, not
averaged: a mean shrinks the gradient by 1/n and L-BFGS stops early on its
gradient tolerance.

**Approach 2**: for each compute budget, fit a parabola of loss against
``log N``; its vertex is that budget's N_opt (and ``D_opt = C / (c N_opt)``
with ``c`` the runs' own ``C / (N D)``); then least-squares power laws
``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` in log space.

**Bootstrap**: resample runs with replacement (within each budget for
Approach 2), refit, and report percentile intervals for every constant and
for derived quantities (a, b, N_opt, D_opt, D/N, L* at given budgets).

The refits of a bootstrap and the starts of a grid fit are independent: they run on
:mod:`perfmodel.scaling.parallel`'s worker processes, with the same results as one process.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs
import numpy as np
from scipy import optimize

from perfmodel.scaling import parallel
from perfmodel.scaling.laws import ChinchillaLaw

HUBER_DELTA = 1e-3


@attrs.frozen(kw_only=True)
class InitGrid:
    """Grid of optimiser starting points for (e, a_, b_, alpha, beta) in the log-sum-exp form."""

    e: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    alpha: tuple[float, ...]
    beta: tuple[float, ...]

    def points(self) -> np.ndarray:
        """``[n_points, 5]`` array of (e, a_, b_, alpha, beta)."""
        return np.array(list(itertools.product(self.e, self.a, self.b, self.alpha, self.beta)), float)

    @property
    def size(self) -> int:
        return len(self.e) * len(self.a) * len(self.b) * len(self.alpha) * len(self.beta)


FULL_GRID = InitGrid(e=(-1.0, -0.5, 0.0, 0.5, 1.0), a=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
                     b=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0), alpha=(0.0, 0.5, 1.0, 1.5, 2.0),
                     beta=(0.0, 0.5, 1.0, 1.5, 2.0))
"""Hoffmann et al. / Epoch's grid: 4500 starting points."""

SMALL_GRID = InitGrid(e=(-1.0, 0.5), a=(0.0, 5.0, 10.0), b=(0.0, 5.0, 10.0), alpha=(0.0, 0.5),
                      beta=(0.0, 0.5))
"""A 72-point subset of :data:`FULL_GRID` (fast default; the full grid is a CLI option)."""

TINY_GRID = InitGrid(e=(0.5,), a=(0.0, 5.0), b=(0.0, 5.0), alpha=(0.5,), beta=(0.5,))
"""4 starting points: for tests and quick looks (converges on the synthetic and Chinchilla data)."""

GRIDS = {"tiny": TINY_GRID, "small": SMALL_GRID, "full": FULL_GRID}


def warm_starts(optimum, *, floor_index: int = 0, floor_starts=SMALL_GRID.e) -> np.ndarray:
    """Starting points for refitting resampled runs: ``optimum``, and copies of it with the log of the
    irreducible loss (component ``floor_index``) set to each of ``floor_starts``; shape ``[1 + k, n]``.

    Why not the optimum alone: where the full-data fit drives E to 0 (``e = ln E -> -inf``; the arithmetic
    study's fits stop at ``e`` = -34 to -47), the objective is flat in ``e`` (its gradient is about ``E / L``),
    so a refit started there never moves ``e``, and every resample reports the same E: a degenerate
    interval, with alpha, beta and all that derives from them conditioned on E = 0. Starting also at the
    grid's ``e`` values lets a resample find an optimum with E > 0. On the arithmetic study's dense seed
    means this gives the same refits as starting every resample from all 72 points of :data:`SMALL_GRID`
    (``tests/test_scaling_fit.py``) with 3 starts instead of 72; E's 95% interval becomes [0, 0.33]
    instead of one point.
    """
    x = np.asarray(optimum, float).ravel()
    rows = [x]
    for v in floor_starts:
        y = x.copy()
        y[floor_index] = float(v)
        rows.append(y)
    return np.array(rows)


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss: ``r^2/2`` for ``|r| <= delta``, else ``delta (|r| - delta/2)``."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def approach3_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray,
                        delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Summed Huber loss of log-loss residuals and its gradient w.r.t. (e, a_, b_, alpha, beta)."""
    e, a, b, al, be = theta
    z = np.stack([a - al * log_n, b - be * log_d, np.full_like(log_n, e)])  # [3, n]
    zmax = z.max(axis=0)
    w = np.exp(z - zmax)
    s = w.sum(axis=0)
    pred = zmax + np.log(s)
    w /= s  # softmax weights = d pred / d z
    r = pred - log_l
    g_r = np.clip(r, -delta, delta)  # Huber derivative
    grad = np.array([
        np.dot(g_r, w[2]), np.dot(g_r, w[0]), np.dot(g_r, w[1]),
        -np.dot(g_r, w[0] * log_n), -np.dot(g_r, w[1] * log_d)])
    return float(huber(r, delta).sum()), grad


@attrs.frozen(kw_only=True)
class Approach3Fit:
    """Best Approach-3 fit: the law, the objective, and how the search went."""

    law: ChinchillaLaw
    log_constants: tuple[float, float, float, float, float]  # (e, a_, b_, alpha, beta)
    objective: float
    n_points: int
    n_inits: int
    n_converged: int
    method: str


def _check_runs(params, tokens, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, l = (np.asarray(x, float).ravel() for x in (params, tokens, loss))
    if not (n.size == d.size == l.size):
        raise ValueError(f"params, tokens, loss must have equal lengths, got {n.size}, {d.size}, {l.size}")
    for name, x in (("params", n), ("tokens", d), ("loss", l)):
        bad = ~np.isfinite(x) | (x <= 0)
        if bad.any():
            raise ValueError(f"{name} must be finite and positive; {int(bad.sum())} bad value(s), "
                             f"first at index {int(np.argmax(bad))}: {x[bad][0]!r}")
    if n.size < 5:
        raise ValueError(f"Approach 3 fits 5 constants; need at least 5 runs, got {n.size}")
    return n, d, l


PARALLEL_MIN_STARTS = 16
"""A fit with this many starting points or more spreads them over :mod:`~perfmodel.scaling.parallel`'s
workers (SMALL_GRID's 72, FULL_GRID's 4500); the bootstrap's few warm starts run in one process,
the resamples being spread instead."""


def _minimize3(task) -> tuple[np.ndarray, float, bool]:
    """One BFGS run of :func:`approach3_objective` (a worker task): ``(x, objective, converged)``."""
    x0, log_n, log_d, log_l, delta, method, options = task
    res = optimize.minimize(approach3_objective, x0, args=(log_n, log_d, log_l, delta), jac=True,
                            method=method, options=options)
    # BFGS reports "precision loss" at a flat optimum of the Huber sum; count a small gradient as converged.
    return res.x, float(res.fun), bool(res.success or np.max(np.abs(res.jac)) < 1e-8)


def fit_approach3(params, tokens, loss, *, grid: InitGrid | np.ndarray = SMALL_GRID,
                  delta: float = HUBER_DELTA, flops_per_param_token: float = 6.0,
                  name: str = "fitted", method: str = "BFGS") -> Approach3Fit:
    """Fit ``L = E_irr + A/N^alpha + B/D^beta`` by Huber loss and ``method`` (BFGS by default) from every grid point.

    ``params`` = N (the parameters that cost FLOPs), ``tokens`` = D, ``loss`` =
    final loss per run. ``grid`` is an :class:`InitGrid` or an ``[n, 5]`` array
    of starting points (e, a_, b_, alpha, beta). Starting points that diverge
    are skipped; raises if none converges to a finite objective. ``method`` is
    ``"BFGS"`` or ``"L-BFGS-B"`` (scipy.optimize.minimize).
    """
    if method not in ("BFGS", "L-BFGS-B"):
        raise ValueError(f"method must be 'BFGS' or 'L-BFGS-B', got {method=!r}")
    options = dict(maxiter=1000, gtol=1e-10)
    if method == "L-BFGS-B":
        options["ftol"] = 1e-15
    n, d, l = _check_runs(params, tokens, loss)
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(l)
    starts = grid.points() if isinstance(grid, InitGrid) else np.atleast_2d(np.asarray(grid, float))
    best, best_val, converged = None, math.inf, 0
    ends = parallel.pmap(_minimize3, [(x0, log_n, log_d, log_l, delta, method, options) for x0 in starts],
                         min_items=PARALLEL_MIN_STARTS)
    for x, fun, ok in ends:  # in the starts' order, so the same start wins whatever the number of jobs
        # exp(e, a_, b_) must be representable: a start that ran off to |a_| > 700 is a divergence.
        if not np.all(np.isfinite(x)) or not math.isfinite(fun) or np.max(np.abs(x[:3])) > 700:
            continue
        converged += ok
        if fun < best_val:
            best, best_val = x, fun
    if best is None:
        raise RuntimeError("Approach 3: no starting point reached a finite objective")
    e, a, b, al, be = (float(v) for v in best)
    if al <= 0 or be <= 0:
        raise RuntimeError(f"Approach 3 converged to non-positive exponents alpha={al:.4g}, beta={be:.4g}: "
                           "the runs do not constrain both N and D (vary N and D independently)")
    law = law_from_log_constants((e, a, b, al, be), flops_per_param_token=flops_per_param_token, name=name)
    return Approach3Fit(law=law, log_constants=(e, a, b, al, be), objective=best_val, n_points=n.size,
                        n_inits=len(starts), n_converged=converged, method=method)


def law_from_log_constants(log_constants, *, flops_per_param_token: float = 6.0,
                           name: str = "chinchilla") -> ChinchillaLaw:
    """The law of Approach 3's parameters ``(e, a_, b_, alpha, beta)``: ``E, A, B = exp(e, a_, b_)``."""
    e, a, b, al, be = (float(v) for v in log_constants)
    return ChinchillaLaw(name=name, E_irr=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=al, beta=be,
                         flops_per_param_token=flops_per_param_token)


# ---------------------------------------------------------------- Approach 2


@attrs.frozen(kw_only=True)
class IsoFlopFit:
    """One budget's parabola ``L = p0 + p1 x + p2 x^2`` with ``x = ln N``, and its vertex."""

    budget_flops: float
    coeffs: tuple[float, float, float]  # (p0, p1, p2)
    params_opt: float
    tokens_opt: float
    loss_opt: float
    n_runs: int
    vertex_inside: bool  # vertex within the sampled N range (else an extrapolation)


@attrs.frozen(kw_only=True)
class PowerLaw:
    """``y = coef * C^exponent`` fitted in log space."""

    coef: float
    exponent: float

    def __call__(self, compute_flops):
        return self.coef * np.asarray(compute_flops, float) ** self.exponent


@attrs.frozen(kw_only=True)
class Approach2Fit:
    isoflops: tuple[IsoFlopFit, ...]
    params_law: PowerLaw  # N_opt(C); exponent a
    tokens_law: PowerLaw  # D_opt(C); exponent b
    loss_law: PowerLaw | None  # L*(C) as a pure power law (None if not positive)
    skipped: tuple[str, ...] = ()  # budgets without a usable parabola, with the reason


def fit_isoflop(budget_flops: float, params, tokens, loss, compute_flops=None) -> IsoFlopFit:
    """Parabola in ln N through one budget's runs; ``D_opt = C / (c N_opt)``, ``c`` = median C/(N D)."""
    n, d, l = (np.asarray(x, float) for x in (params, tokens, loss))
    if n.size < 3:
        raise ValueError(f"budget {budget_flops:.3g} FLOPs has {n.size} run(s); a parabola needs at least 3")
    x = np.log(n)
    if np.unique(x).size < 3:
        raise ValueError(f"budget {budget_flops:.3g} FLOPs: a parabola needs at least 3 distinct N, "
                         f"got {np.unique(x).size}")
    # Fit around the mean of ln N (well conditioned), then expand back to powers of x.
    x0 = float(x.mean())
    q2, q1, q0 = np.polyfit(x - x0, l, 2)
    p2, p1, p0 = q2, q1 - 2 * q2 * x0, q0 - q1 * x0 + q2 * x0 * x0
    if not p2 > 0:
        raise ValueError(f"budget {budget_flops:.3g} FLOPs: loss vs ln N is not convex (curvature {p2:.3g}); "
                         "the runs do not bracket a minimum")
    xv = -p1 / (2 * p2)
    span = float(np.ptp(x))
    if not (x.min() - 2 * span <= xv <= x.max() + 2 * span):
        raise ValueError(f"budget {budget_flops:.3g} FLOPs: parabola vertex at ln N = {xv:.3g}, far outside the "
                         f"sampled ln N range [{x.min():.3g}, {x.max():.3g}]; the runs do not bracket a minimum")
    c = budget_flops if compute_flops is None else np.asarray(compute_flops, float)
    c_per = float(np.median(np.broadcast_to(c, n.shape) / (n * d)))
    n_opt = math.exp(xv)
    return IsoFlopFit(budget_flops=float(budget_flops), coeffs=(float(p0), float(p1), float(p2)),
                      params_opt=n_opt, tokens_opt=float(budget_flops) / (c_per * n_opt),
                      loss_opt=float(p0 - p1 * p1 / (4 * p2)), n_runs=int(n.size),
                      vertex_inside=bool(x.min() <= xv <= x.max()))


def _power_law(c, y) -> PowerLaw:
    slope, intercept = np.polyfit(np.log(c), np.log(y), 1)
    return PowerLaw(coef=float(math.exp(intercept)), exponent=float(slope))


def fit_best_loss_frontier(budget_flops, loss) -> PowerLaw:
    """``L_best(C) = coef * C^exponent`` through the lowest loss at each distinct budget (least squares in log-log).

    The simplest extrapolation of the loss frontier, a baseline beside Approach 3's ``L*(C)``: it uses only the
    best run per budget, so the runs far from the optimum (which Approach 3 also fits) cannot bend it. Assumptions:
    no irreducible floor (``E`` = 0: the loss stays far above it over the budgets; the arithmetic fits give
    E ~ 0); the best of a few noisy runs is a minimum, biased low by about their spread. Needs >= 2 budgets and
    positive, finite losses.
    """
    return _power_law(*_frontier_points(budget_flops, loss))


def best_loss_per_budget(budget_flops, loss) -> tuple[np.ndarray, np.ndarray]:
    """``(budgets, best)``: the distinct budgets, ascending, and the lowest loss of the runs at each."""
    c, l = np.asarray(budget_flops, float), np.asarray(loss, float)
    budgets = np.unique(c)
    return budgets, np.array([l[c == b].min() for b in budgets])


def _frontier_points(budget_flops, loss) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_loss_per_budget` after checking the input a frontier needs (>= 2 budgets, positive, finite)."""
    c, l = np.asarray(budget_flops, float), np.asarray(loss, float)
    if c.shape != l.shape or c.ndim != 1:
        raise ValueError(f"budget_flops and loss must be 1-d of one length, got shapes {c.shape} and {l.shape}")
    if not (np.all(np.isfinite(l)) and np.all(l > 0) and np.all(np.isfinite(c)) and np.all(c > 0)):
        raise ValueError("budget_flops and loss must be positive and finite")
    budgets, best = best_loss_per_budget(c, l)
    if budgets.size < 2:
        raise ValueError(f"a loss frontier needs at least 2 budgets, got {budgets.size}")
    return budgets, best


def frontier_exponents(budget_flops, loss) -> tuple[np.ndarray, np.ndarray]:
    """``(budgets, g)``: the local exponent of the observed loss frontier between consecutive budgets.

    ``g_i = ln(L_best(C_{i+1}) / L_best(C_i)) / ln(C_{i+1} / C_i)`` with ``L_best`` the lowest loss at
    each distinct budget (:func:`best_loss_per_budget`), so ``L_best ~ C^g`` on each segment; ``g`` has
    one entry fewer than ``budgets``. A Chinchilla law's frontier has ``g`` between ``-gamma`` and 0,
    rising with C (``laws.ComputeOptimalExprs.loss_exponent``); observed ``g`` that falls with C
    (a frontier that steepens) is a shape such a law cannot extrapolate. Needs >= 2 budgets and
    positive, finite losses and budgets.
    """
    budgets, best = _frontier_points(budget_flops, loss)
    return budgets, np.diff(np.log(best)) / np.diff(np.log(budgets))


def fit_approach2(budget_flops, params, tokens, loss, compute_flops=None, *, strict: bool = False) -> Approach2Fit:
    """IsoFLOP parabolas per distinct ``budget_flops`` value, then power laws in C.

    ``budget_flops`` labels each run with its nominal budget (runs sharing a
    label form one IsoFLOP curve); ``compute_flops`` is each run's actual
    compute (defaults to the label). A budget whose runs do not give a convex
    parabola (the sizes do not bracket a minimum) is skipped and named in
    ``skipped``; with ``strict`` it is an error. Needs at least 2 usable
    budgets for the power laws.
    """
    budget = np.asarray(budget_flops, float)
    n, d, l = (np.asarray(x, float) for x in (params, tokens, loss))
    cf = budget if compute_flops is None else np.asarray(compute_flops, float)
    levels = np.unique(budget)
    if levels.size < 2:
        raise ValueError(f"Approach 2 needs at least 2 compute budgets, got {levels.size}")
    fits, skipped = [], []
    for c in levels:
        m = budget == c
        try:
            fits.append(fit_isoflop(c, n[m], d[m], l[m], cf[m]))
        except ValueError as err:
            if strict:
                raise
            skipped.append(str(err))
    if len(fits) < 2:
        raise ValueError(f"Approach 2 needs at least 2 budgets with a convex IsoFLOP parabola, got {len(fits)}: "
                         + "; ".join(skipped))
    fits = tuple(fits)
    cs = np.array([f.budget_flops for f in fits])
    loss_opt = np.array([f.loss_opt for f in fits])
    return Approach2Fit(
        isoflops=fits, params_law=_power_law(cs, [f.params_opt for f in fits]),
        tokens_law=_power_law(cs, [f.tokens_opt for f in fits]),
        loss_law=_power_law(cs, loss_opt) if np.all(loss_opt > 0) else None, skipped=tuple(skipped))


# ---------------------------------------------------------------- bootstrap


@attrs.frozen(kw_only=True)
class Interval:
    """Point estimate with a percentile bootstrap interval at ``level``."""

    point: float
    low: float
    high: float
    level: float
    n_resamples: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    @property
    def min_resamples(self) -> int:
        """Fewest resamples with at least one beyond each end of the interval: ``n (1 - level) / 2 >= 1``, i.e.
        ``n >= 2 / (1 - level)`` (40 at 95%). Below it the percentile ends are interpolated between the outermost
        resamples, not estimated; reports then show how many there were."""
        return math.ceil(2 / (1 - self.level) - 1e-9)

    @property
    def too_few_resamples(self) -> bool:
        return self.n_resamples < self.min_resamples

    def __str__(self) -> str:
        return f"{self.point:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _interval(point: float, samples: Sequence[float], level: float) -> Interval:
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    lo, hi = (np.quantile(s, [(1 - level) / 2, (1 + level) / 2]) if s.size else (math.nan, math.nan))
    return Interval(point=float(point), low=float(lo), high=float(hi), level=level, n_resamples=int(s.size))


def _refit3(task) -> ChinchillaLaw | None:
    """Approach 3 on one resample (a worker task); None where no start converges or an exponent is <= 0."""
    params, tokens, loss, starts, delta, cf = task
    try:
        return fit_approach3(params, tokens, loss, grid=starts, delta=delta, flops_per_param_token=cf).law
    except (RuntimeError, ValueError):
        return None


def refit_approach3_each(datasets, *, starts, delta: float = HUBER_DELTA) -> list[ChinchillaLaw | None]:
    """Approach 3 on each ``(params, tokens, loss, flops_per_param_token)`` of ``datasets``, every one from
    ``starts`` (``[k, 5]``); the datasets are spread over the worker processes (:func:`parallel.pmap`).
    Returns the laws in order, None where no start converges or an exponent is <= 0."""
    return parallel.pmap(_refit3, [(n, d, l, starts, delta, cf) for n, d, l, cf in datasets])


@attrs.frozen(kw_only=True)
class Approach3Bootstrap:
    """Intervals for the constants and for derived quantities at ``budgets_flops``."""

    fit: Approach3Fit
    E_irr: Interval
    A: Interval
    B: Interval
    alpha: Interval
    beta: Interval
    a: Interval
    b: Interval
    budgets_flops: tuple[float, ...]
    params_opt: tuple[Interval, ...]
    tokens_opt: tuple[Interval, ...]
    tokens_per_param: tuple[Interval, ...]
    loss_opt: tuple[Interval, ...]
    samples: np.ndarray = attrs.field(repr=False)  # [n_ok, 5] (E_irr, A, B, alpha, beta)


def bootstrap_approach3(params, tokens, loss, *, fit: Approach3Fit | None = None, n_resamples: int = 200,
                        level: float = 0.95, seed: int = 0, budgets_flops: Sequence[float] = (),
                        grid: InitGrid | np.ndarray | None = None,
                        delta: float = HUBER_DELTA) -> Approach3Bootstrap:
    """Refit Approach 3 on ``n_resamples`` resamples of the runs (with replacement).

    Each refit starts from the full-data optimum and from it with ``e`` at the grid's values
    (:func:`warm_starts`; plus ``grid`` if given), which is what keeps resamples cheap.
    Intervals are percentile intervals.
    """
    n, d, l = _check_runs(params, tokens, loss)
    fit = fit or fit_approach3(n, d, l, delta=delta)
    starts = warm_starts(fit.log_constants)
    if grid is not None:
        starts = np.vstack([starts, grid.points() if isinstance(grid, InitGrid) else grid])
    rng = np.random.default_rng(seed)
    cf = fit.law.flops_per_param_token
    draws = [rng.integers(0, n.size, n.size) for _ in range(n_resamples)]
    refits = refit_approach3_each([(n[idx], d[idx], l[idx], cf) for idx in draws], starts=starts, delta=delta)
    laws_ = [f for f in refits if f is not None]
    rows = [lw.constants for lw in laws_]
    samples = np.array(rows, float).reshape(-1, 5)
    law = fit.law
    s = law.alpha + law.beta
    budgets = tuple(float(c) for c in budgets_flops)
    opt_point = law.optimal(np.array(budgets)) if budgets else None
    opt_s = [lw.optimal(np.array(budgets)) for lw in laws_] if budgets else []

    def per_budget(attr):
        if not budgets:
            return ()
        return tuple(_interval(float(np.atleast_1d(getattr(opt_point, attr))[i]),
                               [float(np.atleast_1d(getattr(o, attr))[i]) for o in opt_s], level)
                     for i in range(len(budgets)))

    al, be = samples[:, 3], samples[:, 4]
    return Approach3Bootstrap(
        fit=fit, E_irr=_interval(law.E_irr, samples[:, 0], level), A=_interval(law.A, samples[:, 1], level),
        B=_interval(law.B, samples[:, 2], level), alpha=_interval(law.alpha, al, level),
        beta=_interval(law.beta, be, level), a=_interval(law.beta / s, be / (al + be), level),
        b=_interval(law.alpha / s, al / (al + be), level), budgets_flops=budgets,
        params_opt=per_budget("params"), tokens_opt=per_budget("tokens"),
        tokens_per_param=per_budget("tokens_per_param"), loss_opt=per_budget("loss"), samples=samples)


@attrs.frozen(kw_only=True)
class Approach2Bootstrap:
    fit: Approach2Fit
    a: Interval  # exponent of N_opt(C)
    b: Interval  # exponent of D_opt(C)
    params_opt: tuple[Interval, ...]  # per budget of the fit
    tokens_opt: tuple[Interval, ...]
    tokens_per_param: tuple[Interval, ...]
    loss_opt: tuple[Interval, ...]
    n_attempted: int  # resamples drawn; the intervals' n_resamples counts those kept


def _refit2(task) -> Approach2Fit | None:
    """Approach 2 on one resample (a worker task); None for < 3 distinct N or a non-convex parabola."""
    try:
        return fit_approach2(*task)
    except ValueError:
        return None


def bootstrap_approach2(budget_flops, params, tokens, loss, compute_flops=None, *, n_resamples: int = 200,
                        level: float = 0.95, seed: int = 0) -> Approach2Bootstrap:
    """Resample runs within each budget, refit parabolas and power laws; percentile intervals."""
    budget = np.asarray(budget_flops, float)
    n, d, l = (np.asarray(x, float) for x in (params, tokens, loss))
    cf = budget if compute_flops is None else np.asarray(compute_flops, float)
    fit = fit_approach2(budget, n, d, l, cf)
    groups = [np.flatnonzero(budget == c) for c in np.unique(budget)]
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([rng.choice(g, g.size) for g in groups]) for _ in range(n_resamples)]
    refits = parallel.pmap(_refit2, [(budget[idx], n[idx], d[idx], l[idx], cf[idx]) for idx in draws])
    a_s, b_s, n_s, d_s, l_s = [], [], [], [], []
    for f in refits:
        if f is None or [x.budget_flops for x in f.isoflops] != [x.budget_flops for x in fit.isoflops]:
            continue  # no usable fit, or a resample that loses or gains a usable budget is not comparable
        a_s.append(f.params_law.exponent)
        b_s.append(f.tokens_law.exponent)
        n_s.append([x.params_opt for x in f.isoflops])
        d_s.append([x.tokens_opt for x in f.isoflops])
        l_s.append([x.loss_opt for x in f.isoflops])
    k = len(fit.isoflops)
    n_s, d_s, l_s = (np.array(v, float).reshape(-1, k) for v in (n_s, d_s, l_s))
    return Approach2Bootstrap(
        fit=fit, a=_interval(fit.params_law.exponent, a_s, level),
        b=_interval(fit.tokens_law.exponent, b_s, level),
        params_opt=tuple(_interval(x.params_opt, n_s[:, i], level) for i, x in enumerate(fit.isoflops)),
        tokens_opt=tuple(_interval(x.tokens_opt, d_s[:, i], level) for i, x in enumerate(fit.isoflops)),
        tokens_per_param=tuple(_interval(x.tokens_opt / x.params_opt, d_s[:, i] / n_s[:, i], level)
                               for i, x in enumerate(fit.isoflops)),
        loss_opt=tuple(_interval(x.loss_opt, l_s[:, i], level) for i, x in enumerate(fit.isoflops)),
        n_attempted=n_resamples)


# ---------------------------------------------------------------- joint law in E


JOINT_NAMES = ("log_a", "alpha", "delta", "gamma", "log_b", "beta", "omega", "zeta", "log_c")


def joint_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_e: np.ndarray,
                    log_l: np.ndarray, delta: float = HUBER_DELTA) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the joint law (Ludziejewski et al. 2025) in log-sum-exp form, and its gradient.

    ``log L_hat = LSE(log a + delta ln E' + (alpha + gamma ln E') ln N,
                      log b + omega ln E' + (beta + zeta ln E') ln D, log c)``;
    ``theta`` = (log a, alpha, delta, gamma, log b, beta, omega, zeta, log c); ``log_e`` = ln E'.
    """
    la, al, de, ga, lb, be, om, ze, lc = theta
    z = np.stack([la + de * log_e + (al + ga * log_e) * log_n, lb + om * log_e + (be + ze * log_e) * log_d,
                  np.full_like(log_n, lc)])
    zmax = z.max(axis=0)
    w = np.exp(z - zmax)
    s = w.sum(axis=0)
    pred = zmax + np.log(s)
    w /= s
    r = pred - log_l
    g = np.clip(r, -delta, delta)
    g0, g1 = g * w[0], g * w[1]
    grad = np.array([g0.sum(), np.dot(g0, log_n), np.dot(g0, log_e), np.dot(g0, log_e * log_n),
                     g1.sum(), np.dot(g1, log_d), np.dot(g1, log_e), np.dot(g1, log_e * log_d), np.dot(g, w[2])])
    return float(huber(r, delta).sum()), grad


@attrs.frozen(kw_only=True)
class JointFit:
    """Joint-law fit over several expert counts (``E_start``, ``E_max`` held at the published values)."""

    law: object  # perfmodel.scaling.moe_laws.JointMoELaw
    objective: float
    n_points: int
    experts: tuple[int, ...]
    # BFGS's end point in JOINT_NAMES order (a, b, c as logs): exp(log_c) can underflow to c = 0
    log_constants: tuple[float, ...] = ()


def _minimize_joint(task) -> tuple[np.ndarray, float]:
    """One BFGS run of :func:`joint_objective` (a worker task): ``(x, objective)``."""
    start, args = task
    res = optimize.minimize(joint_objective, start, args=args, jac=True, method="BFGS",
                            options=dict(maxiter=2000, gtol=1e-10))
    return res.x, float(res.fun)


def fit_joint(params, tokens, loss, n_experts, *, delta: float = HUBER_DELTA, starts: int = 8,
              seed: int = 0) -> JointFit:
    """Fit the joint MoE law to runs at >= 2 distinct expert counts (E=1 is dense).

    ``E_start`` and ``E_max`` stay at Ludziejewski et al.'s values (a sweep over
    a few E cannot pin the saturation); the 9 other constants are fitted by
    BFGS from the published constants and ``starts - 1`` random perturbations.
    """
    from perfmodel.scaling.moe_laws import JointMoELaw

    n, d, l = _check_runs(params, tokens, loss)
    e = np.asarray(n_experts, float).ravel()
    if e.size != n.size:
        raise ValueError(f"n_experts must have one entry per run, got {e.size} for {n.size} runs")
    distinct = tuple(sorted({int(x) for x in e}))
    if len(distinct) < 2:
        raise ValueError(f"a joint law in E needs runs at >= 2 expert counts, got {distinct}")
    pub = JointMoELaw()
    log_e = np.log([pub.effective_experts(x) for x in e])
    args = (np.log(n), np.log(d), log_e, np.log(l), delta)
    x0 = np.array([math.log(pub.a), pub.alpha, pub.delta, pub.gamma, math.log(pub.b), pub.beta, pub.omega, pub.zeta,
                   math.log(pub.c)])
    rng = np.random.default_rng(seed)
    points = [x0 if i == 0 else x0 + rng.normal(0, 0.3, x0.size) * np.maximum(np.abs(x0), 0.05)
              for i in range(starts)]
    best, best_val = None, math.inf
    for x, fun in parallel.pmap(_minimize_joint, [(p, args) for p in points]):  # in the starts' order
        if np.all(np.isfinite(x)) and math.isfinite(fun) and fun < best_val:
            best, best_val = x, fun
    if best is None:
        raise RuntimeError("joint fit: no start reached a finite objective")
    la, al, de, ga, lb, be, om, ze, lc = (float(v) for v in best)
    law = JointMoELaw(name="fitted joint", a=math.exp(la), alpha=al, delta=de, gamma=ga, b=math.exp(lb), beta=be,
                      omega=om, zeta=ze, c=math.exp(lc), E_start=pub.E_start, E_max=pub.E_max)
    return JointFit(law=law, objective=best_val, n_points=n.size, experts=distinct,
                    log_constants=tuple(float(v) for v in best))


def _refit_joint(task) -> np.ndarray | None:
    """The joint law on one resample (a worker task): the lowest finite end point over ``starts``, or None."""
    args, starts = task
    best, best_val = None, math.inf
    for s0 in starts:
        x, fun = _minimize_joint((s0, args))
        if np.all(np.isfinite(x)) and math.isfinite(fun) and (best is None or fun < best_val):
            best, best_val = x, fun
    return best


@attrs.frozen(kw_only=True)
class JointBootstrap:
    fit: JointFit
    constants: dict  # name -> Interval, for JOINT_NAMES without the log_ prefix (a, b, c exponentiated)


def bootstrap_joint(params, tokens, loss, n_experts, *, fit: JointFit | None = None, n_resamples: int = 100,
                    level: float = 0.95, seed: int = 0) -> JointBootstrap:
    """Resample runs (within each expert count), refit the joint law from the full-data optimum.

    Starts: the optimum and the optimum with ``log c`` (the irreducible loss) at the grid's values
    (:func:`warm_starts`), so that a fit with ``c -> 0`` does not pin ``c`` in every resample; each
    resample keeps its lowest finite objective.
    """
    n, d, l = _check_runs(params, tokens, loss)
    e = np.asarray(n_experts, float).ravel()
    fit = fit or fit_joint(n, d, l, e, seed=seed)
    log_e = np.log([fit.law.effective_experts(x) for x in e])
    # from the optimum's own log constants: the law's c may have underflowed to 0 (no log of it)
    x0 = np.array(fit.log_constants, float)
    if x0.size != len(JOINT_NAMES):
        raise ValueError(f"fit.log_constants must hold the {len(JOINT_NAMES)} constants {JOINT_NAMES}, "
                         f"got {fit.log_constants!r}")
    starts = warm_starts(x0, floor_index=JOINT_NAMES.index("log_c"))
    groups = [np.flatnonzero(e == x) for x in np.unique(e)]
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([rng.choice(g, g.size) for g in groups]) for _ in range(n_resamples)]
    refits = parallel.pmap(_refit_joint, [((np.log(n[idx]), np.log(d[idx]), log_e[idx], np.log(l[idx]), HUBER_DELTA),
                                           starts) for idx in draws])
    s = np.array([x for x in refits if x is not None], float).reshape(-1, len(JOINT_NAMES))
    out = {}
    for i, name in enumerate(JOINT_NAMES):
        key = name.removeprefix("log_")
        vals = np.exp(s[:, i]) if name.startswith("log_") else s[:, i]
        out[key] = _interval(getattr(fit.law, key), vals, level)
    return JointBootstrap(fit=fit, constants=out)
