"""MoE laws: reduction to Chinchilla at fixed E, and the published compute-optimal table."""

import math

import pytest
import sympy as sp

from perfmodel import symbols as S
from perfmodel.scaling import laws, moe_laws


def test_effective_experts_limits():
    law = moe_laws.JointMoELaw()
    assert math.isclose(law.effective_experts(1), law.E_start, rel_tol=1e-12)
    assert law.effective_experts(1e9) < law.E_max
    assert law.effective_experts(8) < law.effective_experts(32)


def test_joint_law_at_fixed_e_is_a_chinchilla_law_symbolically():
    k = moe_laws.joint_as_chinchilla_exprs()
    rebuilt = laws.chinchilla_loss_expr().subs(k)
    assert sp.simplify(sp.expand(rebuilt - moe_laws.joint_loss_expr(in_terms_of_e_hat=True))) == 0


def test_joint_law_numeric_matches_expression():
    law = moe_laws.JointMoELaw()
    expr = moe_laws.joint_loss_expr().subs(law._subs())
    for e in (1, 8, 32):
        direct = float(expr.subs({S.E: e, laws.N: 3e8, laws.D: 5e9}))
        assert math.isclose(float(law.loss(3e8, 5e9, e)), direct, rel_tol=1e-12)


# Ludziejewski et al. 2025 compute-optimal table at 1e20 FLOPs (FACTS section 6), rounded as published.
PUBLISHED_1E20 = [(1, 1.7e9, 9.7e9), (8, 990e6, 17e9), (32, 669e6, 24.9e9)]


@pytest.mark.parametrize("experts, active, tokens", PUBLISHED_1E20)
def test_reproduces_published_optimal_table(experts, active, tokens):
    o = moe_laws.JointMoELaw().optimal(1e20, experts)
    assert math.isclose(float(o.params), active, rel_tol=0.02), float(o.params)
    assert math.isclose(float(o.tokens), tokens, rel_tol=0.02), float(o.tokens)


def test_more_experts_fewer_active_params_more_tokens():
    t = moe_laws.optimal_table(1e20, (1, 2, 4, 8, 16, 32, 64))
    assert all(t[i + 1, 1] < t[i, 1] for i in range(len(t) - 1))
    assert all(t[i + 1, 2] > t[i, 2] for i in range(len(t) - 1))
    assert all(t[i + 1, 4] < t[i, 4] for i in range(len(t) - 1))  # and lower loss


def test_fine_grained_reduces_to_chinchilla_and_brute_force():
    f = moe_laws.FineGrainedMoELaw()
    assert sp.simplify(moe_laws.fine_grained_as_chinchilla_a() - (laws.A_coef + moe_laws.fg / S.G**moe_laws.fgamma)) == 0
    law = f.at_granularity(8, 64)
    assert math.isclose(law.A, f.a + f.g / 8**f.gamma, rel_tol=1e-12)
    o = f.optimal(1e20, granularity=8, expansion=64)
    n_bf, d_bf, _ = laws.brute_force_optimal(law, 1e20)
    assert math.isclose(float(o.params), n_bf, rel_tol=2e-4)
    # C = 6 N_act D with N_act = N_total / ((1 + 2E)/3)
    assert math.isclose(6 * float(o.params) / f.total_per_active(64) * float(o.tokens), 1e20, rel_tol=1e-9)
    assert f.total_per_active(1) == 1.0


def test_fine_grained_higher_granularity_lowers_loss():
    f = moe_laws.FineGrainedMoELaw()
    assert float(f.optimal(1e20, granularity=16, expansion=8).loss) < float(f.optimal(1e20, granularity=1, expansion=8).loss)
    with pytest.raises(ValueError, match="granularity"):
        f.at_granularity(0.5, 8)
