"""Symbolic costs of the ops perfmodel knows, at ideal HBM traffic (no tiling).

"Ideal" means every input is read from HBM once and every output written once
per kernel; a kernel boundary costs a full write and re-read of the tensor
that crosses it. Tiling effects (re-reads per tile, padding, straddling tiles)
belong to :mod:`perfmodel.tiling`, not here.

FLOP convention: a multiply-add is 2 FLOPs; matmul FLOPs are ``2 M K N``.
Elementwise FLOPs use the approximate VPU op counts in :data:`ACTIVATIONS`
(these passes are memory-bound, so the count barely matters). Transcendentals
count one per exp / tanh / logistic evaluated.
"""

from __future__ import annotations

import attrs

from perfmodel import symbols as S
from perfmodel.cost import Cost, check_dim, flops, read, transcendentals, write

# Approximate elementwise costs per element: (FLOPs, transcendentals).
#   relu(x) = max(x, 0)                         -> 1 op
#   silu(x) = x * logistic(x)                   -> 1 exp, ~4 ops (neg, add, div, mul)
#   gelu(x) tanh form: 0.5x(1+tanh(c(x+0.044715x^3)))  -> 1 tanh, ~8 ops
ACTIVATIONS = {"relu": (1, 0), "silu": (4, 1), "gelu": (8, 1)}

_INDEX_BYTES = 4  # int32 expert ids / f32 gate weights


def matmul(M=S.M, K=S.K, N=S.N, *, name: str = "matmul", lhs: str = "lhs",
           rhs: str = "rhs", out: str = "out", q=S.q) -> Cost:
    """``[M, K] @ [K, N] -> [M, N]``: FLOPs ``2 M K N``; bytes ``q (M K + K N + M N)``."""
    return Cost(
        name,
        terms=(flops("mxu", 2 * M * K * N), read(lhs, M * K * q), read(rhs, K * N * q),
               write(out, M * N * q)),
        description=f"[{M}, {K}] @ [{K}, {N}]",
    )


def ragged_dot(M=S.M, K=S.K, N=S.N, G=S.G, *, name: str = "ragged_dot", lhs: str = "lhs",
               rhs: str = "rhs", out: str = "out", q=S.q) -> Cost:
    """Grouped matmul ``lhs[M, K]`` (rows sorted into G groups) @ ``rhs[G, K, N]``.

    Ideal: each row meets only its own group's weights, so FLOPs are ``2 M K N``
    (not ``G`` times that), every group's weights are read once (all groups
    assumed non-empty): bytes ``q (M K + G K N + M N)``.
    """
    return Cost(
        name,
        terms=(flops("mxu", 2 * M * K * N), read(lhs, M * K * q), read(rhs, G * K * N * q),
               write(out, M * N * q)),
        description=f"ragged [{M}, {K}] @ [{G}, {K}, {N}]",
    )


def activation(rows=S.M, width=S.F, *, kind: str = "gelu", glu: bool = False,
               name: str = "act", q=S.q, ins: tuple[str, ...] | None = None,
               out: str = "h") -> Cost:
    """Elementwise activation pass over ``[rows, width]``.

    Non-GLU: ``h = act(u)`` reads u, writes h. GLU (SwiGLU-style):
    ``h = act(g) * u`` reads g and u, writes h (one extra multiply per element).
    """
    _check_kind(kind, "kind")
    op_flops, op_trans = ACTIVATIONS[kind]
    n = rows * width
    ins = ins or (("gate", "up") if glu else ("up",))
    terms = [flops("vpu", n * (op_flops + (1 if glu else 0)))]
    if op_trans:
        terms.append(transcendentals("vpu", n * op_trans))
    terms += [read(t, n * q) for t in ins] + [write(out, n * q)]
    return Cost(name, terms=tuple(terms), description=f"{kind}{' GLU' if glu else ''} on [{rows}, {width}]")


def _check_kind(kind, option: str) -> None:
    """Refuse an activation not in :data:`ACTIVATIONS`, naming the option the caller set."""
    if kind not in ACTIVATIONS:
        raise ValueError(f"{option} must be one of the activations {sorted(ACTIVATIONS)}, got {option}={kind!r}")


def elementwise(n=S.M, *, n_inputs: int = 1, flops_per_element: int = 1,
                name: str = "elementwise", q=S.q) -> Cost:
    """A generic elementwise pass over ``n`` elements with ``n_inputs`` inputs."""
    return Cost(
        name,
        terms=(flops("vpu", n * flops_per_element),
               *[read(f"in{i}", n * q) for i in range(n_inputs)], write("out", n * q)),
    )


