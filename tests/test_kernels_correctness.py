"""Fused kernel vs the per-expert reference and the ragged_dot baseline, on CPU in interpret mode."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jax.experimental.pallas import tpu as pltpu

import kernels
from kernels import FusedTiles, moe_ffn

T, D, F, G = 200, 128, 256, 4  # T not a multiple of tm: the last token tile is partial
TILES = FusedTiles(tm=64, tf=128)  # 4 token tiles x 2 F chunks: straddles and revisits
TOL = {"f32": dict(atol=1e-4, rtol=1e-4), "bf16": dict(atol=4e-2, rtol=4e-2)}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def _weights(dtype, glu, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(k[0], (T, D), jnp.float32)
    w_up = jax.random.normal(k[1], (G, D, F), jnp.float32) / np.sqrt(D)
    w_down = jax.random.normal(k[2], (G, F, D), jnp.float32) / np.sqrt(F)
    w_gate = jax.random.normal(k[3], (G, D, F), jnp.float32) / np.sqrt(D) if glu else None
    cast = lambda a: None if a is None else a.astype(DTYPES[dtype])
    return cast(x), cast(w_up), cast(w_down), cast(w_gate)


@functools.lru_cache(maxsize=None)
def _jitted(implementation, activation, interpret_tpu=False, chip="v5e"):
    interpret = pltpu.InterpretParams() if interpret_tpu else True
    return jax.jit(functools.partial(moe_ffn, implementation=implementation, activation=activation,
                                     tiles=TILES, chip=chip, interpret=interpret))


@st.composite
def group_sizes_st(draw):
    total = draw(st.integers(0, T))
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=G - 1, max_size=G - 1)))
    return np.diff([0, *cuts, total]).astype(np.int32)


# chip v5p: megacore, the token tiles are split over a 2-long "parallel" grid axis.
CASES = [("f32", "gelu", False, "v5e"), ("bf16", "relu", False, "v5e"), ("f32", "silu", True, "v5p"),
         ("bf16", "silu", True, "v5e"), ("bf16", "gelu", True, "v5p")]


@pytest.mark.parametrize("dtype,activation,glu,chip", CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=group_sizes_st())
@example(sizes=np.array([T, 0, 0, 0], np.int32))      # one group takes all tokens
@example(sizes=np.array([0, 0, 0, T], np.int32))      # ... the last one, after empty groups
@example(sizes=np.array([0, 0, 0, 0], np.int32))      # nothing routed: all rows zero
@example(sizes=np.array([37, 0, 90, 13], np.int32))   # zeros, straddles and a 60-row tail
def test_fused_matches_reference_and_ragged_dot(dtype, activation, glu, chip, sizes):
    x, w_up, w_down, w_gate = _weights(dtype, glu)
    gs = jnp.asarray(sizes)
    fused = _jitted("fused", activation, chip=chip)(x, gs, w_up, w_down, w_gate)
    ref = _jitted("reference", activation)(x, gs, w_up, w_down, w_gate)
    ragged = _jitted("ragged_dot", activation)(x, gs, w_up, w_down, w_gate)
    assert fused.dtype == x.dtype and fused.shape == (T, D)
    f32 = lambda a: np.asarray(a.astype(jnp.float32))
    np.testing.assert_allclose(f32(fused), f32(ref), **TOL[dtype])
    np.testing.assert_allclose(f32(fused), f32(ragged), **TOL[dtype])
    # Rows no expert owns are exactly zero, as with ragged_dot.
    assert not f32(fused)[int(sizes.sum()):].any()


@pytest.mark.parametrize("dtype,activation,glu,chip", [("f32", "gelu", False, "v5e"), ("bf16", "silu", True, "v5p")])
def test_fused_tpu_interpret_params(dtype, activation, glu, chip):
    """TPU semantics (scalar prefetch, VMEM scratch, dynamic grid, uninitialised memory = NaN)."""
    x, w_up, w_down, w_gate = _weights(dtype, glu, seed=1)
    gs = jnp.array([50, 0, 37, 90], jnp.int32)
    fused = _jitted("fused", activation, interpret_tpu=True, chip=chip)(x, gs, w_up, w_down, w_gate)
    ref = _jitted("reference", activation)(x, gs, w_up, w_down, w_gate)
    np.testing.assert_allclose(np.asarray(fused, np.float32), np.asarray(ref, np.float32), **TOL[dtype])
    assert not np.asarray(fused, np.float32)[177:].any()


@pytest.mark.parametrize("dtype,activation,glu,interpret_tpu",
                         [("f32", "gelu", False, True), ("f32", "silu", True, False),
                          ("bf16", "silu", True, False)])
def test_gradients_match_reference(dtype, activation, glu, interpret_tpu):
    x, w_up, w_down, w_gate = _weights(dtype, glu, seed=2)
    gs = jnp.array([64, 0, 100, 20], jnp.int32)
    dy = jax.random.normal(jax.random.key(3), (T, D), jnp.float32).astype(x.dtype)
    interpret = pltpu.InterpretParams() if interpret_tpu else True

    def grads(implementation):
        def loss(x, w_up, w_down, w_gate):
            y = moe_ffn(x, gs, w_up, w_down, w_gate, activation=activation, implementation=implementation,
                        tiles=TILES, chip="v5e", interpret=interpret)
            return jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(x, w_up, w_down, w_gate)

    got, want = grads("fused"), grads("reference")
    for name, a, b in zip(("dx", "dw_up", "dw_down", "dw_gate"), got, want):
        if b is None:
            continue
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, atol=TOL[dtype]["atol"] * scale, rtol=TOL[dtype]["rtol"], err_msg=name)
    # The empty expert gets no gradient.
    assert not np.asarray(got[1], np.float32)[1].any()


def test_default_path_warns_once_and_uses_model_tiles(caplog, monkeypatch):
    monkeypatch.setattr(kernels.fused_moe, "_warned_interpret", False)
    x, w_up, w_down, _ = _weights("f32", False)
    gs = jnp.array([100, 100, 0, 0], jnp.int32)
    with caplog.at_level(logging.WARNING, logger="kernels.fused_moe"):
        y1 = moe_ffn(x, gs, w_up, w_down, chip="v5e")
        moe_ffn(x, gs, w_up, w_down, chip="v5e")
    msgs = [r.getMessage() for r in caplog.records if "interpret mode" in r.getMessage()]
    assert len(msgs) == 1
    ref = moe_ffn(x, gs, w_up, w_down, implementation="reference")
    np.testing.assert_allclose(np.asarray(y1), np.asarray(ref), **TOL["f32"])


def test_api_errors_name_values():
    x, w_up, w_down, _ = _weights("f32", False)
    gs = jnp.array([100, 100, 0, 0], jnp.int32)
    with pytest.raises(ValueError, match="implementation='triton'"):
        moe_ffn(x, gs, w_up, w_down, implementation="triton")
    with pytest.raises(ValueError, match="activation='tanh'"):
        moe_ffn(x, gs, w_up, w_down, activation="tanh", implementation="reference")
    with pytest.raises(ValueError, match=r"w_down.shape=\(4, 128, 256\)"):
        moe_ffn(x, gs, w_up, jnp.swapaxes(w_down, 1, 2), interpret=True)
    with pytest.raises(ValueError, match="F=256 should be divisible by tf=512"):
        moe_ffn(x, gs, w_up, w_down, tiles=FusedTiles(tm=64, tf=512), interpret=True)
    with pytest.raises(ValueError, match="MiB of VMEM"):
        big = FusedTiles(tm=8192, tf=256)
        moe_ffn(jnp.zeros((8192, 128)), gs, w_up, w_down, tiles=big, chip="v4", interpret=True)


@pytest.mark.parametrize("implementation", kernels.IMPLEMENTATIONS)
@pytest.mark.parametrize("sizes, needle", [
    ([100, 100, 0], r"group_sizes.shape=\(3,\) should be \(G,\)=\(4,\)"),
    ([100.0, 100.0, 0.0, 0.0], "group_sizes.dtype=float32 should be an integer dtype"),
    ([-10, 110, 50, 50], r"group_sizes must be non-negative, got group_sizes=\[-10, 110, 50, 50\]"),
    ([100, 100, 100, 1], r"sum\(group_sizes\)=301 must not exceed the rows of x \(T=200\)"),
])
def test_bad_group_sizes_fail_the_same_way_for_every_implementation(implementation, sizes, needle):
    """One contract (kernels.check_inputs): ragged_dot and the reference used to run on sizes the fused kernel
    refused, and negative sizes gave each implementation a different answer."""
    x, w_up, w_down, _ = _weights("f32", False)
    assert x.shape[0] == 200
    with pytest.raises(ValueError, match=needle):
        moe_ffn(x, jnp.array(sizes), w_up, w_down, implementation=implementation, interpret=True)


@pytest.mark.parametrize("implementation", kernels.IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype, rows, needle", [
    (jnp.int8, 200, "x.dtype=int8 should be bfloat16 or float32"),  # ran and saturated
    (jnp.float8_e4m3fn, 200, "x.dtype=float8_e4m3fn should be bfloat16 or float32"),  # NaN via ragged_dot
    (jnp.float32, 0, r"x should have at least one row and one column, got x.shape=\(0, 128\)"),  # fused: tm=0
])
def test_unsupported_dtypes_and_empty_inputs_fail_the_same_way_for_every_implementation(implementation, dtype,
                                                                                         rows, needle):
    x, w_up, w_down, _ = _weights("f32", False)
    x, w_up, w_down = x[:rows].astype(dtype), w_up.astype(dtype), w_down.astype(dtype)
    sizes = jnp.array([rows // 2, 0, rows - rows // 2, 0], jnp.int32)
    with pytest.raises(ValueError, match=needle):
        moe_ffn(x, sizes, w_up, w_down, implementation=implementation, interpret=True)


def test_reference_weight_gradients_ignore_non_finite_padding_rows():
    """The reference (the gradient oracle) masked after its dense per-expert matmuls: inf/NaN in padding rows
    met a zero cotangent and made dw_up, dw_down and dw_gate NaN, where fused and ragged_dot stay finite."""
    x, w_up, w_down, w_gate = _weights("f32", True, seed=4)
    x = x.at[180].set(jnp.inf).at[190].set(jnp.nan)  # rows past sum(group_sizes) = 170
    gs = jnp.array([50, 0, 100, 20], jnp.int32)

    def loss(w_up, w_down, w_gate):
        return jnp.sum(moe_ffn(x, gs, w_up, w_down, w_gate, implementation="reference")[:170])

    for name, g in zip(("dw_up", "dw_down", "dw_gate"), jax.grad(loss, argnums=(0, 1, 2))(w_up, w_down, w_gate)):
        assert np.isfinite(np.asarray(g)).all(), name


@pytest.mark.parametrize("implementation", kernels.IMPLEMENTATIONS)
def test_a_python_list_is_named_not_an_attribute_error(implementation):
    x, w_up, w_down, _ = _weights("f32", False)
    with pytest.raises(TypeError, match=r"group_sizes must be an array .* got list group_sizes=\[100, 100, 0, 0\]"):
        moe_ffn(x, [100, 100, 0, 0], w_up, w_down, implementation=implementation, interpret=True)


def test_group_sizes_under_jit_are_not_inspected():
    x, w_up, w_down, _ = _weights("f32", False)
    gs = jnp.array([100, 50, 0, 0], jnp.int32)  # a 50-row padded tail: allowed, comes back zero
    y = jax.jit(lambda x, gs: moe_ffn(x, gs, w_up, w_down, implementation="ragged_dot"))(x, gs)
    assert not np.asarray(y[150:]).any()


@pytest.mark.parametrize("chip", ["v5e", "v5p"])
def test_tiny_shapes_default_tiles(chip):
    """T below one sublane tile, D and F below one lane tile (blocks equal to the full dims)."""
    T_, D_, F_, G_ = 5, 64, 96, 3
    k = jax.random.split(jax.random.key(4), 4)
    x = jax.random.normal(k[0], (T_, D_), jnp.float32)
    w_up, w_gate = (jax.random.normal(kk, (G_, D_, F_), jnp.float32) / 8 for kk in k[1:3])
    w_down = jax.random.normal(k[3], (G_, F_, D_), jnp.float32) / 8
    gs = jnp.array([2, 0, 2], jnp.int32)
    y = moe_ffn(x, gs, w_up, w_down, w_gate, chip=chip, interpret=pltpu.InterpretParams())
    ref = moe_ffn(x, gs, w_up, w_down, w_gate, implementation="reference")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), **TOL["f32"])
    assert not np.asarray(y)[4:].any()


@pytest.mark.parametrize("dtype,sizes", [("f32", [50, 0, 37, 90]), ("bf16", [T, 0, 0, 0])])
def test_megablox_gmm_baseline_matches_reference(dtype, sizes):
    x, w_up, w_down, w_gate = _weights(dtype, True, seed=5)
    gs = jnp.array(sizes, jnp.int32)
    got = jax.jit(functools.partial(moe_ffn, implementation="gmm", interpret=True))(x, gs, w_up, w_down, w_gate)
    ref = _jitted("reference", None)(x, gs, w_up, w_down, w_gate)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), **TOL[dtype])
    assert not np.asarray(got, np.float32)[int(sum(sizes)):].any()
