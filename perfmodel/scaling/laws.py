"""The Chinchilla law and its compute-optimal allocation, derived by sympy.

Notation
========  ===============================================================
symbol    meaning
========  ===============================================================
N         parameters that cost FLOPs (active, non-embedding for an MoE)
D         training tokens
C         training compute in FLOPs, ``C = c_f N D``
c_f       FLOPs per parameter per token (6: forward 2 + backward 4)
E_irr     irreducible loss (Chinchilla's ``E``; renamed so it cannot be
          confused with the number of experts ``E``)
A, alpha  parameter term ``A / N^alpha``
B, beta   data term ``B / D^beta``
a, b      allocation exponents: ``N_opt ~ C^a``, ``D_opt ~ C^b``
========  ===============================================================

The law (Hoffmann et al. 2022, arXiv 2203.15556, eq. 2)::

    L(N, D) = E_irr + A / N^alpha + B / D^beta

Minimising ``L`` on the constraint ``C = c_f N D`` is done symbolically
(:func:`compute_optimal_exprs`: substitute ``D = C / (c_f N)``, solve
``dL/dN = 0``) and compiled with ``lambdify``; nothing below types the
closed form by hand. The result is the familiar

    N_opt = G (C / c_f)^(beta / (alpha + beta)),  G = (alpha A / (beta B))^(1 / (alpha + beta))

and the tests check it against a brute-force argmin.

The law constants ``E_irr, A, B, alpha, beta, c_f`` are sympy symbols local
to this module (they are parameters of the law, not shape symbols); ``N, D, C``
are :data:`perfmodel.symbols.N_params`, ``D_tokens``, ``C_flops``.
"""

from __future__ import annotations

import functools
import math
import numbers

import attrs
import numpy as np
import sympy as sp

from perfmodel import symbols as S

E_irr, A_coef, B_coef = sp.symbols("E_irr A B", positive=True)
alpha, beta = sp.symbols("alpha beta", positive=True)
c_f = sp.Symbol("c_f", positive=True)

N, D, C = S.N_params, S.D_tokens, S.C_flops

LAW_CONSTANTS = (E_irr, A_coef, B_coef, alpha, beta)


def chinchilla_loss_expr() -> sp.Expr:
    """``L(N, D) = E_irr + A N^-alpha + B D^-beta``."""
    return E_irr + A_coef / N**alpha + B_coef / D**beta


@attrs.frozen
class ComputeOptimalExprs:
    """Closed forms of the compute-optimal allocation as functions of ``C``.

    ``params`` = N_opt(C), ``tokens`` = D_opt(C), ``loss`` = L(N_opt, D_opt),
    ``tokens_per_param`` = D_opt / N_opt, ``a`` and ``b`` the exponents of C
    in N_opt and D_opt (d log N_opt / d log C), ``loss_exponent`` the local
    exponent of the loss frontier ``g(C) = d log L* / d log C``.

    For this law ``g(C) = -gamma (L* - E_irr) / L*`` with ``gamma = alpha beta / (alpha + beta)``
    (the tests check the derived form against it): between ``-gamma`` and 0, and rising towards 0
    as C grows, since ``L* - E_irr ~ C^-gamma`` shrinks relative to ``L*``. A frontier of this
    form can only flatten in log-log, never steepen.
    """

    params: sp.Expr
    tokens: sp.Expr
    loss: sp.Expr
    tokens_per_param: sp.Expr
    a: sp.Expr
    b: sp.Expr
    loss_exponent: sp.Expr
    # g(C) L* / (L* - E_irr), derived and free of C (-gamma): g from L* alone where C^beta overflows
    loss_exponent_per_excess: sp.Expr


