"""Pure-jnp MoE FFN oracle: a per-expert loop, no grouping tricks.

Notation (scaling-book letters): ``T`` rows (tokens x chosen experts, sorted by
expert), ``D`` model width, ``F`` expert hidden width, ``G`` experts (groups).

For expert ``g`` with rows ``[o_g, o_{g+1})``, ``o = [0, cumsum(group_sizes)]``::

    y[r] = act(x[r] W_up[g])           W_down[g]     (non-GLU)
    y[r] = (act(x[r] W_gate[g]) * x[r] W_up[g]) W_down[g]   (GLU)

Rows ``r >= sum(group_sizes)`` belong to no expert and are zero, as with
``jax.lax.ragged_dot``. Everything is computed in f32 at HIGHEST precision
from the given input values and cast to ``x.dtype`` once at the end: this is
the mathematically intended answer, not a model of any kernel's rounding.
Cost: ``G`` dense FFNs over all ``T`` rows (fine for tests only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.activations import ffn_hidden, resolve_activation


def moe_ffn_reference(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None):
    """Per-expert loop reference: ``x [T, D]``, ``group_sizes [G] int32``, ``w_up [G, D, F]``,
    ``w_down [G, F, D]``, optional ``w_gate [G, D, F]``; returns ``[T, D]`` in ``x.dtype``."""
    activation = resolve_activation(activation, glu=w_gate is not None)
    hi = jax.lax.Precision.HIGHEST
    T = x.shape[0]
    G = group_sizes.shape[0]
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    starts = ends - group_sizes.astype(jnp.int32)
    rows = jnp.arange(T, dtype=jnp.int32)[:, None]
    xf = x.astype(jnp.float32)
    y = jnp.zeros((T, w_down.shape[-1]), jnp.float32)
    for g in range(G):
        in_group = (rows >= starts[g]) & (rows < ends[g])
        # Rows of other groups (and padding, which may hold inf or NaN) are zeroed before the matmuls, not
        # only masked after: a masked-out NaN still meets a zero cotangent and makes the weight gradient NaN.
        xg = jnp.where(in_group, xf, 0.0)
        up = jnp.dot(xg, w_up[g].astype(jnp.float32), precision=hi)
        gate = None if w_gate is None else jnp.dot(xg, w_gate[g].astype(jnp.float32), precision=hi)
        h = ffn_hidden(up, gate, activation=activation)
        out = jnp.dot(h, w_down[g].astype(jnp.float32), precision=hi)
        y = jnp.where(in_group, out, y)
    return y.astype(x.dtype)
