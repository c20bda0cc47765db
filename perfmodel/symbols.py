"""Every sympy symbol perfmodel uses, declared once.

Notation (scaling-book letters)

==========  ==========================================================
symbol      meaning
==========  ==========================================================
B           batch size (sequences)
T           tokens (sequence length, or rows handed to an MoE FFN)
D           model width d_model
F           FFN hidden width d_ff (per expert for MoE)
E           number of experts
k           experts per token (top-k)
L           number of layers
V           vocabulary size
H           query heads
Hkv         key/value heads (GQA; H for plain multi-head attention)
Dh          head dimension
G           number of groups of a grouped matmul (= E for an MoE FFN)
M, K, N     matmul dims: [M, K] @ [K, N]
q           bytes per element of the operands (2 for bf16)
tm, tk, tn  kernel tile sizes along M, K, N (tf: tile along F)
P, W        per-TensorCore MXU peak (FLOP/s) and HBM bandwidth (B/s)
t_step      fixed cost per grid step; t_launch per kernel launch
==========  ==========================================================

Scaling-law symbols live apart from the shape symbols: ``N_params`` prints as
N and ``D_tokens`` as D in the law L(N, D), but they are real-valued symbols
distinct from the integer shape symbols ``N`` and ``D``.
"""

from __future__ import annotations

import sympy as sp

_dim = dict(integer=True, positive=True)

B, T, D, F, E, k, L, V = sp.symbols("B T D F E k L V", **_dim)
H, Hkv, Dh, G = sp.symbols("H H_kv D_h G", **_dim)
M, K, N = sp.symbols("M K N", **_dim)
tm, tk, tn, tf = sp.symbols("t_m t_k t_n t_f", **_dim)
q = sp.Symbol("q", positive=True)
# Hardware rates in closed-form time expressions (substituted per chip).
P, W = sp.symbols("P W", positive=True)
t_step, t_launch = sp.symbols("t_step t_launch", nonnegative=True)  # bytes per element (may be fractional for int4 later)

# Scaling laws (real-valued).
N_params = sp.Symbol("N", positive=True)
D_tokens = sp.Symbol("D", positive=True)
C_flops = sp.Symbol("C", positive=True)

SHAPE_SYMBOLS: dict[str, sp.Symbol] = {
    s.name: s for s in (B, T, D, F, E, k, L, V, H, Hkv, Dh, G, M, K, N, tm, tk, tn, tf)
}
"""Shape and tile symbols by the name a user passes (``H_kv``, ``D_h``, ``t_m`` ...)."""

ARGUMENT_NAMES: dict[sp.Symbol, str] = {
    Hkv: "Hkv", Dh: "Dh", tm: "tm", tk: "tk", tn: "tn", tf: "tf",
}
"""Python keyword for a symbol whose printed name is not a valid identifier-style name."""


def arg_name(symbol: sp.Symbol) -> str:
    """The keyword a user passes for ``symbol`` (``D_h`` -> ``Dh``)."""
    return ARGUMENT_NAMES.get(symbol, symbol.name)
