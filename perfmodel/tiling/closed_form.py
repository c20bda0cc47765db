"""Closed forms of the grouped-matmul kernels' counts for uniform group sizes.

:func:`gmm_closed_form` (forward / dlhs: megablox gmm, tokamax, XLA's kernel) and
:func:`tgmm_closed_form` (drhs: megablox tgmm).

The kernel is megablox ``gmm`` (also tokamax's fork and XLA's ragged_dot
Mosaic kernel, :mod:`perfmodel.tiling.gmm`): grid ``(N_t, S, K_t)`` with
``N_t = ceil(N / tn)``, ``K_t = ceil(K / tk)`` and ``S`` (group, row-tile)
visits. Symbols (``perfmodel.symbols``): ``M`` rows (``T`` in an MoE FFN),
``K`` contraction, ``N`` output width, ``G`` groups, ``tm, tk, tn`` tiles,
``q`` bytes per element.

Assumptions: ``G`` equal groups of ``s = M / G`` rows (``G | M``) covering all
rows, ``tm | M`` (megablox requires it), at least two row tiles (``M >= 2 tm``;
with one, a block can stay resident across n passes and the counts drop).

Row-tile visits. Group ``g`` covers row tiles ``floor(g s / tm)`` to
``ceil((g + 1) s / tm) - 1``; summing, every tile is visited once plus once per
inner group boundary ``g s`` (``1 <= g < G``) that is not a multiple of ``tm``.
``tm | g s`` iff ``(tm / gcd(s, tm)) | g``, so::

    S = M / tm + (G - 1) - floor((G - 1) gcd(M / G, tm) / tm)

Traffic under "copy only when the block index changes" (steps in row-major
order, k fastest):

* lhs block ``(tile, k)``: with ``K_t > 1`` it changes every step and each visit
  reads its whole ``tm x K`` row tile; with ``K_t = 1`` consecutive visits of the
  same tile keep it, so each tile is read once per n tile:
  ``lhs = N_t q K tm (S if K_t > 1 else M / tm)``;
* rhs block ``(group, k, n)``: with ``K_t > 1`` every visit reads the group's
  ``K x tn`` slab; with ``K_t = 1`` it stays while the group does:
  ``rhs = q K N (S if K_t > 1 else G)`` (the n tiles together span ``N``);
* out block ``(tile, n)``: written once: ``out = q_out M N``.

MXU FLOPs: every step multiplies a padded ``tm x tk`` by ``tk x tn`` block:
``2 ceil8(tm) ceilT(tk) ceilT(tn) N_t S K_t`` with ``T`` the chip's MXU tile
(:func:`perfmodel.tiling.walker.mxu_flops`). Tests check every expression
against :func:`perfmodel.tiling.walker.walk`.
"""

from __future__ import annotations

import attrs
import sympy as sp

from perfmodel import symbols as S_


class Gcd(sp.Function):
    """Greatest common divisor of two positive integers, evaluated when both are numbers."""

    is_integer = True
    is_positive = True

    @classmethod
    def eval(cls, a, b):
        if a.is_Integer and b.is_Integer:
            return sp.Integer(sp.igcd(a, b))
        return None


def _pad(x, multiple: int):
    return sp.ceiling(x / multiple) * multiple


