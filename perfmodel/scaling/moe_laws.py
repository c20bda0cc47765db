"""MoE scaling laws and their per-expert-count compute-optimal allocation.

Two published forms (constants in ``../shared/FACTS.md`` section 6):

1. **Joint law** (Ludziejewski et al. 2025, arXiv 2502.05172), in the number
   of experts ``E`` (top-1 routing, ``N`` = active parameters)::

       L(N, D, E) = a E'^delta N^(alpha + gamma ln E') + b E'^omega D^(beta + zeta ln E') + c
       1/E' = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1/E_max

   (``alpha, beta`` are negative in their parameterisation.) At a fixed E it
   *is* a Chinchilla law with ``E_irr = c``, ``A = a E'^delta``,
   ``alpha_E = -(alpha + gamma ln E')``, ``B = b E'^omega``,
   ``beta_E = -(beta + zeta ln E')``; :meth:`JointMoELaw.at_experts` builds that
   law *by substitution into the sympy expression* and the allocation comes
   from :func:`perfmodel.scaling.laws.compute_optimal_exprs` with
   ``C = 6 N_act D`` (router FLOPs neglected: their table at 1e20 FLOPs
   satisfies 6 N D = C to 1%).

2. **Fine-grained law** (Krajewski et al. 2024, arXiv 2402.07871), at a fixed
   expansion rate (total expert width / dense FFN width, their ``E``) and
   granularity ``G``::

       L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta

   with ``N`` the total non-embedding parameters. FLOPs count active
   parameters: assuming a block of ``4 d^2`` attention and ``8 d^2`` FFN
   weights per unit of expansion, ``N_total / N_act = (1 + 2 E) / 3`` so
   ``C = 6 N_act D = c_f' N_total D`` with ``c_f' = 6 * 3 / (1 + 2 E)``.
   Router FLOPs (``~14 d E G`` per token per layer) are neglected, so this
   form always prefers larger G; give ``granularity`` explicitly.

Symbols: ``E`` is :data:`perfmodel.symbols.E` (experts), ``G`` is
:data:`perfmodel.symbols.G`; the law constants are local sympy symbols.
"""

from __future__ import annotations

import functools
import math

import attrs
import numpy as np
import sympy as sp

from perfmodel import symbols as S
from perfmodel.scaling import laws

# Joint-law constants (local symbols; names as in Ludziejewski et al. 2025).
ja, jalpha, jdelta, jgamma, jb, jbeta, jomega, jzeta, jc = sp.symbols(
    "a_J alpha_J delta_J gamma_J b_J beta_J omega_J zeta_J c_J", real=True)
E_start, E_max = sp.symbols("E_start E_max", positive=True)
E_hat = sp.Symbol("E'", positive=True)

N, D, C = laws.N, laws.D, laws.C


def effective_experts_expr() -> sp.Expr:
    """``E'(E)``: the saturating transform of Clark et al. 2022 used by the joint law."""
    return 1 / (1 / (S.E - 1 + 1 / (1 / E_start - 1 / E_max)) + 1 / E_max)


def joint_loss_expr(*, in_terms_of_e_hat: bool = False) -> sp.Expr:
    """The joint law ``L(N, D, E)`` (or ``L(N, D, E')`` if ``in_terms_of_e_hat``)."""
    e = E_hat
    expr = (ja * e**jdelta * N**(jalpha + jgamma * sp.log(e))
            + jb * e**jomega * D**(jbeta + jzeta * sp.log(e)) + jc)
    return expr if in_terms_of_e_hat else expr.subs(E_hat, effective_experts_expr())


@functools.cache
def joint_as_chinchilla_exprs() -> dict[sp.Symbol, sp.Expr]:
    """The Chinchilla constants of the joint law at fixed E', read off the expression.

    Matches ``joint_loss_expr`` term by term to ``E_irr + A N^-alpha + B D^-beta``
    (the N term is the one containing N, etc.) and returns ``{E_irr: ..., A: ...,
    alpha: ..., B: ..., beta: ...}`` in terms of E' and the joint constants.
    """
    expr = sp.expand(joint_loss_expr(in_terms_of_e_hat=True))
    n_term = sum(t for t in expr.args if t.has(N))
    d_term = sum(t for t in expr.args if t.has(D))
    const = sp.simplify(expr - n_term - d_term)
    out = {laws.E_irr: const}
    for term, var, coef, expo in ((n_term, N, laws.A_coef, laws.alpha), (d_term, D, laws.B_coef, laws.beta)):
        power = sp.simplify(sp.expand_log(sp.log(term), force=True).diff(var) * var)  # d log term / d log var
        out[expo] = sp.simplify(-power)
        out[coef] = sp.simplify(term / var**power)
    return out


def check_granularity(granularity, *, name: str = "granularity") -> None:
    """``ValueError`` naming ``name`` and the value unless the fine-grained law's ``G`` is a finite number >= 1."""
    if not (math.isfinite(granularity) and granularity >= 1):
        raise ValueError(f"{name} must be a finite number >= 1, got {name}={granularity!r}")


