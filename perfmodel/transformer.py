"""Parameter counts and FLOPs per token of a decoder-only transformer.

Architecture the formulas describe (and :mod:`validation.arith` builds):

* token embedding ``[V, D]``; optional learned positions ``[T, D]`` (rotary: none);
  unembedding ``[D, V]`` unless tied to the token embedding;
* per layer: RMSNorm scale ``[D]`` before attention and before the FFN;
  attention ``W_q [D, H Dh]``, ``W_k, W_v [D, Hkv Dh]``, ``W_o [H Dh, D]``, no biases;
  FFN dense ``W_up [D, F]`` (+ ``W_gate [D, F]`` for GLU), ``W_down [F, D]``;
  or MoE: router ``W_r [D, E]`` and E such FFNs of width F, top-k routing;
* a final RMSNorm scale ``[D]``.

Conventions

* *embedding* parameters are the vocabulary and position matrices (token
  embedding, unembedding, positions); *non-embedding* is everything else,
  norms and router included (Kaplan et al. 2020 count N this way).
* *active* parameters count k of the E experts (what one token touches).
* ``six_n`` is ``6 N`` with N = active non-embedding parameters (the 6ND rule).
* the *exact* forward count adds, per token, the attention score and PV
  matmuls over the full ``T x T`` square (``4 T H Dh`` per layer: XLA computes
  masked positions too), and the unembedding ``2 D V``; it counts matmul FLOPs
  only (norms, softmax, activations excluded). Train = 3 x forward.
"""

from __future__ import annotations

import functools

import attrs
import sympy as sp

from perfmodel import symbols as S


@attrs.frozen
class ParamCountExprs:
    """Symbolic parameter counts (sympy)."""

    total: sp.Expr
    active: sp.Expr
    embedding: sp.Expr
    non_embedding: sp.Expr
    active_non_embedding: sp.Expr


@functools.cache
def param_counts_symbolic(*, moe: bool = False, glu: bool = False, tied: bool = False,
                          learned_positions: bool = False) -> ParamCountExprs:
    D, F, E, k, L, V, H, Hkv, Dh, T = S.D, S.F, S.E, S.k, S.L, S.V, S.H, S.Hkv, S.Dh, S.T
    attn = D * H * Dh + 2 * D * Hkv * Dh + H * Dh * D
    norms = 2 * D
    ffn_one = (3 if glu else 2) * D * F
    if moe:
        ffn_total, ffn_active, router = E * ffn_one, k * ffn_one, D * E
    else:
        ffn_total, ffn_active, router = ffn_one, ffn_one, 0
    embedding = V * D + (0 if tied else D * V) + (T * D if learned_positions else 0)
    non_emb = L * (attn + norms + router + ffn_total) + D
    active_non_emb = L * (attn + norms + router + ffn_active) + D
    return ParamCountExprs(
        total=sp.expand(embedding + non_emb), active=sp.expand(embedding + active_non_emb),
        embedding=sp.expand(embedding), non_embedding=sp.expand(non_emb),
        active_non_embedding=sp.expand(active_non_emb))


@attrs.frozen
class FlopsPerTokenExprs:
    six_n: sp.Expr
    forward_exact: sp.Expr
    train_exact: sp.Expr


@functools.cache
def flops_per_token_symbolic(*, moe: bool = False, glu: bool = False, tied: bool = False,
                             learned_positions: bool = False) -> FlopsPerTokenExprs:
    D, F, E, k, L, V, H, Hkv, Dh, T = S.D, S.F, S.E, S.k, S.L, S.V, S.H, S.Hkv, S.Dh, S.T
    p = param_counts_symbolic(moe=moe, glu=glu, tied=tied, learned_positions=learned_positions)
    attn_mm = 2 * (D * H * Dh + 2 * D * Hkv * Dh + H * Dh * D)
    attn_sq = 4 * T * H * Dh
    ffn_mm = 2 * (3 if glu else 2) * D * F * (k if moe else 1)
    router = 2 * D * E if moe else 0
    fwd = L * (attn_mm + attn_sq + ffn_mm + router) + 2 * D * V
    return FlopsPerTokenExprs(six_n=6 * p.active_non_embedding, forward_exact=sp.expand(fwd),
                              train_exact=sp.expand(3 * fwd))


@attrs.frozen(kw_only=True)
class TransformerShape:
    """Numbers for one decoder (validated on construction)."""

    d_model: int
    d_ff: int
    n_layers: int
    vocab: int
    seq_len: int
    n_heads: int
    head_dim: int | None = None  # default d_model // n_heads
    n_kv_heads: int | None = None  # default n_heads
    n_experts: int = 1  # 1 = dense FFN
    top_k: int = 1
    glu: bool = False
    tied_embeddings: bool = False
    learned_positions: bool = False

    def __attrs_post_init__(self):
        for name in ("d_model", "d_ff", "n_layers", "vocab", "seq_len", "n_heads", "n_experts", "top_k",
                     "head_dim", "n_kv_heads"):
            v = getattr(self, name)
            if v is None and name in ("head_dim", "n_kv_heads"):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
        for name in ("glu", "tied_embeddings", "learned_positions"):
            v = getattr(self, name)
            if not isinstance(v, bool):  # glu="false" is truthy: it counted the gate projection
                raise ValueError(f"{name} must be True or False, got {name}={v!r}")
        from perfmodel.ops import check_dims

        check_dims({"k": self.top_k, "E": self.n_experts, "H": self.n_heads, "Hkv": self.hkv},
                   names={"k": "top_k", "E": "n_experts", "H": "n_heads", "Hkv": "n_kv_heads"})
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} should be divisible by n_heads={self.n_heads} "
                             "(or give head_dim)")

    @property
    def moe(self) -> bool:
        return self.n_experts > 1

    @property
    def dh(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def hkv(self) -> int:
        return self.n_kv_heads or self.n_heads

    def _subs(self) -> dict:
        return {S.D: self.d_model, S.F: self.d_ff, S.L: self.n_layers, S.V: self.vocab,
                S.T: self.seq_len, S.H: self.n_heads, S.Hkv: self.hkv, S.Dh: self.dh,
                S.E: self.n_experts, S.k: self.top_k}

    def _options(self) -> dict:
        return dict(moe=self.moe, glu=self.glu, tied=self.tied_embeddings,
                    learned_positions=self.learned_positions)

    def params(self) -> "ParamCounts":
        e = param_counts_symbolic(**self._options())
        s = self._subs()
        return ParamCounts(**{f.name: int(getattr(e, f.name).subs(s)) for f in attrs.fields(ParamCountExprs)})

    def flops_per_token(self) -> "FlopsPerToken":
        e = flops_per_token_symbolic(**self._options())
        s = self._subs()
        return FlopsPerToken(**{f.name: int(getattr(e, f.name).subs(s)) for f in attrs.fields(FlopsPerTokenExprs)})


@attrs.frozen
class ParamCounts:
    total: int
    active: int
    embedding: int
    non_embedding: int
    active_non_embedding: int


@attrs.frozen
class FlopsPerToken:
    """FLOPs per token: ``six_n`` (6 N_active_non_embedding), exact forward and train."""

    six_n: int
    forward_exact: int
    train_exact: int