@attrs.frozen(kw_only=True)
class GmmClosedForm:
    """Sympy counts of the grouped-matmul kernel (see module docstring)."""

    row_tile_visits: sp.Expr
    grid_steps: sp.Expr
    lhs_bytes: sp.Expr
    rhs_bytes: sp.Expr
    out_bytes: sp.Expr
    mxu_flops: sp.Expr
    useful_flops: sp.Expr

    @property
    def hbm_bytes(self) -> sp.Expr:
        return self.lhs_bytes + self.rhs_bytes + self.out_bytes

    @property
    def symbols(self) -> tuple[sp.Symbol, ...]:
        syms = set()
        for f in attrs.fields(GmmClosedForm):
            syms |= getattr(self, f.name).free_symbols
        return tuple(sorted(syms, key=lambda s: s.name))

    def evaluate(self, **dims) -> dict[str, int]:
        """Exact integer values for ``M, K, N, G, tm, tk, tn`` (and ``q``) given by keyword.

        Raises ``ValueError`` naming a missing argument or violated assumption.
        """
        needed = {S_.arg_name(s): s for s in self.symbols}
        missing = sorted(set(needed) - set(dims))
        if missing:
            raise ValueError(f"missing argument(s) {missing}; needs {sorted(needed)}")
        extra = sorted(set(dims) - set(needed))
        if extra:
            raise ValueError(f"unknown argument(s) {extra}; needs {sorted(needed)}")
        M, G, tm = dims.get("M"), dims.get("G"), dims.get("tm")
        if M is not None and G is not None and M % G:
            raise ValueError(f"closed forms assume equal groups: M must be divisible by G, got {M=}, {G=}")
        if M is not None and tm is not None and (M % tm or M < 2 * tm):
            raise ValueError(f"closed forms assume tm | M and M >= 2 tm, got {M=}, {tm=}")
        subs = {needed[name]: sp.Integer(int(v)) for name, v in dims.items()}
        out = {f.name: int(getattr(self, f.name).subs(subs)) for f in attrs.fields(GmmClosedForm)}
        out["hbm_bytes"] = out["lhs_bytes"] + out["rhs_bytes"] + out["out_bytes"]
        return out


def gmm_closed_form(*, mxu_tile: int = 128, out_itemsize=None) -> GmmClosedForm:
    """Closed forms for the grouped-matmul kernel on a chip with MXU tile ``mxu_tile``.

    ``out_itemsize``: bytes per output element (default ``q``, the input's;
    megablox's default output is f32: pass 4).
    """
    M, K, N, G, tm, tk, tn, q = S_.M, S_.K, S_.N, S_.G, S_.tm, S_.tk, S_.tn, S_.q
    q_out = q if out_itemsize is None else sp.Integer(out_itemsize)
    Nt, Kt = sp.ceiling(N / tn), sp.ceiling(K / tk)
    visits = M / tm + (G - 1) - sp.floor((G - 1) * Gcd(M / G, tm) / tm)
    single_k = sp.Eq(Kt, 1)
    lhs = Nt * q * K * tm * sp.Piecewise((M / tm, single_k), (visits, True))
    rhs = q * K * N * sp.Piecewise((G, single_k), (visits, True))
    steps = Nt * visits * Kt
    return GmmClosedForm(
        row_tile_visits=visits, grid_steps=steps, lhs_bytes=lhs, rhs_bytes=rhs, out_bytes=q_out * M * N,
        mxu_flops=2 * _pad(tm, 8) * _pad(tk, mxu_tile) * _pad(tn, mxu_tile) * steps,
        useful_flops=2 * M * K * N)


def tgmm_closed_form(*, mxu_tile: int = 128, out_itemsize=None) -> GmmClosedForm:
    """Closed forms for megablox ``tgmm`` (the rhs gradient, ragged contraction).

    Grid ``(N_t, K_t, S)`` (visits fastest), ``lhs [M, K]``, ``rhs [M, N]``, ``out
    [G, K, N]``; same visits ``S`` as :func:`gmm_closed_form` (equal non-empty
    groups). Within one ``(n, k)`` pass consecutive visits of a row tile keep its
    blocks, so each pass reads every row once: ``lhs = N_t q M K``, ``rhs = K_t q M N``;
    each group's ``tk x tn`` output block is written once per pass:
    ``out = q_out G K N``. A step multiplies ``lhs^T (tk x tm)`` by ``(tm x tn)``:
    ``2 ceil8(tk) ceilT(tm) ceilT(tn)`` MXU FLOPs.
    """
    M, K, N, G, tm, tk, tn, q = S_.M, S_.K, S_.N, S_.G, S_.tm, S_.tk, S_.tn, S_.q
    q_out = q if out_itemsize is None else sp.Integer(out_itemsize)
    Nt, Kt = sp.ceiling(N / tn), sp.ceiling(K / tk)
    visits = M / tm + (G - 1) - sp.floor((G - 1) * Gcd(M / G, tm) / tm)
    steps = Nt * Kt * visits
    return GmmClosedForm(
        row_tile_visits=visits, grid_steps=steps, lhs_bytes=Nt * q * M * K, rhs_bytes=Kt * q * M * N,
        out_bytes=q_out * G * K * N,
        mxu_flops=2 * _pad(tk, 8) * _pad(tm, mxu_tile) * _pad(tn, mxu_tile) * steps,
        useful_flops=2 * M * K * N)