def router(T=S.T, D=S.D, E=S.E, k=S.k, *, q=S.q) -> Cost:
    """Router and top-k: logits ``x[T, D] @ W_r[D, E]``, softmax over E, top-k.

    FLOPs ``2 T D E`` (logits) + ``3 T E`` (softmax: max-subtract, sum, divide);
    ``T E`` exps; top-k compares are not FLOPs. Writes k gate weights (f32) and k
    expert ids (int32) per token.
    """
    return Cost(
        "router",
        terms=(flops("logits", 2 * T * D * E), flops("softmax", 3 * T * E),
               transcendentals("softmax", T * E), read("x", T * D * q), read("w_router", D * E * q),
               write("gates", T * k * _INDEX_BYTES), write("expert_ids", T * k * _INDEX_BYTES)),
        description="router logits, softmax, top-k",
    )


def _ffn_parts(rows, D, F, groups, *, glu: bool, kind: str, q, grouped: bool) -> tuple[Cost, ...]:
    mm = ragged_dot if grouped else matmul
    extra = dict(G=groups) if grouped else {}
    parts = [mm(rows, D, F, name="up", lhs="x", rhs="w_up", out="up", q=q, **extra)]
    if glu:
        parts.append(mm(rows, D, F, name="gate", lhs="x", rhs="w_gate", out="gate", q=q, **extra))
    parts.append(activation(rows, F, kind=kind, glu=glu, name="act", q=q))
    parts.append(mm(rows, F, D, name="down", lhs="h", rhs="w_down", out="y", q=q, **extra))
    return tuple(parts)


def moe_ffn_unfused(T=S.T, D=S.D, F=S.F, E=S.E, k=S.k, *, glu: bool = False,
                    activation_kind: str | None = None, q=S.q) -> Cost:
    """MoE FFN as ``ragged_dot`` calls: up [, gate], activation pass, down.

    Rows ``T k`` (each token once per chosen expert) sorted by expert. The
    ``[T k, F]`` intermediates cross kernel boundaries: up (and gate) are
    written then read by the activation pass, which writes h, which the down
    projection reads. Intermediate traffic: ``4 T k F q`` (non-GLU) or
    ``6 T k F q`` (GLU).
    """
    kind = activation_kind or ("silu" if glu else "gelu")
    _check_kind(kind, "activation_kind")
    return Cost("moe_ffn_unfused",
                parts=_ffn_parts(T * k, D, F, E, glu=glu, kind=kind, q=q, grouped=True),
                description=f"ragged_dot MoE FFN ({'GLU' if glu else kind})")


def moe_ffn_fused(T=S.T, D=S.D, F=S.F, E=S.E, k=S.k, *, glu: bool = False,
                  activation_kind: str | None = None, q=S.q) -> Cost:
    """MoE FFN in one kernel at ideal traffic: the ``[T k, F]`` intermediate stays on chip.

    Same FLOPs and transcendentals as :func:`moe_ffn_unfused`; bytes are x,
    every weight once, and y: ``q (T k D + (2 or 3) E D F + T k D)``.
    """
    unfused = moe_ffn_unfused(T, D, F, E, k, glu=glu, activation_kind=activation_kind, q=q)
    crossing = {"up.up", "gate.gate", "act.up", "act.gate", "act.h", "down.h"}
    kept = [t for t in unfused.all_terms() if t.name not in crossing]
    # x is read once although up and gate both consume it.
    kept = [t for t in kept if t.name != "gate.x"]
    return Cost("moe_ffn_fused", terms=tuple(kept),
                description="fused MoE FFN (intermediate in VMEM)")


def dense_ffn(M=S.M, D=S.D, F=S.F, *, glu: bool = False, activation_kind: str | None = None,
              q=S.q) -> Cost:
    """Dense FFN as separate kernels (same structure as the unfused MoE FFN, one expert)."""
    kind = activation_kind or ("silu" if glu else "gelu")
    _check_kind(kind, "activation_kind")
    return Cost("ffn", parts=_ffn_parts(M, D, F, 1, glu=glu, kind=kind, q=q, grouped=False))


