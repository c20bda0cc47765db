import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import perfmodel
from perfmodel import ops
from perfmodel import symbols as S

dims = st.integers(min_value=1, max_value=1 << 14)


@settings(max_examples=40, deadline=None)
@given(T=dims, D=dims, F=dims, E=st.integers(1, 64), k=st.integers(1, 8), glu=st.booleans())
def test_numeric_evaluator_matches_sympy_substitution(T, D, F, E, k, glu):
    cost = ops.get_op("moe_ffn_unfused", glu=glu)
    vals = cost.evaluate(T=T, D=D, F=F, E=E, k=k, q=2)
    subs = {S.T: T, S.D: D, S.F: F, S.E: E, S.k: k, S.q: 2}
    assert vals.flops == pytest.approx(float(cost.flops.subs(subs)), rel=1e-12)
    assert vals.hbm_bytes == pytest.approx(float(cost.hbm_bytes.subs(subs)), rel=1e-12)
    assert vals.transcendentals == pytest.approx(float(cost.transcendentals.subs(subs)), rel=1e-12)


def test_array_evaluation_matches_scalar_evaluation():
    rng = np.random.default_rng(0)
    M, K, N = (rng.integers(1, 5000, size=100) for _ in range(3))
    cost = ops.get_op("matmul")
    arr = cost.evaluate(M=M, K=K, N=N, dtype="bf16")
    for i in (0, 17, 99):
        one = cost.evaluate(M=int(M[i]), K=int(K[i]), N=int(N[i]), dtype="bf16")
        assert arr.flops[i] == one.flops and arr.hbm_bytes[i] == one.hbm_bytes


@pytest.mark.parametrize("glu", [False, True])
def test_fusion_saves_exactly_the_intermediate_round_trip(glu):
    # By hand, rows R = T k sorted by expert, intermediate [R, F] in q-byte elements:
    #   non-GLU: write u, read u (act), write h, read h (down)          -> 4 R F q
    #   GLU:     write u and g, read u and g, write h, read h            -> 6 R F q
    #            plus the gate ragged_dot re-reads x                      -> + R D q
    unfused = ops.moe_ffn_unfused(glu=glu)
    fused = ops.moe_ffn_fused(glu=glu)
    R = S.T * S.k
    by_hand = (6 * R * S.F * S.q + R * S.D * S.q) if glu else 4 * R * S.F * S.q
    assert sp.simplify(unfused.hbm_bytes - fused.hbm_bytes - by_hand) == 0
    assert sp.simplify(unfused.flops - fused.flops) == 0
    assert sp.simplify(unfused.transcendentals - fused.transcendentals) == 0


def test_ragged_dot_ideal_flops_do_not_scale_with_groups():
    cost = ops.ragged_dot()
    assert sp.simplify(cost.flops - 2 * S.M * S.K * S.N) == 0
    assert sp.simplify(cost.hbm_bytes - S.q * (S.M * S.K + S.G * S.K * S.N + S.M * S.N)) == 0


@pytest.mark.parametrize("bad, value", [("D", 0), ("D", -3), ("D", 2.5), ("D", float("nan"))])
def test_bad_dimensions_name_argument_and_value(bad, value):
    kw = dict(T=128, D=256, F=512, E=8, k=2, q=2)
    kw[bad] = value
    with pytest.raises(ValueError, match=rf"{bad}="):
        ops.get_op("moe_ffn_fused").evaluate(**kw)


def test_a_huge_integer_dimension_is_a_number_not_refused_as_one():
    v = ops.get_op("matmul").evaluate(M=10**30, K=2, N=2, q=2)  # beyond int64: evaluated as a float
    assert v.flops == pytest.approx(8e30)
    with pytest.raises(ValueError, match="M is beyond the float range"):
        ops.get_op("matmul").evaluate(M=10**400, K=2, N=2, q=2)


