"""AdamW, global-norm clipping and the warm-up + cosine schedule, written by hand.

AdamW (Loshchilov & Hutter 2019, decoupled weight decay), step t = 1, 2, ...::

    g   <- g * min(1, c / ||g||_2)                  (global-norm clipping, c = clip_norm)
    m_t = b1 m_{t-1} + (1 - b1) g
    v_t = b2 v_{t-1} + (1 - b2) g^2
    p_t = p_{t-1} - lr_t * ( m_t / (1 - b1^t) / (sqrt(v_t / (1 - b2^t)) + eps) + wd * p_{t-1} )

Weight decay ``wd`` applies to matrices (ndim >= 2) only, not to norm scales.

Schedule: linear warm-up from 0 to ``peak_lr`` over ``min(warmup_steps, total_steps // 10)`` steps, then
cosine decay to ``min_lr_ratio * peak_lr`` reached exactly at the last step
(``total_steps``): every run decays at its own end (Chinchilla's point).
"""

from __future__ import annotations

import attrs
import jax
import jax.numpy as jnp


@attrs.frozen(kw_only=True)
class AdamWConfig:
    peak_lr: float = 3e-3
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1


def warmup_steps(total_steps: int, cfg: AdamWConfig) -> int:
    """``min(cfg.warmup_steps, total_steps // 10)``, at least 1: short runs warm up for 10%."""
    return max(1, min(cfg.warmup_steps, total_steps // 10))


def lr_at(step, total_steps: int, cfg: AdamWConfig):
    """Learning rate of 1-based ``step`` in a run of ``total_steps`` (jnp or python numbers)."""
    step = jnp.asarray(step, jnp.float32)
    warm = warmup_steps(total_steps, cfg)
    warm_lr = cfg.peak_lr * step / warm
    frac = jnp.clip((step - warm) / max(1, total_steps - warm), 0.0, 1.0)
    cos_lr = cfg.peak_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
    return jnp.where(step <= warm, warm_lr, cos_lr)


def init_state(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"step": jnp.zeros((), jnp.int32), "m": zeros, "v": jax.tree_util.tree_map(jnp.zeros_like, params)}


def global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def apply_updates(params, grads, state, lr, cfg: AdamWConfig):
    """One AdamW step with clipping; returns (new params, new state, grad norm before clipping)."""
    gnorm = global_norm(grads)
    scale = jnp.minimum(1.0, cfg.clip_norm / (gnorm + 1e-12))
    t = state["step"] + 1
    tf = t.astype(jnp.float32)
    bc1, bc2 = 1 - cfg.b1**tf, 1 - cfg.b2**tf

    def leaf(p, g, m, v):
        g = g * scale
        m = cfg.b1 * m + (1 - cfg.b1) * g
        v = cfg.b2 * v + (1 - cfg.b2) * g * g
        wd = cfg.weight_decay if p.ndim >= 2 else 0.0
        p = p - lr * (m / bc1 / (jnp.sqrt(v / bc2) + cfg.eps) + wd * p)
        return p, m, v

    flat_p, treedef = jax.tree_util.tree_flatten(params)
    out = [leaf(p, g, m, v) for p, g, m, v in zip(flat_p, treedef.flatten_up_to(grads),
                                                    treedef.flatten_up_to(state["m"]),
                                                    treedef.flatten_up_to(state["v"]))]
    new_p, new_m, new_v = (treedef.unflatten([o[i] for o in out]) for i in range(3))
    return new_p, {"step": t, "m": new_m, "v": new_v}, gnorm
