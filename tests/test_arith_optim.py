"""AdamW step against a hand computation; schedule end points."""

import jax.numpy as jnp
import numpy as np

from validation.arith import optim


def test_adamw_two_steps_match_hand_computation():
    cfg = optim.AdamWConfig(b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, clip_norm=1e9)
    p = {"w": jnp.array([[1.0, -2.0]]), "g": jnp.array([0.5])}  # matrix (decayed) and norm scale (not)
    grads = [{"w": jnp.array([[0.1, 0.2]]), "g": jnp.array([-0.3])},
             {"w": jnp.array([[0.3, -0.1]]), "g": jnp.array([0.2])}]
    lr = 0.01
    state = optim.init_state(p)
    new = p
    for g in grads:
        new, state, _ = optim.apply_updates(new, g, state, lr, cfg)
    # by hand
    w, gs = np.array([[1.0, -2.0]]), np.array([0.5])
    mw = vw = np.zeros_like(w)
    mg = vg = np.zeros_like(gs)
    for t, g in enumerate(grads, 1):
        gw, gg = np.asarray(g["w"]), np.asarray(g["g"])
        mw, vw = 0.9 * mw + 0.1 * gw, 0.99 * vw + 0.01 * gw**2
        mg, vg = 0.9 * mg + 0.1 * gg, 0.99 * vg + 0.01 * gg**2
        w = w - lr * ((mw / (1 - 0.9**t)) / (np.sqrt(vw / (1 - 0.99**t)) + 1e-8) + 0.1 * w)
        gs = gs - lr * ((mg / (1 - 0.9**t)) / (np.sqrt(vg / (1 - 0.99**t)) + 1e-8))
    np.testing.assert_allclose(new["w"], w, rtol=1e-6)
    np.testing.assert_allclose(new["g"], gs, rtol=1e-6)
    assert int(state["step"]) == 2


def test_clipping_scales_by_global_norm():
    cfg = optim.AdamWConfig(clip_norm=1.0, weight_decay=0.0, b1=0.0, b2=0.0, eps=0.0)
    p = {"a": jnp.zeros(2)}
    g = {"a": jnp.array([3.0, 4.0])}  # norm 5
    _, state, gnorm = optim.apply_updates(p, g, optim.init_state(p), 1.0, cfg)
    assert float(gnorm) == 5.0
    np.testing.assert_allclose(state["m"]["a"], [0.6, 0.8], rtol=1e-6)


def test_schedule_warms_up_then_decays_exactly_at_the_end():
    cfg = optim.AdamWConfig(peak_lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    total = 200
    lrs = np.array([float(optim.lr_at(s, total, cfg)) for s in range(1, total + 1)])
    assert np.isclose(lrs[9], 1e-3) and np.isclose(lrs[0], 1e-4)
    assert np.isclose(lrs[-1], 1e-4)  # min_lr_ratio * peak at the last step
    assert (np.diff(lrs[10:]) <= 1e-12).all()
    assert optim.warmup_steps(30, cfg) == 3  # short runs warm up for 10%
