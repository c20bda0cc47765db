"""The Python entry point: ``predict(op, chip=..., dtype=..., **dims)``."""

from __future__ import annotations

import attrs

from perfmodel.cost import Cost, CostValues
from perfmodel.hardware import canonical_dtype, dtype_bytes, format_si, get_chip
from perfmodel.ops import OPS, check_dims, get_op
from perfmodel.roofline import Roofline, roofline


@attrs.frozen(kw_only=True)
class Prediction:
    """An op's cost numbers, its roofline on a chip, and its symbolic cost."""

    op: str
    chip: str
    dtype: str
    cost: CostValues
    roofline: Roofline
    parts: tuple[tuple[str, Roofline], ...]  # top-level parts; a composite part's roofline is its aggregate
    symbolic: Cost = attrs.field(repr=False)
    kernels: tuple[tuple[str, Roofline], ...] = ()  # every leaf kernel, dotted path ("layers.attention.qkv")

    @property
    def formula(self):
        """Sympy expressions of the totals (``.formula.flops``, ``.formula.hbm_bytes``)."""
        return Formula(flops=self.symbolic.flops, hbm_bytes=self.symbolic.hbm_bytes,
                       transcendentals=self.symbolic.transcendentals)

    @property
    def time_s(self):
        """Roofline lower bound: ``sum over leaf kernels of max(compute_s, memory_s)`` (perfect overlap
        within a kernel, none across kernels: each is its own HBM round trip)."""
        return self.time_of("")

    def time_of(self, part: str) -> float:
        """Lower bound of the leaf kernels under ``part`` (a dotted path, ``""`` for the whole op)."""
        if not self.kernels:
            return self.roofline.lower_s
        inside = [r.lower_s for path, r in self.kernels
                  if not part or path == part or path.startswith(part + ".")]
        if not inside:
            raise ValueError(f"{self.op} has no part {part!r}; kernels: {[path for path, _ in self.kernels]}")
        return sum(inside)


@attrs.frozen
class Formula:
    flops: object
    hbm_bytes: object
    transcendentals: object


def split_options(op: str, kwargs: dict) -> tuple[dict, dict]:
    """Separate an op's structural options from its dimensions."""
    spec = OPS.get(op)
    if spec is None:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    options = {k: v for k, v in kwargs.items() if k in spec.options}
    dims = {k: v for k, v in kwargs.items() if k not in spec.options}
    return options, dims


def predict(op: str, *, chip: str = "v5e", dtype: str = "bf16", **dims_and_options) -> Prediction:
    """Predict FLOPs, bytes and roofline time of ``op`` on ``chip``.

    ``dims_and_options`` are the op's dimensions (``M=, K=, N=`` for matmul;
    see ``perfmodel.ops.OPS[op].builder`` for each op's letters) as numbers
    or numpy arrays, and its structural options (``glu=True``). Multi-kernel
    ops (e.g. the unfused MoE FFN) report a roofline per top-level part in ``parts`` and per leaf kernel in
    ``kernels`` (the attention and FFN kernels inside ``transformer_layer``); ``time_s`` sums the leaf
    kernels' lower bounds.

    >>> p = predict("matmul", chip="v5e", M=8192, K=8192, N=8192)
    >>> p.roofline.bound
    'compute'
    """
    c = get_chip(chip)
    dt = canonical_dtype(dtype)
    c.peak_flops_per_s(dt)  # refuses a dtype the chip lacks
    options, dims = split_options(op, dims_and_options)
    if "q" in dims:
        raise ValueError(f"q (bytes per element) is set by dtype (dtype={dt!r}: q={dtype_bytes(dt)}); "
                         f"pass dtype instead of q={dims['q']!r}")
    check_dims(dims)
    cost = get_op(op, **options)
    values = cost.evaluate(q=dtype_bytes(dt), **dims)
    def rooflines(named):
        out = []
        for name, part in named:
            v = part.evaluate(**_dims_for(part, dims, dt))
            out.append((name, roofline(v.flops, v.hbm_bytes, c, dt)))
        return tuple(out)

    total = roofline(values.flops, values.hbm_bytes, c, dt)
    kernels = rooflines(cost.kernels()) if cost.parts else ((cost.name, total),)
    leaf = dict(kernels)  # a leaf part is its own kernel: evaluated once
    parts = tuple((p.name, leaf[p.name]) if not p.parts else rooflines([(p.name, p)])[0] for p in cost.parts)
    return Prediction(op=op, chip=c.name, dtype=dt, cost=values, roofline=total, parts=parts, symbolic=cost,
                      kernels=kernels)


def beyond_hbm(op: str, *, chip: str = "v5e", dtype: str = "bf16", **dims_and_options) -> str | None:
    """Why the tensors of ``op`` at these (scalar) dims cannot be in ``chip``'s HBM, or None when they can.

    Every kernel reads its inputs and writes its outputs once (ideal traffic), so its bytes are the operands it
    needs resident at once; a kernel that stands for ``repeats`` identical ones (``L`` layers, the backward's 2x)
    needs its bytes / repeats. The largest need above the chip's HBM capacity is described, naming the
    arguments, the bytes and the HBM: ``"M=..., K=..., N=... in bf16 needs 3.2e+286 PB of operands, more than
    v5e's 16 GB HBM"``. A whole op's traffic may exceed the HBM (kernels run one after another); one kernel's
    operands may not.
    """
    c = get_chip(chip)
    dt = canonical_dtype(dtype)
    options, dims = split_options(op, dims_and_options)
    kernels = get_op(op, **options).kernels()
    worst = None
    for path, kernel in kernels:
        one = kernel if kernel.repeats == 1 else kernel.scaled(1 / kernel.repeats)
        need = one.evaluate(**_dims_for(one, dims, dt)).hbm_bytes
        if worst is None or need > worst[1]:
            worst = (path, need)
    if not c.hbm_bytes or worst[1] <= c.hbm_bytes:  # hbm_bytes 0: a host whose memory size is unknown
        return None
    path, need = worst
    given = ", ".join(f"{k}={v!r}" for k, v in dims_and_options.items())
    where = "" if len(kernels) == 1 else f" in kernel {path}"
    return (f"{given} in {dt} needs {format_si(need, 'B')} of operands{where}, more than {c.name}'s "
            f"{format_si(c.hbm_bytes, 'B')} HBM")


def _dims_for(part: Cost, dims: dict, dt: str) -> dict:
    need = set(part.argument_names)
    out = {k: v for k, v in dims.items() if k in need}
    if "q" in need:
        out["q"] = dtype_bytes(dt)
    return out
