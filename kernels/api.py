"""The jax side of :mod:`kernels`: ``moe_ffn`` and its implementations (see the package docstring)."""

from __future__ import annotations

import functools

import jax

from kernels import IMPLEMENTATIONS
from kernels.activations import resolve_activation
from kernels.fused_moe import FusedTiles, check_shapes, fused_moe_ffn_forward, resolve_chip
from kernels.ragged import moe_ffn_gmm, moe_ffn_ragged
from kernels.reference import moe_ffn_reference

__all__ = ["check_inputs", "moe_ffn", "moe_ffn_fused", "moe_ffn_gmm", "moe_ffn_ragged", "moe_ffn_reference"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _fused(x, group_sizes, w_up, w_down, w_gate, activation, tiles, chip_name, interpret):
    return fused_moe_ffn_forward(x, group_sizes, w_up, w_down, w_gate, activation=activation, tiles=tiles,
                                 chip=chip_name, interpret=interpret)


def _fused_fwd(x, group_sizes, w_up, w_down, w_gate, activation, tiles, chip_name, interpret):
    y = _fused(x, group_sizes, w_up, w_down, w_gate, activation, tiles, chip_name, interpret)
    return y, (x, group_sizes, w_up, w_down, w_gate)


def _fused_bwd(activation, tiles, chip_name, interpret, residuals, dy):
    # Backward = VJP of the ragged_dot formulation (recomputes up/gate/h; the
    # forward's intermediates never existed in HBM to be saved).
    x, group_sizes, w_up, w_down, w_gate = residuals

    def f(x, w_up, w_down, w_gate):
        return moe_ffn_ragged(x, group_sizes, w_up, w_down, w_gate, activation=activation)

    _, vjp = jax.vjp(f, x, w_up, w_down, w_gate)
    dx, dw_up, dw_down, dw_gate = vjp(dy)
    return dx, None, dw_up, dw_down, dw_gate


_fused.defvjp(_fused_fwd, _fused_bwd)


def moe_ffn_fused(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None,
                  tiles: FusedTiles | None = None, chip=None, interpret=None):
    """Fused Pallas kernel with a ``custom_vjp`` (see the module docstring)."""
    activation = resolve_activation(activation, glu=w_gate is not None)
    return _fused(x, group_sizes, w_up, w_down, w_gate, activation, tiles, resolve_chip(chip).name, interpret)


def check_inputs(x, group_sizes, w_up, w_down, w_gate=None) -> None:
    """The contract every implementation shares, so a bad call fails the same way whichever runs.

    Shapes and dtypes: ``x [T, D]``, ``w_up [G, D, F]``, ``w_down [G, F, D]``, ``w_gate`` like ``w_up``, weights in
    ``x.dtype``, ``group_sizes [G]`` of an integer dtype. Values, when ``group_sizes`` is concrete (under ``jit`` it
    is traced and only the caller can vouch for it): no negative size and ``sum(group_sizes) <= T`` (rows past the
    sum are padding and come back zero). Raises ``ValueError`` naming the argument and the value.
    """
    import numpy as np

    T = check_shapes(x, group_sizes, w_up, w_down, w_gate)[0]
    if isinstance(group_sizes, jax.core.Tracer):
        return
    sizes = np.asarray(group_sizes)
    if (sizes < 0).any():
        raise ValueError(f"group_sizes must be non-negative, got group_sizes={sizes.tolist()}")
    if sizes.sum() > T:
        raise ValueError(f"sum(group_sizes)={int(sizes.sum())} must not exceed the rows of x (T={T}), "
                         f"got group_sizes={sizes.tolist()}")


def moe_ffn(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None,
            implementation: str = "fused", tiles: FusedTiles | None = None, chip=None, interpret=None):
    """MoE FFN over expert-sorted rows; ``implementation`` in :data:`IMPLEMENTATIONS`.

    ``tiles`` and ``chip`` (default tiles, VMEM limit, cost estimate; default:
    the TPU at hand or v5e) apply to ``"fused"``; ``interpret`` to ``"fused"``
    and ``"gmm"``. Inputs are checked by :func:`check_inputs` first, for every implementation.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} should be one of {IMPLEMENTATIONS}")
    check_inputs(x, group_sizes, w_up, w_down, w_gate)
    if implementation == "fused":
        return moe_ffn_fused(x, group_sizes, w_up, w_down, w_gate, activation=activation, tiles=tiles,
                             chip=chip, interpret=interpret)
    if implementation == "ragged_dot":
        return moe_ffn_ragged(x, group_sizes, w_up, w_down, w_gate, activation=activation)
    if implementation == "reference":
        return moe_ffn_reference(x, group_sizes, w_up, w_down, w_gate, activation=activation)
    return moe_ffn_gmm(x, group_sizes, w_up, w_down, w_gate, activation=activation,  # "gmm"
                       interpret=None if interpret is None else bool(interpret))
