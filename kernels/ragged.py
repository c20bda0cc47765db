"""The MoE FFN as users write it today: ``jax.lax.ragged_dot`` up (and gate), activation, down.

Three (GLU: four) XLA ops whose ``[T, F]`` intermediates travel through HBM:

    up   = ragged_dot(x, W_up, group_sizes)            [T, F]  in x.dtype
    gate = ragged_dot(x, W_gate, group_sizes)          [T, F]  (GLU only)
    h    = act(gate) * up  |  act(up)                  [T, F]  in x.dtype
    y    = ragged_dot(h, W_down, group_sizes)          [T, D]  in x.dtype

Each ragged_dot accumulates in f32 (``preferred_element_type``) and rounds its
output to ``x.dtype``, as the separate TPU kernels do when they write HBM.
Rows beyond ``sum(group_sizes)`` come out zero (ragged_dot's own semantics).
On TPU each ragged_dot lowers to a Mosaic grouped-matmul kernel (FACTS section
2); on CPU it is expanded densely (about ``G`` times the useful FLOPs).
This function is also the backward of the fused kernel (its ``jax.vjp``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.activations import ffn_hidden, resolve_activation


def _ragged(lhs, rhs, group_sizes):
    out = jax.lax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=jnp.float32)
    return out.astype(lhs.dtype)


def moe_ffn_ragged(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None):
    """ragged_dot baseline; same arguments and result as :func:`kernels.reference.moe_ffn_reference`."""
    activation = resolve_activation(activation, glu=w_gate is not None)
    group_sizes = group_sizes.astype(jnp.int32)
    up = _ragged(x, w_up, group_sizes)
    gate = None if w_gate is None else _ragged(x, w_gate, group_sizes).astype(jnp.float32)
    h = ffn_hidden(up.astype(jnp.float32), gate, activation=activation).astype(x.dtype)
    return _ragged(h, w_down, group_sizes)
