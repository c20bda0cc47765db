"""Chinchilla law: derived closed forms vs brute force and vs the textbook form."""

import math

import numpy as np
import pytest
import sympy as sp

from perfmodel.scaling import laws


def test_derived_exponents_are_the_textbook_ones():
    e = laws.compute_optimal_exprs()
    assert sp.simplify(e.a - laws.beta / (laws.alpha + laws.beta)) == 0
    assert sp.simplify(e.b - laws.alpha / (laws.alpha + laws.beta)) == 0


def test_derived_frontier_exponent_is_minus_gamma_times_the_reducible_share():
    # g(C) = d ln L* / d ln C = -gamma (L* - E) / L*, gamma = alpha beta / (alpha + beta)
    e = laws.compute_optimal_exprs()
    gamma = laws.alpha * laws.beta / (laws.alpha + laws.beta)
    assert sp.simplify(e.loss_exponent + gamma * (e.loss - laws.E_irr) / e.loss) == 0
    assert sp.simplify(e.loss_exponent_per_excess + gamma) == 0  # what optimal() uses where C^beta overflows


@pytest.mark.parametrize("law", [laws.chinchilla_hoffmann(), laws.chinchilla_epoch(),
                                 laws.ChinchillaLaw(E_irr=0.0, A=50.0, B=900.0, alpha=0.6, beta=0.2)])
def test_frontier_exponent_matches_finite_differences_and_only_flattens(law):
    c = np.logspace(12, 26, 57)
    o = law.optimal(c)
    h = 1e-4  # central difference in ln C
    fd = (np.log(law.optimal(c * math.exp(h)).loss) - np.log(law.optimal(c * math.exp(-h)).loss)) / (2 * h)
    np.testing.assert_allclose(o.loss_exponent, fd, rtol=1e-6, atol=1e-9)
    gamma = law.alpha * law.beta / (law.alpha + law.beta)
    assert np.all(o.loss_exponent < 0) and np.all(o.loss_exponent >= -gamma * (1 + 1e-12))
    assert np.all(np.diff(o.loss_exponent) >= -1e-12)  # rises towards 0: a Chinchilla frontier never steepens
    if law.E_irr == 0:
        np.testing.assert_allclose(o.loss_exponent, -gamma, rtol=1e-10)


def test_derived_params_match_facts_closed_form_numerically():
    # FACTS section 6: N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))
    law = laws.chinchilla_hoffmann()
    C = np.logspace(18, 26, 9)
    s = law.alpha + law.beta
    G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / s)
    o = law.optimal(C)
    np.testing.assert_allclose(o.params, G * (C / 6) ** (law.beta / s), rtol=1e-10)
    np.testing.assert_allclose(o.tokens, (C / 6) ** (law.alpha / s) / G, rtol=1e-10)
    np.testing.assert_allclose(o.params * o.tokens * 6, C, rtol=1e-10)
    np.testing.assert_allclose(o.tokens_per_param, o.tokens / o.params, rtol=1e-10)
    np.testing.assert_allclose(o.loss, law.loss(o.params, o.tokens), rtol=1e-12)


@pytest.mark.parametrize("law", [laws.chinchilla_hoffmann(), laws.chinchilla_epoch(),
                                 laws.ChinchillaLaw(E_irr=1.0, A=50.0, B=900.0, alpha=0.6, beta=0.2,
                                                    flops_per_param_token=2.0)])
@pytest.mark.parametrize("compute", [1e15, 1e20, 5.76e23])
def test_closed_form_equals_brute_force_argmin(law, compute):
    n_bf, d_bf, l_bf = laws.brute_force_optimal(law, compute)
    o = law.optimal(compute)
    # grid step in log N is 6/2e5 decades -> 7e-5 relative
    assert math.isclose(float(o.params), n_bf, rel_tol=2e-4)
    assert math.isclose(float(o.tokens), d_bf, rel_tol=2e-4)
    assert float(o.loss) <= l_bf + 1e-12


def test_chinchilla_70b_budget_is_near_published_allocation():
    # Chinchilla's own Approach-3 allocation at Gopher's budget 5.76e23 FLOPs is ~40B params
    # (Hoffmann et al. Table 3: 40.6B for approach 3 at 5.76e23 with rounded constants).
    o = laws.chinchilla_hoffmann().optimal(5.76e23)
    assert 35e9 < float(o.params) < 45e9


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="compute_flops"):
        laws.chinchilla_epoch().optimal(-1.0)
    with pytest.raises(ValueError, match="alpha"):
        laws.ChinchillaLaw(E_irr=1.0, A=1.0, B=1.0, alpha=0.0, beta=0.3)
    law = laws.chinchilla_epoch()
    for kw, needle in ((dict(params=-1.0, tokens=1e9), "params must be positive and finite, got params=-1.0"),
                       (dict(params=1e9, tokens=0.0), "tokens must be positive and finite, got tokens=0.0")):
        with pytest.raises(ValueError, match=needle):
            law.loss(**kw)  # was nan / inf with a numpy warning
    with pytest.raises(ValueError, match="params must be positive and finite, got params=nan"):
        law.loss(np.array([1e9, np.nan]), 1e10)


def test_flops_per_param_token_must_be_positive_and_numpy_numbers_are_numbers():
    """c_f = 0 was accepted (optimal() then returned inf and nan); np.int64(6) was refused as not a number."""
    kw = dict(E_irr=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    with pytest.raises(ValueError, match="flops_per_param_token=0.0"):
        laws.ChinchillaLaw(**kw, flops_per_param_token=0.0)
    six = laws.ChinchillaLaw(**kw, flops_per_param_token=np.int64(6))
    assert float(six.optimal(1e20).params) == float(laws.ChinchillaLaw(**kw).optimal(1e20).params)
    with pytest.raises(ValueError, match="E_irr must be a finite non-negative number, got E_irr=True"):
        laws.ChinchillaLaw(**{**kw, "E_irr": True})


def test_steep_law_whose_direct_closed_form_overflows_still_gives_the_optimum():
    # beta = 14 at C = 1e30: the derived form's C^beta (1e420) overflowed, and optimal() returned
    # inf / nan although N_opt ~ 5e15 and D_opt ~ 3e13 are ordinary numbers.
    law = laws.ChinchillaLaw(name="steep", E_irr=0.0, A=1.0, B=3.0, alpha=12.0, beta=14.0)
    c = np.array([1e20, 1e30])
    o = law.optimal(c)
    for v in (o.params, o.tokens, o.loss, o.loss_exponent, o.tokens_per_param):
        assert np.all(np.isfinite(v)) and np.all(v != 0)
    np.testing.assert_allclose(6 * o.params * o.tokens, c, rtol=1e-12)
    n_bf, d_bf, l_bf = laws.brute_force_optimal(law, 1e30)
    np.testing.assert_allclose(o.params[1], n_bf, rtol=1e-3)
    np.testing.assert_allclose(o.loss[1], l_bf, rtol=1e-6)
    gamma = law.alpha * law.beta / (law.alpha + law.beta)
    np.testing.assert_allclose(o.loss_exponent, -gamma, rtol=1e-10)  # E_irr = 0: the frontier is a power law
