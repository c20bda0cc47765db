"""Top-k softmax router and dropless MoE FFN implementations.

Notation: N tokens (rows of ``x [N, D]``), E experts, k experts per token,
F expert width, ``g_e`` tokens routed to expert e (``sum_e g_e = N k``).

Router: ``logits = x W_r`` (``W_r [D, E]``, f32); each token takes its top-k
experts and weights them by a softmax over those k logits (Mixtral).
Load-balancing loss (Switch Transformer, Fedus et al. 2021)::

    lb = E * sum_e f_e P_e,   f_e = g_e / (N k),   P_e = mean_n softmax(logits)_ne

which is 1 for a perfectly balanced router. Every implementation is
*dropless*: each token is processed by exactly its k experts (no capacity).

Implementations (same math, same loss up to float rounding; tested):

* ``reference``: every expert on every token, combined with the routing weights
  (E / k times the active FLOPs; the test oracle).
* ``ragged_dot``: tokens sorted by expert, ``jax.lax.ragged_dot`` with
  ``group_sizes = g``. What the exercise assumes; TPU lowers it to a grouped
  matmul kernel, but XLA on CPU expands it to a dense masked matmul, about
  E times the active FLOPs (FACTS section 2).
* ``blocked``: CPU-efficient. Tokens sorted by expert, each expert's segment
  padded to a multiple of ``tm`` rows, and the ``nb = ceil(N k / tm) + E - 1``
  row blocks (an upper bound on ``sum_e ceil(g_e / tm)``, as in megablox) are
  multiplied with their own expert's weights by one batched matmul. Executed
  FFN FLOPs = ``nb tm / (N k)`` times active; :func:`block_rows` picks ``tm`` so
  it is ``<= 1 + E tm / (N k) <= 1 + 0.25 E / (E - 1)`` unless the floor tm = 8
  binds (1.22 at N k = 4096, E = 8; <= 1.5 whenever N k >= 32 E, tested).
* ``fused``: ``kernels.moe_ffn(..., implementation="fused")`` (a Pallas TPU
  kernel; on CPU it runs in interpret mode, so it is for TPU use).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("blocked", "ragged_dot", "reference", "fused")


def route(x, w_router, top_k: int):
    """x [N, D] -> (expert ids [N, k] int32, weights [N, k] f32, load-balancing loss)."""
    E = w_router.shape[-1]
    logits = (x.astype(jnp.float32) @ w_router.astype(jnp.float32))
    top_vals, top_idx = jax.lax.top_k(logits, top_k)
    weights = jax.nn.softmax(top_vals, axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)
    counts = jnp.zeros((E,), jnp.float32).at[top_idx.reshape(-1)].add(1.0)
    f = counts / top_idx.size
    lb = E * jnp.sum(f * jnp.mean(probs, axis=0))
    return top_idx.astype(jnp.int32), weights, lb


def sort_by_expert(expert_ids, n_experts: int):
    """Flatten [N, k] assignments and sort them by expert (stable).

    Returns ``order [N k]`` (flat assignment index of each sorted row; its
    token is ``order // k``) and ``group_sizes [E]`` int32 (g_e, summing to N k).
    """
    flat = expert_ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.zeros((n_experts,), jnp.int32).at[flat].add(1)
    return order, group_sizes


def block_rows(n_rows: int, n_experts: int, max_overhead: float = 0.25) -> int:
    """Largest power-of-two ``tm`` (>= 8) with padding ``(E - 1) tm <= max_overhead * N k``."""
    tm = 8
    while (n_experts - 1) * (2 * tm) <= max_overhead * n_rows and 2 * tm <= n_rows:
        tm *= 2
    return tm


def _act(up, gate):
    return jax.nn.silu(gate) * up if gate is not None else jax.nn.gelu(up)


def _experts_reference(layer, x, expert_ids, weights, glu):
    dt = x.dtype
    up = jnp.einsum("nd,edf->enf", x, layer["w_up"].astype(dt))
    gate = jnp.einsum("nd,edf->enf", x, layer["w_gate"].astype(dt)) if glu else None
    y = jnp.einsum("enf,efd->end", _act(up, gate), layer["w_down"].astype(dt))  # [E, N, D]
    E = y.shape[0]
    combine = jnp.sum(jax.nn.one_hot(expert_ids, E, dtype=jnp.float32) * weights[..., None], axis=1)  # [N, E]
    return jnp.einsum("end,ne->nd", y.astype(jnp.float32), combine).astype(dt)


def _unsort_combine(y_sorted, order, weights):
    """Rows sorted by expert [N k, D] -> weighted sum over each token's k experts [N, D]."""
    N, k = weights.shape
    y = jnp.zeros_like(y_sorted).at[order].set(y_sorted).reshape(N, k, -1)
    return jnp.einsum("nkd,nk->nd", y.astype(jnp.float32), weights).astype(y_sorted.dtype)


def _experts_ragged(layer, x, expert_ids, weights, glu):
    E, k = layer["w_up"].shape[0], expert_ids.shape[1]
    dt = x.dtype
    order, gs = sort_by_expert(expert_ids, E)
    xs = x[order // k]
    up = jax.lax.ragged_dot(xs, layer["w_up"].astype(dt), gs)
    gate = jax.lax.ragged_dot(xs, layer["w_gate"].astype(dt), gs) if glu else None
    y = jax.lax.ragged_dot(_act(up, gate), layer["w_down"].astype(dt), gs)
    return _unsort_combine(y, order, weights)


def make_block_metadata(group_sizes, n_rows: int, tm: int):
    """Where each sorted row goes in the padded layout, and each block's expert.

    Args: ``group_sizes [E]`` (g_e, sum = n_rows), ``tm`` rows per block.
    Returns:
      ``dest [n_rows]`` int32: padded row of sorted row i,
        ``padded_start[e] + (i - start[e])`` for i in expert e's segment;
      ``block_expert [nb]`` int32: expert whose weights block b multiplies,
        nb = ceil(n_rows / tm) + E - 1. Invariant: every used block holds rows
        of one expert only; unused trailing blocks are all-zero rows (their
        expert id is clipped to E - 1 and their output is discarded).
    """
    E = group_sizes.shape[0]
    nb = -(-n_rows // tm) + E - 1
    start = jnp.cumsum(group_sizes) - group_sizes
    padded = (group_sizes + tm - 1) // tm * tm
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    i = jnp.arange(n_rows, dtype=jnp.int32)
    e_of_row = jnp.searchsorted(jnp.cumsum(group_sizes), i, side="right")
    dest = padded_start[e_of_row] + i - start[e_of_row]
    block_expert = jnp.searchsorted(padded_end, jnp.arange(nb) * tm, side="right")
    return dest.astype(jnp.int32), jnp.minimum(block_expert, E - 1).astype(jnp.int32), nb


def _experts_blocked(layer, x, expert_ids, weights, glu, tm=None):
    E, k = layer["w_up"].shape[0], expert_ids.shape[1]
    n_rows = expert_ids.size
    tm = tm or block_rows(n_rows, E)
    dt = x.dtype
    order, gs = sort_by_expert(expert_ids, E)
    dest, block_expert, nb = make_block_metadata(gs, n_rows, tm)
    xp = jnp.zeros((nb * tm, x.shape[1]), dt).at[dest].set(x[order // k]).reshape(nb, tm, -1)
    up = jnp.einsum("btd,bdf->btf", xp, layer["w_up"].astype(dt)[block_expert])
    gate = jnp.einsum("btd,bdf->btf", xp, layer["w_gate"].astype(dt)[block_expert]) if glu else None
    y = jnp.einsum("btf,bfd->btd", _act(up, gate), layer["w_down"].astype(dt)[block_expert])
    return _unsort_combine(y.reshape(nb * tm, -1)[dest], order, weights)


def _experts_fused(layer, x, expert_ids, weights, glu):
    import kernels  # the kernel engineer's package; Pallas TPU kernel (interpret mode on CPU)

    E, k = layer["w_up"].shape[0], expert_ids.shape[1]
    dt = x.dtype
    order, gs = sort_by_expert(expert_ids, E)
    y = kernels.moe_ffn(x[order // k], gs, layer["w_up"].astype(dt), layer["w_down"].astype(dt),
                        w_gate=layer["w_gate"].astype(dt) if glu else None,
                        activation="silu" if glu else "gelu", implementation="fused")
    return _unsort_combine(y, order, weights)


_EXPERTS = {"reference": _experts_reference, "ragged_dot": _experts_ragged,
            "blocked": _experts_blocked, "fused": _experts_fused}


def moe_ffn(layer, x, *, n_experts: int, top_k: int, glu: bool = False, implementation: str = "blocked"):
    """x [N, D] -> (y [N, D], load-balancing loss). ``layer`` holds router, w_up, w_down (, w_gate)."""
    if implementation not in _EXPERTS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got implementation={implementation!r}")
    if layer["w_up"].shape[0] != n_experts:
        raise ValueError(f"w_up has {layer['w_up'].shape[0]} experts, expected n_experts={n_experts}")
    expert_ids, weights, lb = route(x, layer["router"], top_k)
    return _EXPERTS[implementation](layer, x, expert_ids, weights, glu), lb


def executed_ffn_ratio(n_rows: int, n_experts: int, implementation: str, tm: int | None = None) -> float:
    """Executed / active expert-FFN FLOPs of an implementation on CPU (n_rows = N k)."""
    if implementation == "blocked":
        tm = tm or block_rows(n_rows, n_experts)
        return (math.ceil(n_rows / tm) + n_experts - 1) * tm / n_rows
    raise ValueError(f"only 'blocked' has a closed form, got implementation={implementation!r}")
