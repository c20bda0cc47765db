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


def _gmm(lhs, rhs, group_sizes, *, tiling, interpret):
    from jax.experimental.pallas.ops.tpu.megablox import gmm

    out = gmm(lhs, rhs, group_sizes, preferred_element_type=jnp.float32, tiling=tiling, interpret=interpret)
    return out.astype(lhs.dtype)


def moe_ffn_gmm(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None,
                tiling: tuple[int, int, int] = (128, 128, 128), interpret: bool | None = None):
    """Second baseline: the same three (four) steps with megablox ``gmm`` (jax's Pallas grouped matmul).

    megablox needs ``T`` divisible by ``tm`` (``tiling[0]``), so rows are
    zero-padded to a multiple of it, and it leaves rows past
    ``sum(group_sizes)`` unwritten, so they are zeroed here (as ragged_dot
    does). ``interpret=None``: Pallas interpret mode unless the backend is TPU.
    """
    activation = resolve_activation(activation, glu=w_gate is not None)
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    T = x.shape[0]
    tm = tiling[0]
    group_sizes = group_sizes.astype(jnp.int32)
    xp = jnp.pad(x, ((0, -T % tm), (0, 0)))
    kw = dict(tiling=tiling, interpret=interpret)
    up = _gmm(xp, w_up, group_sizes, **kw)
    gate = None if w_gate is None else _gmm(xp, w_gate, group_sizes, **kw).astype(jnp.float32)
    h = ffn_hidden(up.astype(jnp.float32), gate, activation=activation).astype(x.dtype)
    y = _gmm(h, w_down, group_sizes, **kw)[:T]
    rows = jnp.arange(T, dtype=jnp.int32)[:, None]
    return jnp.where(rows < jnp.minimum(group_sizes.sum(), T), y, 0).astype(x.dtype)
