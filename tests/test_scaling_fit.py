"""Approach 3 / Approach 2 / bootstrap on synthetic runs drawn from a known law."""

import math

import numpy as np
import pytest
from scipy import optimize

from perfmodel.scaling import fit as F
from perfmodel.scaling.laws import ChinchillaLaw

TRUE = ChinchillaLaw(E_irr=1.2, A=40.0, B=300.0, alpha=0.4, beta=0.3)
BUDGETS = (1e12, 3e12, 1e13, 3e13)


def isoflop_runs(law=TRUE, budgets=BUDGETS, per_budget=7, noise=0.0, seed=0):
    """Runs on IsoFLOP curves around each budget's optimum (N spread over +-1 decade)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n0 = float(law.optimal(c).params)
        for n in n0 * np.logspace(-1, 1, per_budget):
            d = c / (6 * n)
            rows.append((c, n, d, float(law.loss(n, d)) * math.exp(noise * rng.standard_normal())))
    return tuple(np.array(x) for x in zip(*rows))


def test_objective_gradient_matches_finite_differences():
    c, n, d, l = isoflop_runs(noise=0.01)
    theta = np.array([0.1, 3.0, 5.0, 0.35, 0.25])
    args = (np.log(n), np.log(d), np.log(l))
    numeric = optimize.approx_fprime(theta, lambda t: F.approach3_objective(t, *args)[0], 1e-7)
    # Finite differences straddle the Huber kink for a few residuals: 1e-3 relative agreement.
    np.testing.assert_allclose(F.approach3_objective(theta, *args)[1], numeric, rtol=1e-3, atol=1e-8)


def test_huber_is_quadratic_then_linear():
    r = np.array([0.0, 5e-4, -5e-4, 1e-2])
    np.testing.assert_allclose(F.huber(r), [0.0, 1.25e-7, 1.25e-7, 1e-3 * (1e-2 - 5e-4)])


def test_approach3_recovers_known_law_from_exact_data():
    c, n, d, l = isoflop_runs()
    f = F.fit_approach3(n, d, l)
    got = f.law
    assert math.isclose(got.alpha, TRUE.alpha, rel_tol=1e-3)
    assert math.isclose(got.beta, TRUE.beta, rel_tol=1e-3)
    assert math.isclose(got.E_irr, TRUE.E_irr, rel_tol=1e-3)
    assert f.objective < 1e-10


def test_approach2_exponents_match_law_derivation():
    c, n, d, l = isoflop_runs(per_budget=9)
    f = F.fit_approach2(c, n, d, l)
    a_true = TRUE.beta / (TRUE.alpha + TRUE.beta)
    # Parabolas in ln N approximate a non-quadratic curve: vertices are close, not exact.
    assert abs(f.params_law.exponent - a_true) < 0.02
    assert abs(f.tokens_law.exponent - (1 - a_true)) < 0.02
    for iso in f.isoflops:
        o = TRUE.optimal(iso.budget_flops)
        assert abs(math.log(iso.params_opt / float(o.params))) < 0.1
        assert iso.vertex_inside
        assert math.isclose(iso.loss_opt, float(o.loss), rel_tol=2e-3)


def test_bootstrap_intervals_cover_truth_on_noisy_data():
    c, n, d, l = isoflop_runs(noise=0.005, per_budget=9, seed=1)
    b = F.bootstrap_approach3(n, d, l, n_resamples=30, budgets_flops=(1e14,))
    assert b.alpha.n_resamples >= 25
    assert b.a.low <= TRUE.beta / (TRUE.alpha + TRUE.beta) <= b.a.high
    assert b.params_opt[0].low < b.params_opt[0].point < b.params_opt[0].high
    b2 = F.bootstrap_approach2(c, n, d, l, n_resamples=30)
    assert b2.a.low <= b2.a.point <= b2.a.high
    assert len(b2.params_opt) == len(BUDGETS)


def test_bad_inputs_are_named():
    c, n, d, l = isoflop_runs()
    l = l.copy()
    l[3] = np.nan
    with pytest.raises(ValueError, match="loss must be finite"):
        F.fit_approach3(n, d, l)
    with pytest.raises(ValueError, match="at least 2 compute budgets"):
        F.fit_approach2(np.full(5, 1e12), n[:5], d[:5], l[:5])
    with pytest.raises(ValueError, match="at least 3"):
        F.fit_isoflop(1e12, n[:2], d[:2], l[:2])
    with pytest.raises(ValueError, match="method"):
        F.fit_approach3(n, d, np.abs(l), method="nelder")


def test_lbfgs_and_bfgs_agree():
    c, n, d, l = isoflop_runs(noise=0.01)
    grid = F.SMALL_GRID.points()[[0, -1]]
    a = F.fit_approach3(n, d, l, grid=grid)
    b = F.fit_approach3(n, d, l, grid=grid, method="L-BFGS-B")
    assert math.isclose(a.objective, b.objective, rel_tol=1e-6)


def test_joint_fit_recovers_generating_constants(tmp_path):
    from perfmodel.scaling import moe_laws, results

    j = moe_laws.JointMoELaw(a=30.0, alpha=-0.2, delta=-0.2, gamma=0.01, b=40.0, beta=-0.18, omega=0.5,
                             zeta=-0.02, c=1.3)
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): j.at_experts(1), ("moe", 8, 1): j.at_experts(8),
                                                       ("moe", 32, 1): j.at_experts(32)}, (1e17, 1e18, 1e19))
    r = results.read_runs(p)
    f = F.fit_joint(r.params, r.tokens, r.loss, r.n_experts, starts=2)
    assert f.experts == (1, 8, 32)
    for name in ("alpha", "gamma", "beta", "zeta", "c"):
        assert math.isclose(getattr(f.law, name), getattr(j, name), rel_tol=1e-3, abs_tol=1e-5), name
    with pytest.raises(ValueError, match="2 expert counts"):
        F.fit_joint(r.params[:21], r.tokens[:21], r.loss[:21], r.n_experts[:21])


def test_approach2_skips_a_budget_without_a_minimum():
    c, n, d, l = isoflop_runs(per_budget=7)
    l = l.copy()
    m = c == BUDGETS[1]
    l[m] = np.linspace(3.0, 2.0, m.sum())  # monotone: the sizes do not bracket a minimum
    f = F.fit_approach2(c, n, d, l)
    assert [x.budget_flops for x in f.isoflops] == [BUDGETS[0], BUDGETS[2], BUDGETS[3]]
    assert len(f.skipped) == 1 and "do not bracket a minimum" in f.skipped[0]
    with pytest.raises(ValueError, match="do not bracket a minimum"):
        F.fit_approach2(c, n, d, l, strict=True)


def test_best_loss_frontier_uses_the_lowest_run_per_budget():
    # two runs per budget: the frontier must go through the lower one, exactly a power law here
    c = np.array([1e10, 1e10, 1e11, 1e11, 1e12, 1e12])
    best = 3.0 * c ** -0.1
    loss = np.where(np.arange(c.size) % 2 == 0, best, best * 1.3)
    law = F.fit_best_loss_frontier(c, loss)
    assert law.exponent == pytest.approx(-0.1) and law.coef == pytest.approx(3.0)
    assert law(1e13) == pytest.approx(3.0 * 1e13 ** -0.1)
    with pytest.raises(ValueError, match="at least 2 budgets"):
        F.fit_best_loss_frontier(c[:2], loss[:2])
    with pytest.raises(ValueError, match="positive and finite"):
        F.fit_best_loss_frontier(c, np.where(c > 1e11, np.nan, loss))


def test_frontier_exponents_are_the_segment_slopes_of_the_lowest_runs():
    # frontier 2 C^-0.1 up to 1e11, then 2 C^-0.3 (continuous): a steepening the segments must show
    c = np.array([1e10, 1e10, 1e11, 1e11, 1e12, 1e12, 3e12])
    best = np.where(c <= 1e11, 2.0 * c ** -0.1, 2.0 * 1e11 ** -0.1 * (c / 1e11) ** -0.3)
    loss = np.where(np.arange(c.size) % 2 == 1, best * 1.2, best)  # second run of each budget is worse
    budgets, g = F.frontier_exponents(c, loss)
    np.testing.assert_allclose(budgets, [1e10, 1e11, 1e12, 3e12])
    np.testing.assert_allclose(g, [-0.1, -0.3, -0.3], rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 budgets, got 1"):
        F.frontier_exponents(c[:2], loss[:2])
    with pytest.raises(ValueError, match="positive and finite"):
        F.frontier_exponents(c, -loss)
    with pytest.raises(ValueError, match="1-d of one length"):
        F.frontier_exponents(c, loss[:3])


def test_bootstrap_refits_can_leave_an_irreducible_loss_of_zero():
    # The arithmetic study's dense seed means: the full-data fit drives E to ~0 (e ~ -34), where the objective
    # is flat in e. Started from that optimum alone, no resample can move E; F.warm_starts also starts at the
    # grid's e values, and must then find the same optima as a refit from the whole SMALL_GRID per resample.
    import pathlib

    from perfmodel.scaling import results
    from perfmodel.scaling import study as S

    path = pathlib.Path(__file__).resolve().parent.parent / "validation" / "results" / "arith_full.jsonl"
    r = results.read_runs(path).average_repeats().groups()["dense"]
    fit = F.fit_approach3(r.params, r.tokens, r.loss, grid=F.SMALL_GRID, flops_per_param_token=S.flops_per_param_token(r))
    assert fit.law.E_irr < 1e-10
    kw = dict(fit=fit, n_resamples=6, seed=0)
    warm = F.bootstrap_approach3(r.params, r.tokens, r.loss, **kw).samples
    grid = F.bootstrap_approach3(r.params, r.tokens, r.loss, grid=F.SMALL_GRID, **kw).samples
    assert warm.shape == grid.shape == (6, 5)
    assert warm[:, 0].max() > 0.1  # some resample has a real floor ...
    np.testing.assert_allclose(warm[:, 0], grid[:, 0], atol=1e-9)  # ... and the grid finds the same E
    np.testing.assert_allclose(warm[:, 1:], grid[:, 1:], rtol=1e-6)
    idx = np.random.default_rng(0).integers(0, r.params.size, (6, r.params.size))  # the bootstrap's draws
    pinned = [F.fit_approach3(r.params[i], r.tokens[i], r.loss[i], grid=np.atleast_2d(fit.log_constants)).law.E_irr
              for i in idx]
    assert max(pinned) < 1e-10  # the optimum alone: E pinned at ~0 in every resample


def test_warm_starts_replace_only_the_floor():
    x = np.array([-34.0, 3.0, 3.0, 0.5, 0.2])
    s = F.warm_starts(x, floor_starts=(-1.0, 0.5))
    np.testing.assert_array_equal(s[0], x)
    np.testing.assert_array_equal(s[1:, 0], [-1.0, 0.5])
    np.testing.assert_array_equal(s[1:, 1:], np.tile(x[1:], (2, 1)))
    assert F.warm_starts(np.arange(9.0), floor_index=8).shape == (3, 9)


def test_an_interval_from_too_few_resamples_says_so():
    """A 95% percentile interval needs a resample beyond each end (n >= 40); from fewer, the table shows the count
    (the report's 100-resample Approach 2 intervals keep ~10 resamples, whose ends are just the outermost ones)."""
    from perfmodel.scaling.study import _iv

    rng = np.random.default_rng(0)
    few, enough = F._interval(1.0, rng.normal(size=7), 0.95), F._interval(1.0, rng.normal(size=40), 0.95)
    assert few.min_resamples == 40 and F._interval(1.0, [0.0] * 10, 0.9).min_resamples == 20
    assert few.too_few_resamples and not enough.too_few_resamples
    assert _iv(few).endswith("(only 7 resamples)") and "resamples" not in _iv(enough)
    assert F._interval(1.0, [np.nan] * 50, 0.95).too_few_resamples  # non-finite resamples do not count


def test_joint_bootstrap_starts_from_the_fits_log_constants_when_c_underflows(tmp_path):
    # a fit that drives the irreducible loss to zero can end at log c = -800: exp underflows to c = 0,
    # and the bootstrap must still start from the optimum (there is no log of the law's c)
    import attrs

    from perfmodel.scaling import moe_laws, results

    j = moe_laws.JointMoELaw(a=30.0, alpha=-0.2, delta=-0.2, gamma=0.01, b=40.0, beta=-0.18, omega=0.5,
                             zeta=-0.02, c=1.3)
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): j.at_experts(1),
                                                       ("moe", 8, 1): j.at_experts(8)}, (1e17, 1e18, 1e19))
    r = results.read_runs(p)
    fit = F.fit_joint(r.params, r.tokens, r.loss, r.n_experts, starts=2)
    assert len(fit.log_constants) == len(F.JOINT_NAMES)
    assert math.isclose(math.exp(fit.log_constants[-1]), fit.law.c)
    low = attrs.evolve(fit, law=attrs.evolve(fit.law, c=math.exp(-800.0)),
                       log_constants=fit.log_constants[:-1] + (-800.0,))
    assert low.law.c == 0.0
    boot = F.bootstrap_joint(r.params, r.tokens, r.loss, r.n_experts, fit=low, n_resamples=2)
    assert boot.constants["c"].n_resamples == 2
    assert all(math.isfinite(v.point) for k, v in boot.constants.items() if k != "c")
    with pytest.raises(ValueError, match="log_constants"):
        F.bootstrap_joint(r.params, r.tokens, r.loss, r.n_experts, fit=attrs.evolve(fit, log_constants=()),
                          n_resamples=2)
