"""Symbolic costs: named FLOP, byte and transcendental terms summed into totals.

A :class:`Cost` is a sympy description of one op (or a sequence of ops, its
``parts``). Each term names the tensor or the computation it counts, so a reader
can see *where* bytes go. The totals are sympy sums of the terms; a numeric
evaluator is compiled once per cost with :func:`sympy.lambdify` and accepts
numpy arrays, so the symbolic expression is the single source of truth.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import attrs
import numpy as np
import sympy as sp

from perfmodel import symbols as S

KINDS = ("flops", "read_bytes", "write_bytes", "transcendentals")


@attrs.frozen
class Term:
    """One named contribution: ``kind`` is one of ``KINDS``."""

    name: str
    kind: str = attrs.field(validator=attrs.validators.in_(KINDS))
    expr: sp.Expr = attrs.field(converter=sp.sympify)


def flops(name: str, expr) -> Term:
    return Term(name, "flops", expr)


def read(name: str, expr) -> Term:
    return Term(name, "read_bytes", expr)


def write(name: str, expr) -> Term:
    return Term(name, "write_bytes", expr)


def transcendentals(name: str, expr) -> Term:
    return Term(name, "transcendentals", expr)


@attrs.frozen(slots=False)
class Cost:
    """Symbolic cost of an op: its own ``terms`` plus those of its ``parts``.

    Each part is a separate kernel (its own HBM round trip and launch); a leaf
    cost is one kernel. Term names of parts are prefixed with the part name
    when flattened (``up.x``).
    """

    name: str
    terms: tuple[Term, ...] = ()
    parts: tuple["Cost", ...] = ()
    description: str = ""
    # identical kernels each kernel here stands for (``scaled(L)``: L layers); one of them moves bytes / repeats
    repeats: sp.Expr = attrs.field(default=1, converter=sp.sympify)

    # -- symbolic view -----------------------------------------------------
    def scaled(self, factor, *, name: str | None = None, description: str | None = None) -> "Cost":
        """The same kernels with every term multiplied by ``factor`` (``L`` identical layers, a backward pass
        taken as 2x the forward): the part structure is kept, so each kernel stays its own roofline."""
        return Cost(name or self.name, terms=tuple(attrs.evolve(t, expr=factor * t.expr) for t in self.terms),
                    parts=tuple(p.scaled(factor) for p in self.parts),
                    description=self.description if description is None else description,
                    repeats=factor * self.repeats)

    def kernels(self) -> tuple[tuple[str, "Cost"], ...]:
        """The leaf kernels under this cost as ``(dotted path, cost)``, paths relative to this cost
        (``"layers.attention.qkv"``); a leaf cost is its own single kernel, path ``name``. A cost with both
        terms and parts counts its own terms as one more kernel, path ``name``."""
        if not self.parts:
            return ((self.name, self),)
        out = [(self.name, Cost(self.name, terms=self.terms, repeats=self.repeats))] if self.terms else []
        for part in self.parts:
            out += [(path if not part.parts else f"{part.name}.{path}", c) for path, c in part.kernels()]
        return tuple(out)

    def all_terms(self) -> tuple[Term, ...]:
        """Every term, parts included, with part-prefixed names."""
        out = list(self.terms)
        for part in self.parts:
            out += [attrs.evolve(t, name=f"{part.name}.{t.name}") for t in part.all_terms()]
        return tuple(out)

    def total(self, kind: str) -> sp.Expr:
        """Sum of all terms of one kind (``"flops"``, ``"read_bytes"``, ...)."""
        if kind == "hbm_bytes":
            return self.total("read_bytes") + self.total("write_bytes")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS + ('hbm_bytes',)}, got {kind=}")
        return sp.Add(*[t.expr for t in self.all_terms() if t.kind == kind])

    @property
    def flops(self) -> sp.Expr:
        return self.total("flops")

    @property
    def hbm_bytes(self) -> sp.Expr:
        return self.total("hbm_bytes")

    @property
    def read_bytes(self) -> sp.Expr:
        return self.total("read_bytes")

    @property
    def write_bytes(self) -> sp.Expr:
        return self.total("write_bytes")

    @property
    def transcendentals(self) -> sp.Expr:
        return self.total("transcendentals")

    @property
    def free_symbols(self) -> tuple[sp.Symbol, ...]:
        syms = set()
        for t in self.all_terms():
            syms |= t.expr.free_symbols
        return tuple(sorted(syms, key=lambda s: s.name))

    @property
    def argument_names(self) -> tuple[str, ...]:
        """Keyword arguments :meth:`evaluate` needs (``q`` is filled from the dtype)."""
        return tuple(S.arg_name(s) for s in self.free_symbols)

    def formula(self, kind: str = "hbm_bytes", *, latex: bool = False) -> str:
        expr = sp.simplify(self.total(kind))
        return sp.latex(expr) if latex else sp.pretty(expr, use_unicode=True)

    # -- numeric view ------------------------------------------------------
    @functools.cached_property
    def _compiled(self):
        syms = self.free_symbols
        terms = self.all_terms()
        exprs = [t.expr for t in terms]
        fn = sp.lambdify(syms, exprs, modules="numpy")
        return syms, terms, fn

    def evaluate(self, **dims) -> "CostValues":
        """Numbers for given dims (scalars or broadcastable numpy arrays).

        Pass every name in :attr:`argument_names`; ``q`` (bytes per element) may
        be given instead as ``dtype="bf16"``. Integer dims must be positive
        integers; a missing, extra or invalid argument raises ``ValueError``
        naming it, and so do dims whose cost is beyond the float range (naming
        them all and the total that overflowed).
        """
        syms, terms, fn = self._compiled
        dims = dict(dims)
        dtype = dims.pop("dtype", None)
        if dtype is not None and "q" not in dims:
            from perfmodel.hardware import dtype_bytes

            dims["q"] = dtype_bytes(dtype)
        needed = {S.arg_name(s): s for s in syms}
        # q is named as what a caller passes: dtype (predict sets q from it and refuses q itself)
        def names(ns):
            return ", ".join("dtype (sets q)" if n == "q" else n for n in ns)

        missing = [n for n in needed if n not in dims]
        if missing:
            raise ValueError(f"{self.name}: missing argument(s) {names(missing)}; needs {names(sorted(needed))}")
        extra = [n for n in dims if n not in needed]
        if extra:
            raise ValueError(f"{self.name}: unknown argument(s) {', '.join(extra)}; needs {names(sorted(needed))}")
        values = []
        for name, sym in needed.items():
            values.append(check_dim(name, dims[name], integer=bool(sym.is_integer)))
        with np.errstate(over="ignore", invalid="ignore"):  # a cost beyond the float range is refused below
            try:
                raw = fn(*values)
            except OverflowError:  # a Python float power (T**2) beyond the range: numpy floats give inf instead
                raw = fn(*(np.float64(v) if np.ndim(v) == 0 else v for v in values))
            shape = np.broadcast_shapes(*(np.shape(v) for v in values)) if values else ()
            by_kind = {kind: np.zeros(shape) for kind in KINDS}
            named = []
            for term, val in zip(terms, raw):
                val = np.broadcast_to(np.asarray(val, dtype=float), shape)
                by_kind[term.kind] = by_kind[term.kind] + val
                named.append(TermValue(term.name, term.kind, _scalar(val)))
            by_kind["hbm_bytes"] = by_kind["read_bytes"] + by_kind["write_bytes"]
        for kind, total in by_kind.items():  # a cost beyond the float range is no number: say which inputs did it
            if not np.all(np.isfinite(total)):
                at = tuple(int(i) for i in np.unravel_index(np.argmax(~np.isfinite(total)), shape))
                where = f" (at index {at[0] if len(at) == 1 else at})" if shape else ""
                given = ", ".join(f"{n}={_show(dims[n], shape, at)}" for n in dims if n in needed and n != "q")
                raise ValueError(f"{given}{where} give {kind}={np.asarray(total)[at].item()!r}: beyond the float "
                                 f"range (max {np.finfo(float).max:.3g}); use smaller dimensions")
        return CostValues(
            name=self.name,
            flops=_scalar(by_kind["flops"]),
            read_bytes=_scalar(by_kind["read_bytes"]),
            write_bytes=_scalar(by_kind["write_bytes"]),
            transcendentals=_scalar(by_kind["transcendentals"]),
            terms=tuple(named),
        )


def check_dim(name: str, value, *, integer: bool = True):
    """Validate one dimension: finite, positive and (if ``integer``) whole.

    Returns a float array or a Python number; raises ``ValueError`` naming the
    argument and the offending value.
    """
    arr = np.asarray(value)
    if arr.dtype == object and isinstance(value, int) and not isinstance(value, bool):
        try:  # an int beyond int64 (10**30) is still a number
            arr = np.asarray(float(value))
        except OverflowError:
            raise ValueError(f"{name} is beyond the float range, got {name}={value!r}") from None
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a number, got {name}={value!r}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if integer:
        bad |= np.asarray(arr != np.round(arr))
    if np.any(bad):
        first = arr[bad].flat[0].item() if arr.ndim else value
        kind = "a positive integer" if integer else "positive and finite"
        raise ValueError(f"{name} must be {kind}, got {name}={first!r}")
    return arr.astype(float) if arr.ndim else float(arr)


def _show(value, shape, at) -> str:
    """A dimension as the caller gave it (an int stays exact), or its element ``at`` of the broadcast ``shape``."""
    if np.ndim(value) == 0:
        return repr(value.item() if isinstance(value, np.generic) else value)
    return repr(np.broadcast_to(value, shape)[at].item())


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


@attrs.frozen
class TermValue:
    name: str
    kind: str
    value: object  # float or numpy array


@attrs.frozen
class CostValues:
    """A :class:`Cost` evaluated at numbers (floats or numpy arrays)."""

    name: str
    flops: object
    read_bytes: object
    write_bytes: object
    transcendentals: object
    terms: tuple[TermValue, ...]

    @property
    def hbm_bytes(self):
        return self.read_bytes + self.write_bytes

    def term(self, name: str) -> TermValue:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term {name!r}; terms: {[t.name for t in self.terms]}")

    def bytes_by_tensor(self) -> Mapping[str, float]:
        """Read plus write bytes per term name (a view for explanations)."""
        out: dict[str, float] = {}
        for t in self.terms:
            if t.kind in ("read_bytes", "write_bytes"):
                out[t.name] = out.get(t.name, 0.0) + t.value
        return out