def attention(B=S.B, T=S.T, D=S.D, H=S.H, Hkv=S.Hkv, Dh=S.Dh, *, q=S.q) -> Cost:
    """Self-attention block: QKV projection, flash-style core, output projection.

    The core computes the full ``T x T`` score matrix per head (causal masking
    does not skip work): FLOPs ``4 B T^2 H Dh`` (QK^T and PV), ``B H T^2`` exps;
    scores stay on chip, so it reads Q, K, V and writes O once.
    """
    qkv_width = (H + 2 * Hkv) * Dh
    qkv = matmul(B * T, D, qkv_width, name="qkv", lhs="x", rhs="w_qkv", out="qkv", q=q)
    core = Cost("core", terms=(
        flops("scores", 2 * B * T * T * H * Dh), flops("pv", 2 * B * T * T * H * Dh),
        flops("softmax", 3 * B * H * T * T), transcendentals("softmax", B * H * T * T),
        read("qkv", B * T * qkv_width * q), write("o", B * T * H * Dh * q)))
    out = matmul(B * T, H * Dh, D, name="out", lhs="o", rhs="w_o", out="y", q=q)
    return Cost("attention", parts=(qkv, core, out), description="attention block")


def rmsnorm(M=S.M, D=S.D, *, name: str = "norm", q=S.q) -> Cost:
    """RMSNorm over ``[M, D]``: ~4 FLOPs per element, one rsqrt per row."""
    return Cost(name, terms=(flops("vpu", 4 * M * D), transcendentals("rsqrt", M),
                             read("x", M * D * q), read("scale", D * q), write("y", M * D * q)))


def transformer_layer(B=S.B, T=S.T, D=S.D, F=S.F, H=S.H, Hkv=S.Hkv, Dh=S.Dh, E=S.E, k=S.k, *,
                      moe: bool = False, glu: bool = False, q=S.q) -> Cost:
    """Pre-norm decoder layer: norm, attention, residual, norm, FFN (dense or MoE), residual."""
    rows = B * T
    parts = [rmsnorm(rows, D, name="norm1", q=q), attention(B, T, D, H, Hkv, Dh, q=q),
             elementwise(rows * D, n_inputs=2, name="residual1", q=q),
             rmsnorm(rows, D, name="norm2", q=q)]
    if moe:
        parts += [router(rows, D, E, k, q=q), moe_ffn_unfused(rows, D, F, E, k, glu=glu, q=q)]
    else:
        parts.append(dense_ffn(rows, D, F, glu=glu, q=q))
    parts.append(elementwise(rows * D, n_inputs=2, name="residual2", q=q))
    return Cost("layer", parts=tuple(parts), description=f"{'MoE' if moe else 'dense'} decoder layer")


def decoder_forward(B=S.B, T=S.T, D=S.D, F=S.F, H=S.H, Hkv=S.Hkv, Dh=S.Dh, E=S.E, k=S.k,
                    L=S.L, V=S.V, *, moe: bool = False, glu: bool = False, q=S.q) -> Cost:
    """Embedding gather, ``L`` layers, final norm, unembedding ``[B T, D] @ [D, V]``.

    The ``L`` layers are one layer cost multiplied by ``L`` (identical layers), kernel by kernel.
    """
    layer = transformer_layer(B, T, D, F, H, Hkv, Dh, E, k, moe=moe, glu=glu, q=q)
    layers = layer.scaled(L, name="layers")
    embed = Cost("embed", terms=(read("table_rows", B * T * D * q), write("x", B * T * D * q)))
    final = rmsnorm(B * T, D, name="final_norm", q=q)
    unembed = matmul(B * T, D, V, name="unembed", lhs="x", rhs="w_unembed", out="logits", q=q)
    return Cost("decoder_forward", parts=(embed, layers, final, unembed))


def decoder_train_step(B=S.B, T=S.T, D=S.D, F=S.F, H=S.H, Hkv=S.Hkv, Dh=S.Dh, E=S.E, k=S.k,
                       L=S.L, V=S.V, *, moe: bool = False, glu: bool = False, q=S.q) -> Cost:
    """Forward, backward and AdamW update.

    Backward FLOPs = 2 x forward FLOPs (each matmul has a dX and a dW product of
    the forward's size; elementwise work is taken as 2x too). Backward bytes are
    approximated as 2 x forward bytes. The optimizer reads parameters, gradients
    and both f32 moments and writes parameters and moments (f32 state: 4 bytes).
    """
    from perfmodel.transformer import param_counts_symbolic

    fwd = decoder_forward(B, T, D, F, H, Hkv, Dh, E, k, L, V, moe=moe, glu=glu, q=q)
    bwd = fwd.scaled(2, name="backward", description="backward: 2 x each forward kernel")
    P = param_counts_symbolic(moe=moe, glu=glu).total
    opt = Cost("adamw", terms=(flops("update", 12 * P), transcendentals("sqrt", P),
                               read("params", P * q), read("grads", P * q), read("moments", 2 * P * 4),
                               write("params", P * q), write("moments", 2 * P * 4)))
    return Cost("decoder_train_step", parts=(fwd, bwd, opt))


