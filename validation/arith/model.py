"""Decoder-only transformer in pure JAX (dense or MoE FFN), matching perfmodel.transformer.

Shapes: B batch, T positions, D width, H heads, Dh head dim, F FFN width
(per expert for MoE), E experts, k experts per token, L layers, V vocabulary.

Architecture (exactly what :class:`perfmodel.transformer.TransformerShape`
counts; a test asserts the pytree size equals its formula):

* token embedding ``[V, D]``, learned positions ``[T, D]`` or rotary (no params);
* L pre-norm blocks: ``x += Attn(RMSNorm(x))``, ``x += FFN(RMSNorm(x))``;
  causal multi-head attention without biases; FFN ``W_down act(x W_up)``
  (GELU; GLU variant ``W_down (silu(x W_gate) * x W_up)``), or an MoE FFN
  (:mod:`validation.arith.moe`);
* final RMSNorm and a separate unembedding ``[D, V]`` (or tied to the embedding).

RMSNorm has a scale only: ``x / sqrt(mean(x^2) + 1e-6) * g``.
Initialisation: normal(0, 0.02) for embeddings, ``1/sqrt(fan_in)`` for
matrices, output projections scaled by ``1/sqrt(2 L)`` (GPT-2), ones for norms.
"""

from __future__ import annotations

import math

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from perfmodel.transformer import TransformerShape
from validation.arith import moe as moe_lib