def test_missing_and_unknown_arguments_are_named():
    with pytest.raises(ValueError, match=r"missing argument\(s\) N; needs K, M, N, dtype \(sets q\)$"):
        ops.get_op("matmul").evaluate(M=1, K=1, q=2)
    with pytest.raises(ValueError, match=r"missing argument\(s\) dtype \(sets q\);"):  # q is passed as dtype
        ops.get_op("matmul").evaluate(M=1, K=1, N=1)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) Z;"):
        ops.get_op("matmul").evaluate(M=1, K=1, N=1, Z=3, q=2)
    with pytest.raises(ValueError, match=r"missing argument\(s\) N; needs K, M, N, dtype"):  # predict sets q itself
        perfmodel.predict("matmul", chip="v5e", M=1, K=1)
    with pytest.raises(ValueError, match="known ops"):
        ops.get_op("conv9d")
    with pytest.raises(ValueError, match="activation"):
        ops.activation(kind="swish7")


def test_formula_renders_pretty_and_latex():
    cost = ops.get_op("matmul")
    assert "K" in cost.formula("flops") and r"K M N" in cost.formula("flops", latex=True)


def test_attention_counts_the_full_square():
    cost = ops.attention()
    vals = cost.evaluate(B=1, T=1024, D=512, H=8, Hkv=8, Dh=64, q=2)
    proj = 2 * 1024 * 512 * (3 * 512) + 2 * 1024 * 512 * 512
    square = 4 * 1024 * 1024 * 8 * 64
    assert vals.flops - 3 * 8 * 1024 * 1024 == proj + square


LAYER = dict(B=2, T=512, D=1024, F=4096, H=8, Hkv=4, Dh=128, E=8, k=2, moe=True, glu=True)


def test_time_sums_every_leaf_kernel_of_nested_ops():
    """A composite part (the MoE FFN and attention inside a layer, the L layers of a decoder) was one roofline
    with perfect overlap across its kernels, so the same FFN read faster inside a layer than on its own."""
    from perfmodel.api import predict

    layer = predict("transformer_layer", chip="v6e", **LAYER)
    ffn = predict("moe_ffn_unfused", chip="v6e", T=2 * 512, D=1024, F=4096, E=8, k=2, glu=True)
    assert layer.time_of("moe_ffn_unfused") == pytest.approx(ffn.time_s)
    assert layer.time_s == pytest.approx(sum(r.lower_s for _, r in layer.kernels))
    assert {p for p, _ in layer.kernels} >= {"attention.qkv", "attention.core", "moe_ffn_unfused.up", "norm1"}
    for L in (1, 3):
        dec = predict("decoder_forward", chip="v6e", L=L, V=32000, **LAYER)
        assert dec.time_of("layers") == pytest.approx(L * layer.time_s)
    with pytest.raises(ValueError, match="has no part 'nope'"):
        layer.time_of("nope")


def test_scaled_costs_keep_their_kernels_and_term_names():
    layer = ops.transformer_layer(moe=True, glu=True)
    three = layer.scaled(3, name="layers")
    assert [t.name for t in three.all_terms()] == [t.name for t in layer.all_terms()]
    assert sp.simplify(three.flops - 3 * layer.flops) == 0
    assert [p for p, _ in three.kernels()] == [p for p, _ in layer.kernels()]


@pytest.mark.parametrize("op, kw, needle", [
    # the formula's T**2 on a Python float raised OverflowError, a traceback from the lambdified code
    ("attention", dict(B=1, D=8, Dh=4, H=2, Hkv=1, T=1e300), "B=1, D=8, Dh=4, H=2, Hkv=1, T=1e+300 give flops=inf"),
    # returned flops=inf, which roofline() then refused as "flops must be finite", naming no input
    ("matmul", dict(M=1e300, K=1e300, N=1e300), "M=1e+300, K=1e+300, N=1e+300 give flops=inf"),
    ("activation", dict(M=1e308, F=1e308), "M=1e+308, F=1e+308 give flops=inf"),
])
def test_a_cost_beyond_the_float_range_names_the_inputs(op, kw, needle):
    with pytest.raises(ValueError, match="beyond the float range") as err:
        ops.get_op(op).evaluate(**kw, q=2)
    assert needle in str(err.value)


def test_an_overflowing_element_of_an_array_is_named_with_its_index():
    with pytest.raises(ValueError) as err:
        ops.get_op("matmul").evaluate(M=np.array([8, 8, 1e300]), K=1e10, N=1e10, q=2)
    assert "M=1e+300, K=10000000000.0, N=10000000000.0 (at index 2) give flops=inf" in str(err.value)