@attrs.frozen
class OpSpec:
    """A registered op: its builder and the structural options it takes."""

    name: str
    builder: object
    options: tuple[str, ...]
    summary: str


OPS: dict[str, OpSpec] = {
    spec.name: spec for spec in (
        OpSpec("matmul", matmul, (), "[M,K] @ [K,N]"),
        OpSpec("ragged_dot", ragged_dot, (), "grouped matmul [M,K] @ [G,K,N], ideal traffic"),
        OpSpec("activation", activation, ("kind", "glu"), "elementwise activation pass [M,F]"),
        OpSpec("router", router, (), "MoE router logits + softmax + top-k"),
        OpSpec("moe_ffn_unfused", moe_ffn_unfused, ("glu", "activation_kind"),
               "MoE FFN as ragged_dot up[/gate] + activation + ragged_dot down"),
        OpSpec("moe_ffn_fused", moe_ffn_fused, ("glu", "activation_kind"),
               "MoE FFN fused in one kernel, ideal traffic"),
        OpSpec("dense_ffn", dense_ffn, ("glu", "activation_kind"), "dense FFN, separate kernels"),
        OpSpec("attention", attention, (), "attention block (QKV, flash core, out proj)"),
        OpSpec("transformer_layer", transformer_layer, ("moe", "glu"), "pre-norm decoder layer"),
        OpSpec("decoder_forward", decoder_forward, ("moe", "glu"), "whole decoder forward"),
        OpSpec("decoder_train_step", decoder_train_step, ("moe", "glu"),
               "forward + backward + AdamW"),
    )
}


def check_dims(dims: dict, names: dict | None = None) -> None:
    """Refuse dimension combinations no model describes: top-k over more experts than exist (``k > E``), key/value
    heads that do not divide the query heads (grouped-query attention shares each K/V head by ``H / Hkv``
    queries). Values may be numbers or numpy arrays; only the letters present are checked, each first as a
    positive integer (:func:`perfmodel.cost.check_dim`), so a string or 0 is named as such rather than compared.
    ``names`` maps a letter to the caller's name for it in the message (``{"Hkv": "n_kv_heads"}``)."""
    import numpy as np

    n = (names or {}).get
    k, e, h, hkv = n("k", "k"), n("E", "E"), n("H", "H"), n("Hkv", "Hkv")
    for letter in ("k", "E", "H", "Hkv"):
        if letter in dims:
            check_dim(n(letter, letter), dims[letter])
    if "k" in dims and "E" in dims and np.any(np.asarray(dims["k"]) > np.asarray(dims["E"])):
        raise ValueError(f"{k} must not exceed {e} (top-k of E experts), got {k}={dims['k']!r}, {e}={dims['E']!r}")
    if "H" in dims and "Hkv" in dims:
        hv, kv = np.asarray(dims["H"]), np.asarray(dims["Hkv"])
        if np.any(kv <= 0) or np.any(kv > hv) or np.any(np.mod(hv, np.maximum(kv, 1)) != 0):
            raise ValueError(f"{hkv} must divide {h} (grouped-query attention), "
                             f"got {h}={dims['H']!r}, {hkv}={dims['Hkv']!r}")


BOOLEAN_OPTIONS = frozenset({"glu", "moe"})
"""Options that switch a structure on or off (``glu=True``); any other value is refused, not read as truthy."""


def get_op(name: str, **options) -> Cost:
    """Build the symbolic cost of a registered op with its structural options."""
    spec = OPS.get(name)
    if spec is None:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(OPS)}")
    bad = [o for o in options if o not in spec.options]
    if bad:
        raise ValueError(f"op {name!r} takes options {list(spec.options)}, got unknown {bad}")
    for key in BOOLEAN_OPTIONS & options.keys():
        value = options[key]
        # bool, numpy.bool_ (no numpy import needed here) or the integers 0 and 1
        if not (isinstance(value, bool) or type(value).__name__ == "bool_" or (isinstance(value, int) and value in (0, 1))):
            raise ValueError(f"option {key} must be true or false, got {key}={value!r}")
    return _cached_op(name, tuple(sorted(options.items())))


_OP_CACHE: dict = {}


def _cached_op(name, options):
    key = (name, options)
    if key not in _OP_CACHE:
        _OP_CACHE[key] = OPS[name].builder(**dict(options))
    return _OP_CACHE[key]
