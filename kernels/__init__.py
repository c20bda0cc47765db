"""MoE FFN kernels: one API, four implementations.

>>> y = moe_ffn(x, group_sizes, w_up, w_down, w_gate=None, activation="gelu",
...             implementation="fused")                                  # doctest: +SKIP

* ``"fused"``: the Pallas TPU kernel of :mod:`kernels.fused_moe` (up [and
  gate] -> activation -> down in one kernel, ``[T, F]`` intermediate kept in
  VMEM). Differentiable through a ``custom_vjp`` whose backward is the
  ``ragged_dot`` baseline's own VJP. On a non-TPU backend it runs in Pallas TPU
  interpret mode and logs a one-time warning (``interpret=`` overrides:
  ``False`` to lower for a real TPU, e.g. ahead-of-time compilation on a CPU
  host; ``True`` for the faster generic interpreter).
* ``"ragged_dot"``: ``jax.lax.ragged_dot`` up (and gate), activation, down
  (:mod:`kernels.ragged`), what users write today.
* ``"reference"``: a per-expert loop in plain jnp (:mod:`kernels.reference`),
  the test oracle.
* ``"gmm"``: a second baseline, the same steps as ``"ragged_dot"`` with jax's
  megablox ``gmm`` Pallas kernel (``interpret`` applies; default tiling).

All take ``x [T, D]`` with rows sorted by expert, ``group_sizes [G]`` (int),
``w_up [G, D, F]``, ``w_down [G, F, D]``, optional ``w_gate [G, D, F]`` (GLU:
``h = act(x W_gate) * (x W_up)``; SwiGLU with ``activation="silu"``), and
return ``[T, D]`` in ``x.dtype`` with zero rows past ``sum(group_sizes)``.
``activation=None`` means ``"silu"`` for GLU and ``"gelu"`` otherwise.
``moe_ffn`` checks its inputs the same way for every implementation
(:func:`check_inputs`: shapes, dtypes and, outside ``jit``, non-negative group
sizes summing to at most ``T``).

Importing the package does not import jax: the kernel's description
(:mod:`kernels.fused_spec`: tiles, ``fused_moe_spec``, default tiles) is loaded
eagerly for the cost model, ``moe_ffn`` and the implementations on first use
(:mod:`kernels.api`).
"""

from __future__ import annotations

import importlib

from kernels.activations import ACTIVATIONS
from kernels.fused_spec import FusedTiles, default_tiles, fused_moe_spec, make_group_metadata

IMPLEMENTATIONS = ("fused", "ragged_dot", "reference", "gmm")

_API = ("check_inputs", "moe_ffn", "moe_ffn_fused", "moe_ffn_gmm", "moe_ffn_ragged", "moe_ffn_reference")

__all__ = ["ACTIVATIONS", "IMPLEMENTATIONS", "FusedTiles", "default_tiles", "fused_moe_spec",
           "make_group_metadata", *_API]


def __getattr__(name: str):
    """``moe_ffn`` and friends, imported from :mod:`kernels.api` (and jax) on first access."""
    if name in _API:
        value = getattr(importlib.import_module("kernels.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