@functools.cache
def compute_optimal_exprs() -> ComputeOptimalExprs:
    """Derive N_opt(C), D_opt(C), L*(C), D/N and the exponents from the law.

    Substitutes ``D = C / (c_f N)`` into :func:`chinchilla_loss_expr`, solves
    ``dL/dN = 0`` for N (the unique positive root: L is convex in log N on the
    constraint), and simplifies. Raises if sympy does not find exactly one root.
    """
    on_constraint = chinchilla_loss_expr().subs(D, C / (c_f * N))
    roots = sp.solve(sp.diff(on_constraint, N), N)
    if len(roots) != 1:
        raise RuntimeError(f"expected one stationary point of L(N, C/(c_f N)), sympy found {roots}")
    n_opt = sp.powsimp(sp.simplify(roots[0]), force=True)
    d_opt = sp.powsimp(sp.simplify(C / (c_f * n_opt)), force=True)
    loss = sp.simplify(chinchilla_loss_expr().subs({N: n_opt, D: d_opt}))
    ratio = sp.powsimp(sp.simplify(d_opt / n_opt), force=True)
    a = sp.simplify(sp.expand_log(sp.log(n_opt), force=True).diff(C) * C)
    b = sp.simplify(sp.expand_log(sp.log(d_opt), force=True).diff(C) * C)
    loss_exponent = sp.simplify(sp.diff(loss, C) * C / loss)
    per_excess = sp.simplify(loss_exponent * loss / (loss - E_irr))
    if C in per_excess.free_symbols:
        raise RuntimeError(f"expected g(C) L* / (L* - E_irr) free of C, sympy found {per_excess}")
    return ComputeOptimalExprs(params=n_opt, tokens=d_opt, loss=loss, tokens_per_param=ratio, a=a, b=b,
                               loss_exponent=loss_exponent, loss_exponent_per_excess=per_excess)


_ARGS = (C, c_f, E_irr, A_coef, B_coef, alpha, beta)


@functools.cache
def _compiled():
    e = compute_optimal_exprs()
    f = {name: sp.lambdify(_ARGS, getattr(e, name), "numpy")
         for name in ("params", "tokens", "loss", "tokens_per_param", "loss_exponent")}
    # log N_opt expanded into a sum of logs: finite wherever N_opt is representable, even when the
    # direct form's intermediate C^beta overflows (beta log10 C > 308).
    f["log_params"] = sp.lambdify(_ARGS, sp.expand_log(sp.log(e.params), force=True), "numpy")
    f["log_tokens"] = sp.lambdify(_ARGS, sp.expand_log(sp.log(e.tokens), force=True), "numpy")
    f["loss_exponent_per_excess"] = sp.lambdify((alpha, beta), e.loss_exponent_per_excess, "numpy")
    f["a"] = sp.lambdify((alpha, beta), e.a, "numpy")
    f["b"] = sp.lambdify((alpha, beta), e.b, "numpy")
    f["law"] = sp.lambdify((N, D, E_irr, A_coef, B_coef, alpha, beta), chinchilla_loss_expr(), "numpy")
    return f


@attrs.frozen(kw_only=True)
class ComputeOptimal:
    """Compute-optimal allocation at one or more budgets (arrays broadcast with ``compute_flops``)."""

    law: str
    compute_flops: np.ndarray
    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    tokens_per_param: np.ndarray
    a: float
    b: float
    loss_exponent: np.ndarray  # d log L* / d log C at compute_flops (ComputeOptimalExprs.loss_exponent)


