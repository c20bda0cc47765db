"""FFN activations shared by the reference, the ragged_dot baseline and the fused kernel.

One home for the activation math so that the three implementations cannot
drift apart. Every function maps an f32 array to an f32 array and runs both in
plain XLA and inside a Pallas TPU kernel body (only VPU/EUP primitives:
``tanh``, ``exp``, ``max``).

* ``gelu``: tanh approximation (``jax.nn.gelu(approximate=True)``, the jax default).
* ``relu``: ``max(u, 0)``.
* ``silu``: ``u * sigmoid(u)`` (a.k.a. swish).

GLU form (``w_gate`` given): ``h = act(x W_gate) * (x W_up)``; with ``silu``
this is SwiGLU. Non-GLU form: ``h = act(x W_up)``.
"""

from __future__ import annotations

from perfmodel.ops import ACTIVATIONS as OP_COSTS

ACTIVATIONS = ("gelu", "relu", "silu")

# jax is imported inside the functions (already loaded whenever they run): the cost model imports
# this module for the names and counts, without jax.


def _gelu(u):
    import jax

    return jax.nn.gelu(u, approximate=True)


def _relu(u):
    import jax.numpy as jnp

    return jnp.maximum(u, 0.0)


def _silu(u):
    import jax

    return u * jax.nn.sigmoid(u)


_FUNCTIONS = {"gelu": _gelu, "relu": _relu, "silu": _silu}


def resolve_activation(activation: str | None, *, glu: bool) -> str:
    """Validate ``activation``; ``None`` means ``"silu"`` for GLU (SwiGLU) and ``"gelu"`` otherwise."""
    if activation is None:
        return "silu" if glu else "gelu"
    if activation not in _FUNCTIONS:
        raise ValueError(f"activation={activation!r} should be one of {ACTIVATIONS}")
    return activation


def ffn_hidden(up, gate, *, activation: str):
    """Hidden activations ``h`` from f32 projections.

    ``up = x W_up`` and (GLU) ``gate = x W_gate``, both f32 ``[rows, F]``.
    Returns ``act(gate) * up`` when ``gate`` is given, else ``act(up)``.
    """
    act = _FUNCTIONS[activation]
    if gate is None:
        return act(up)
    return act(gate) * up


def transcendentals_per_element(activation: str) -> int:
    """EUP transcendentals per hidden element (from ``perfmodel.ops.ACTIVATIONS``, one home)."""
    return OP_COSTS[activation][1]


def vpu_flops_per_element(activation: str, *, glu: bool) -> int:
    """VPU FLOPs per hidden element (``perfmodel.ops.ACTIVATIONS``; GLU adds the product with ``up``)."""
    return OP_COSTS[activation][0] + (1 if glu else 0)