@attrs.frozen(kw_only=True)
class ModelConfig:
    """One model. ``n_experts=1`` is dense; MoE uses ``moe_impl`` (see moe.IMPLEMENTATIONS)."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    vocab: int
    seq_len: int
    n_experts: int = 1
    top_k: int = 1
    glu: bool = False
    tied_embeddings: bool = False
    positions: str = "learned"  # "learned" | "rotary"
    moe_impl: str = "blocked"
    dtype: str = "float32"  # compute dtype of matmuls: float32 | bfloat16 (params stay f32)

    def __attrs_post_init__(self):
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', got positions={self.positions!r}")
        if self.moe_impl not in moe_lib.IMPLEMENTATIONS:
            raise ValueError(f"moe_impl must be one of {moe_lib.IMPLEMENTATIONS}, got moe_impl={self.moe_impl!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got dtype={self.dtype!r}")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"rotary needs an even head dim, got d_model={self.d_model}, n_heads={self.n_heads}")
        self.shape  # validates the numbers

    @property
    def shape(self) -> TransformerShape:
        return TransformerShape(d_model=self.d_model, d_ff=self.d_ff, n_layers=self.n_layers,
                                vocab=self.vocab, seq_len=self.seq_len, n_heads=self.n_heads,
                                n_experts=self.n_experts, top_k=self.top_k, glu=self.glu,
                                tied_embeddings=self.tied_embeddings,
                                learned_positions=self.positions == "learned")

    @property
    def moe(self) -> bool:
        return self.n_experts > 1


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    D, F, V, T, L, E = cfg.d_model, cfg.d_ff, cfg.vocab, cfg.seq_len, cfg.n_layers, cfg.n_experts
    keys = iter(jax.random.split(key, 8 + 8 * L))

    def dense(shape, fan_in, scale=1.0):
        return jax.random.normal(next(keys), shape, jnp.float32) * (scale / math.sqrt(fan_in))

    out_scale = 1.0 / math.sqrt(2 * L)
    params = {"embed": jax.random.normal(next(keys), (V, D), jnp.float32) * 0.02}
    if cfg.positions == "learned":
        params["pos"] = jax.random.normal(next(keys), (T, D), jnp.float32) * 0.02
    layers = []
    for _ in range(L):
        layer = {"attn_norm": jnp.ones((D,)), "ffn_norm": jnp.ones((D,)),
                 "wq": dense((D, D), D), "wk": dense((D, D), D), "wv": dense((D, D), D),
                 "wo": dense((D, D), D, out_scale)}
        lead = (E,) if cfg.moe else ()
        layer["w_up"] = dense(lead + (D, F), D)
        if cfg.glu:
            layer["w_gate"] = dense(lead + (D, F), D)
        layer["w_down"] = dense(lead + (F, D), F, out_scale)
        if cfg.moe:
            layer["router"] = dense((D, E), D)
        layers.append(layer)
    params["layers"] = layers
    params["final_norm"] = jnp.ones((D,))
    if not cfg.tied_embeddings:
        params["unembed"] = dense((D, V), D)
    return params


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def rms_norm(x, g):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6) * g).astype(x.dtype)


def _rotary(x):
    """Rotate pairs (x[..., :Dh/2], x[..., Dh/2:]) by position-dependent angles; x is [B, T, H, Dh]."""
    T, Dh = x.shape[1], x.shape[-1]
    inv = 1.0 / (10000.0 ** (jnp.arange(0, Dh // 2) / (Dh // 2)))
    ang = jnp.arange(T)[:, None] * inv[None, :]
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def attention(layer, x, cfg: ModelConfig):
    B, T, D = x.shape
    H = cfg.n_heads
    Dh = D // H
    dt = x.dtype
    q = (x @ layer["wq"].astype(dt)).reshape(B, T, H, Dh)
    k = (x @ layer["wk"].astype(dt)).reshape(B, T, H, Dh)
    v = (x @ layer["wv"].astype(dt)).reshape(B, T, H, Dh)
    if cfg.positions == "rotary":
        q, k = _rotary(q), _rotary(k)
    s = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / math.sqrt(Dh)
    causal = jnp.tril(jnp.ones((T, T), bool))
    s = jnp.where(causal, s, -1e30)
    p = jax.nn.softmax(s, axis=-1).astype(dt)
    o = jnp.einsum("bhts,bshd->bthd", p, v).reshape(B, T, D)
    return o @ layer["wo"].astype(dt)


def dense_ffn(layer, x, cfg: ModelConfig):
    dt = x.dtype
    h = x @ layer["w_up"].astype(dt)
    h = jax.nn.silu(x @ layer["w_gate"].astype(dt)) * h if cfg.glu else jax.nn.gelu(h)
    return h @ layer["w_down"].astype(dt)


def forward(params, tokens, cfg: ModelConfig):
    """tokens [B, T] int -> (logits [B, T, V] f32, load-balancing loss (0 for dense))."""
    dt = jnp.dtype(cfg.dtype)
    B, T = tokens.shape
    x = params["embed"][tokens]
    if cfg.positions == "learned":
        x = x + params["pos"][None, :T]
    x = x.astype(dt)
    aux = jnp.zeros((), jnp.float32)
    for layer in params["layers"]:
        x = x + attention(layer, rms_norm(x, layer["attn_norm"]), cfg)
        h = rms_norm(x, layer["ffn_norm"])
        if cfg.moe:
            y, lb = moe_lib.moe_ffn(layer, h.reshape(B * T, -1), n_experts=cfg.n_experts, top_k=cfg.top_k,
                                    glu=cfg.glu, implementation=cfg.moe_impl)
            x = x + y.reshape(B, T, -1)
            aux = aux + lb / cfg.n_layers
        else:
            x = x + dense_ffn(layer, h, cfg)
    x = rms_norm(x, params["final_norm"])
    w_out = params["embed"].T if cfg.tied_embeddings else params["unembed"]
    return (x @ w_out.astype(dt)).astype(jnp.float32), aux


def answer_loss(logits, tokens_next, mask):
    """Mean cross-entropy over masked targets: sum(mask * CE) / sum(mask)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens_next[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_fn(params, tokens, mask, cfg: ModelConfig, aux_weight: float = 0.01):
    """(total loss, (answer loss, load-balancing loss)) for token rows [B, T + 1]."""
    logits, aux = forward(params, tokens[:, :-1], cfg)
    ce = answer_loss(logits, tokens[:, 1:], mask)
    return ce + aux_weight * aux, (ce, aux)