@attrs.frozen(kw_only=True)
class ChinchillaLaw:
    """``L(N, D) = E_irr + A / N^alpha + B / D^beta`` with numbers plugged in.

    ``flops_per_param_token`` is ``c_f`` in ``C = c_f N D`` (6 for the 6ND rule).
    """

    name: str = "chinchilla"
    E_irr: float
    A: float
    B: float
    alpha: float
    beta: float
    flops_per_param_token: float = 6.0

    def __attrs_post_init__(self):
        for f in ("E_irr", "A", "B", "alpha", "beta", "flops_per_param_token"):
            v = getattr(self, f)
            if not (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
                    and v >= 0):
                raise ValueError(f"{f} must be a finite non-negative number, got {f}={v!r}")
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0 or self.flops_per_param_token <= 0:
            raise ValueError(f"A, B, alpha, beta and flops_per_param_token must be positive, got A={self.A}, "
                             f"B={self.B}, alpha={self.alpha}, beta={self.beta}, "
                             f"flops_per_param_token={self.flops_per_param_token}")

    @property
    def constants(self) -> tuple[float, float, float, float, float]:
        return (self.E_irr, self.A, self.B, self.alpha, self.beta)

    def loss(self, params, tokens):
        """L(N, D) (numpy broadcasting); N and D must be finite and positive (the law has no value at 0)."""
        from perfmodel.cost import check_dim

        n, d = check_dim("params", params, integer=False), check_dim("tokens", tokens, integer=False)
        return _compiled()["law"](np.asarray(n, float), np.asarray(d, float), *self.constants)

    def subs(self) -> dict:
        """Sympy substitution of this law's constants."""
        return {E_irr: self.E_irr, A_coef: self.A, B_coef: self.B, alpha: self.alpha, beta: self.beta,
                c_f: self.flops_per_param_token}

    def optimal(self, compute_flops) -> ComputeOptimal:
        """N_opt, D_opt, L*, D/N at ``compute_flops`` (scalar or array) from the derived closed form.

        Budgets where the direct form overflows (its ``C^beta`` passes 1e308 for steep fitted laws)
        are recomputed from the derived ``log N_opt``, so a representable optimum is never inf or nan.
        """
        c = np.asarray(compute_flops, float)
        if not np.all(np.isfinite(c)) or np.any(c <= 0):
            raise ValueError(f"compute_flops must be finite and positive, got {compute_flops!r}")
        f = _compiled()
        # numpy scalars: an extreme fitted law overflows to inf instead of raising OverflowError.
        args = (c, *(np.float64(v) for v in (self.flops_per_param_token, *self.constants)))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            params, tokens = np.asarray(f["params"](*args)), np.asarray(f["tokens"](*args))
            loss = np.asarray(f["loss"](*args))
            loss_exponent = np.asarray(f["loss_exponent"](*args))
            bad = ~(np.isfinite(params) & np.isfinite(tokens) & (params > 0) & (tokens > 0) & np.isfinite(loss)
                     & np.isfinite(loss_exponent))
            if np.any(bad):  # an intermediate of the direct form overflowed: redo those budgets in logs
                log_n = np.broadcast_to(np.asarray(f["log_params"](*args), float), bad.shape)
                log_d = np.broadcast_to(np.asarray(f["log_tokens"](*args), float), bad.shape)
                params, tokens = np.where(bad, np.exp(log_n), params), np.where(bad, np.exp(log_d), tokens)
                loss = np.where(bad, f["law"](params, tokens, *self.constants), loss)
                per_excess = f["loss_exponent_per_excess"](self.alpha, self.beta)  # derived: -gamma
                loss_exponent = np.where(bad, per_excess * (loss - self.E_irr) / loss, loss_exponent)
            ratio = tokens / params  # = the derived tokens_per_param, better conditioned
        return ComputeOptimal(
            law=self.name, compute_flops=c, params=params, tokens=tokens, loss=loss, tokens_per_param=ratio,
            a=float(f["a"](self.alpha, self.beta)), b=float(f["b"](self.alpha, self.beta)),
            loss_exponent=loss_exponent)


def chinchilla_hoffmann() -> ChinchillaLaw:
    """Hoffmann et al. 2022 Approach 3, unrounded (FACTS section 6: E, A, B = exp(e, a, b))."""
    return ChinchillaLaw(name="chinchilla", E_irr=math.exp(0.5267228), A=math.exp(6.0073404),
                         B=math.exp(6.0179186), alpha=0.33917084, beta=0.2849083)


def chinchilla_epoch() -> ChinchillaLaw:
    """Epoch AI's refit of Chinchilla's points (Besiroglu et al. 2024; FACTS section 5)."""
    return ChinchillaLaw(name="epoch", E_irr=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def brute_force_optimal(law: ChinchillaLaw, compute_flops: float, *, points: int = 200_001,
                        log10_span: float = 6.0) -> tuple[float, float, float]:
    """(N, D, L) minimising ``law`` on ``C = c_f N D`` by a dense grid in log N (a check, not a method)."""
    guess = float(law.optimal(compute_flops).params)
    n = np.logspace(math.log10(guess) - log10_span / 2, math.log10(guess) + log10_span / 2, points)
    d = compute_flops / (law.flops_per_param_token * n)
    loss = law.loss(n, d)
    i = int(np.argmin(loss))
    if i in (0, points - 1):
        raise RuntimeError("brute-force minimum at the edge of the grid; widen log10_span")
    return float(n[i]), float(d[i]), float(loss[i])