@attrs.frozen(kw_only=True)
class JointMoELaw:
    """Ludziejewski et al. 2025 joint law; defaults are their fitted constants (FACTS section 6)."""

    name: str = "joint-moe"
    a: float = 35.91
    alpha: float = -0.1889
    delta: float = -0.2285
    gamma: float = 0.0098
    b: float = 35.98
    beta: float = -0.1775
    omega: float = 0.5529
    zeta: float = -0.0259
    E_start: float = 2.0732
    E_max: float = 290.4521
    c: float = 1.3637

    def _subs(self) -> dict:
        return {ja: self.a, jalpha: self.alpha, jdelta: self.delta, jgamma: self.gamma, jb: self.b,
                jbeta: self.beta, jomega: self.omega, jzeta: self.zeta, jc: self.c,
                E_start: self.E_start, E_max: self.E_max}

    def effective_experts(self, n_experts: float) -> float:
        """E' at ``n_experts``."""
        if not (math.isfinite(n_experts) and n_experts >= 1):
            raise ValueError(f"n_experts must be >= 1, got n_experts={n_experts!r}")
        return float(effective_experts_expr().subs(self._subs()).subs(S.E, n_experts))

    def loss(self, params_active, tokens, n_experts: float):
        """L(N_act, D, E) (numpy broadcasting over N and D)."""
        return self.at_experts(n_experts).loss(params_active, tokens)

    def at_experts(self, n_experts: float) -> laws.ChinchillaLaw:
        """The Chinchilla law this joint law reduces to at ``n_experts`` (C = 6 N_act D)."""
        e_hat = self.effective_experts(n_experts)
        sub = {**self._subs(), E_hat: e_hat}
        k = {sym: float(expr.subs(sub)) for sym, expr in joint_as_chinchilla_exprs().items()}
        return laws.ChinchillaLaw(name=f"{self.name} E={n_experts:g}", E_irr=k[laws.E_irr],
                                  A=k[laws.A_coef], B=k[laws.B_coef], alpha=k[laws.alpha],
                                  beta=k[laws.beta])

    def optimal(self, compute_flops, n_experts: float) -> laws.ComputeOptimal:
        """Compute-optimal active parameters and tokens at ``n_experts``."""
        return self.at_experts(n_experts).optimal(compute_flops)


fg, fgamma = sp.symbols("g gamma_G", positive=True)


def fine_grained_loss_expr() -> sp.Expr:
    """Krajewski et al. 2024: ``c + (g / G^gamma + a) / N^alpha + b / D^beta``."""
    return laws.E_irr + (fg / S.G**fgamma + laws.A_coef) / N**laws.alpha + laws.B_coef / D**laws.beta


@functools.cache
def fine_grained_as_chinchilla_a() -> sp.Expr:
    """The Chinchilla ``A`` of the fine-grained law at fixed G: the coefficient of ``N^-alpha``."""
    return sp.collect(sp.expand(fine_grained_loss_expr()), N**-laws.alpha, evaluate=False)[N**-laws.alpha]


@attrs.frozen(kw_only=True)
class FineGrainedMoELaw:
    """Krajewski et al. 2024 fine-grained MoE law (MoE constants, FACTS section 6)."""

    name: str = "fine-grained"
    a: float = 18.1
    alpha: float = 0.115
    b: float = 30.8
    beta: float = 0.147
    g: float = 2.1
    gamma: float = 0.58
    c: float = 0.47

    @staticmethod
    def total_per_active(expansion: float) -> float:
        """``N_total / N_act = (4 + 8 E) / 12`` for attention 4d^2 + FFN 8d^2 per expansion unit."""
        if not (math.isfinite(expansion) and expansion >= 1):
            raise ValueError(f"expansion rate must be >= 1, got expansion={expansion!r}")
        return (1 + 2 * expansion) / 3

    def at_granularity(self, granularity: float, expansion: float) -> laws.ChinchillaLaw:
        """The Chinchilla law in N_total at fixed G, with ``c_f = 6 / (N_total / N_act)``."""
        check_granularity(granularity)
        a_of_g = fine_grained_as_chinchilla_a()
        a_eff = float(a_of_g.subs({fg: self.g, fgamma: self.gamma, S.G: granularity, laws.A_coef: self.a}))
        return laws.ChinchillaLaw(name=f"{self.name} G={granularity:g} E={expansion:g}", E_irr=self.c,
                                  A=a_eff, B=self.b, alpha=self.alpha, beta=self.beta,
                                  flops_per_param_token=6.0 / self.total_per_active(expansion))

    def optimal(self, compute_flops, *, granularity: float, expansion: float) -> laws.ComputeOptimal:
        """Compute-optimal total parameters (``.params``) and tokens; active = params / total_per_active."""
        return self.at_granularity(granularity, expansion).optimal(compute_flops)


def optimal_table(compute_flops: float, experts=(1, 2, 4, 8, 16, 32, 64), law: JointMoELaw | None = None):
    """Rows ``(E, N_act, D, D/N_act, L*)`` of the joint law's compute-optimal allocation."""
    law = law or JointMoELaw()
    rows = []
    for e in experts:
        o = law.optimal(compute_flops, e)
        rows.append((e, float(o.params), float(o.tokens), float(o.tokens_per_param), float(o.loss)))
    return np.array(rows)
