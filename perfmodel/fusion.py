"""When does the fused MoE FFN kernel beat ``jax.lax.ragged_dot``? Prediction and explanation.

Two paths for the MoE FFN on ``R = tokens x k`` rows sorted by expert
(``E`` experts, width ``D``, hidden ``F``):

* **ragged_dot path** (what users write today): XLA's ``ragged_dot`` for up
  (and gate), an elementwise activation pass, ``ragged_dot`` for down. Each
  ragged_dot is XLA's Mosaic grouped-matmul kernel with the tiling XLA picks
  (:mod:`perfmodel.xla_tiling`), walked by the tiling model
  (:func:`perfmodel.tiling.predict.xla_ragged_dot_time`); the activation pass
  is a memory-bound XLA fusion, timed as a roofline of
  :func:`perfmodel.ops.activation`'s bytes plus one launch.
* **fused path**: the Pallas kernel of :mod:`kernels.fused_moe`, whose own
  :class:`~perfmodel.tiling.spec.KernelSpec` is walked.

Both are timed with the same :class:`~perfmodel.tiling.params.TimingParams`
(default: the constants fitted on the tokamax v5e timings, used unchanged on
every chip). The explanation attributes the byte difference to its causes:
the ``[R, F]`` intermediate round trip (removed by fusion), weight re-reads
per token tile (paid by fusion: the fused kernel streams every expert's
weights once per row tile it visits), ``x`` re-reads per output column tile
(paid by ragged_dot), and fixed overheads (launches, grid steps).
"""

from __future__ import annotations

import attrs
import numpy as np

from perfmodel.hardware import canonical_dtype, dtype_bytes, get_tpu_chip
from perfmodel.ops import check_dims
from perfmodel.tiling.params import FITTED, TimingParams

DISTRIBUTIONS = ("uniform", "random", "skewed")

MAX_ROWS = 2**30
"""Most rows ``R = tokens k`` a prediction takes. The fused kernel's group metadata is int32
(:func:`kernels.fused_spec.make_group_metadata`) and holds row counts padded to whole tiles plus a
tile (``ends + tm - 1``): 2**30 keeps them below int32's 2**31 - 1 for any row tile up to 2**30."""

MAX_EXPERTS = 2**20
"""Most experts ``E`` a prediction takes (a million, as PEER-style fine-grained MoE): the model builds
per-expert arrays and walks a grid step per expert, so memory and time grow with E."""

MAX_GRID_STEPS = 2**24
"""Most grid steps of the walked candidate with the smallest tiles (``tm = tf = 128``):
``(ceil(R / 128) + E) F / 128`` (:func:`kernels.fused_spec.visit_stride` times the F chunks; one F chunk
when 128 does not divide F). Memory grows with the steps walked: ``/usr/bin/time -v perfmodel fusion
--chip v5e --tokens 16777216 --D 2048 --F 8192 --E 8`` (2**23 steps) peaked at 2.2 GB resident in 25 s
on the 2-core AMD EPYC (2026-12-04), so the limit is about 4 GB."""


def check_fusion_shape(*, tokens: int, D: int, F: int, E: int, k: int = 1, walk: bool = True) -> None:
    """Refuse an MoE FFN shape no prediction can be made for, before any work: every dimension a positive
    integer, ``k <= E``, rows ``R = tokens k <= MAX_ROWS``, ``E <= MAX_EXPERTS``, and the smallest
    candidate tiles' grid within :data:`MAX_GRID_STEPS`.

    ``walk=False`` skips only the grid-step check, for callers that evaluate closed forms and walk no grid
    (:func:`perfmodel.fusion_map.speedup_map`); the other checks stay.

    The one home of these checks (:func:`predict_fusion`, the fusion map, and commands before their first row).
    """
    for name, v in (("tokens", tokens), ("D", D), ("F", F), ("E", E), ("k", k)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    check_dims({"k": k, "E": E})
    if E > MAX_EXPERTS:
        raise ValueError(f"E must be at most {MAX_EXPERTS} (MAX_EXPERTS: per-expert arrays and grid steps), "
                         f"got E={E}")
    rows = int(tokens) * int(k)
    if rows > MAX_ROWS:
        raise ValueError(f"rows = tokens * k must be at most {MAX_ROWS} (MAX_ROWS: the fused kernel's group "
                         f"metadata is int32), got tokens={tokens}, k={k}: rows={rows}")
    if not walk:
        return
    from kernels.fused_spec import visit_stride

    # candidate_tiles' smallest: tm = 128 (or one or two tiles below it), tf = 128 when it divides F, else F
    steps = visit_stride(m=rows, tm=128, num_groups=int(E)) * (int(F) // 128 if F % 128 == 0 else 1)
    if steps > MAX_GRID_STEPS:
        raise ValueError(f"tokens={tokens}, k={k}, E={E}, F={F} need {steps} grid steps for the smallest tiles "
                         f"((ceil(rows / 128) + E) * F / 128), more than the {MAX_GRID_STEPS} the model walks "
                         "(MAX_GRID_STEPS, about 4 GB)")


def group_sizes(rows: int, experts: int, distribution: str = "uniform", *, seed: int = 0,
                zipf_s: float = 1.2) -> np.ndarray:
    """Rows per expert summing to ``rows``.

    * ``uniform``: as equal as possible (the first ``rows mod E`` experts get one more);
    * ``random``: multinomial with equal probabilities (a balanced router's noise);
    * ``skewed``: multinomial with Zipf probabilities ``p_e ~ 1 / (e + 1)^zipf_s``
      (a router with popular experts).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got distribution={distribution!r}")
    for name, v in (("rows", rows), ("experts", experts)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    if distribution == "uniform":
        gs = np.full(experts, rows // experts, np.int64)
        gs[: rows % experts] += 1
        return gs
    rng = np.random.default_rng(seed)
    p = np.ones(experts) if distribution == "random" else 1.0 / np.arange(1, experts + 1) ** zipf_s
    return rng.multinomial(rows, p / p.sum()).astype(np.int64)


@attrs.frozen(kw_only=True)
class OpTime:
    """One kernel of a path: time, work, traffic by tensor, and what bounds it."""

    name: str
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    executed_flops: float
    useful_flops: float
    hbm_bytes: float
    bytes_by_tensor: tuple[tuple[str, float], ...]
    grid_steps: int
    tiles: str

    @property
    def bound(self) -> str:
        """The largest of compute, memory (DMA) and fixed overhead time."""
        return max((self.compute_s, "compute"), (self.memory_s, "memory"), (self.overhead_s, "overhead"))[1]


@attrs.frozen(kw_only=True)
class FusionPrediction:
    """Predicted times of both paths, the speedup, and why."""

    chip: str
    tokens: int
    rows: int
    D: int
    F: int
    E: int
    k: int
    glu: bool
    activation: str
    dtype: str
    distribution: str
    group_sizes: tuple[int, ...]
    fused_tiles: tuple[int, int]
    fused: OpTime
    unfused: tuple[OpTime, ...]
    intermediate_bytes: float  # [R, F] traffic the ragged_dot path pays and fusion removes
    weight_reread_bytes: float  # weight traffic beyond one read per expert, fused path
    x_reread_bytes: float  # x traffic beyond one read per projection, ragged_dot path
    params_source: str
    tiling_sources: tuple[str, ...]

    @property
    def fused_time_s(self) -> float:
        return self.fused.time_s

    @property
    def unfused_time_s(self) -> float:
        return sum(op.time_s for op in self.unfused)

    @property
    def speedup(self) -> float:
        """ragged_dot-path time / fused time (> 1: fusion wins)."""
        return self.unfused_time_s / self.fused_time_s

    @property
    def unfused_hbm_bytes(self) -> float:
        return sum(op.hbm_bytes for op in self.unfused)

    @property
    def tokens_per_expert(self) -> float:
        return self.rows / self.E

    @property
    def sentence(self) -> str:
        return explain(self)


def _op_from_kernel(name: str, cost, tiles: str) -> OpTime:
    return OpTime(name=name, time_s=cost.time_s, compute_s=cost.compute_s, memory_s=cost.dma_s,
                  overhead_s=cost.overhead_s + cost.launch_s, executed_flops=float(cost.mxu_flops),
                  useful_flops=float(cost.useful_flops), hbm_bytes=float(cost.hbm_bytes),
                  bytes_by_tensor=tuple((o.name, float(o.hbm_bytes)) for o in cost.operands),
                  grid_steps=int(cost.grid_steps), tiles=tiles)


def _activation_op(chip, rows: int, F: int, *, glu: bool, activation: str, dtype: str,
                   params: TimingParams) -> OpTime:
    from perfmodel.ops import activation as activation_cost

    vals = activation_cost(kind=activation, glu=glu).evaluate(M=rows, F=F, q=dtype_bytes(dtype))
    bw = chip.per_core_hbm_bytes_per_s() * params.hbm_efficiency
    launch = chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
    memory_s = vals.hbm_bytes / bw
    return OpTime(name="act", time_s=memory_s + launch, compute_s=0.0, memory_s=memory_s, overhead_s=launch,
                  executed_flops=0.0, useful_flops=0.0, hbm_bytes=float(vals.hbm_bytes),
                  bytes_by_tensor=tuple((t.name, float(t.value)) for t in vals.terms
                                        if t.kind in ("read_bytes", "write_bytes")),
                  grid_steps=0, tiles="XLA fusion")


def predict_fusion(*, chip: str = "v5e", tokens: int, D: int, F: int, E: int, k: int = 1, glu: bool = False,
                   activation: str | None = None, dtype: str = "bf16", distribution: str = "uniform",
                   tiles: tuple[int, int] | None = None, seed: int = 0, params: TimingParams = FITTED,
                   allow_compile: bool = False, sizes=None) -> FusionPrediction:
    """Predict the fused kernel vs the ragged_dot path for one MoE FFN call.

    ``tokens`` are tokens before routing; rows ``R = tokens k``. ``tiles`` =
    ``(tm, tf)`` of the fused kernel (default: the model's best for the chip
    and shape, :func:`kernels.fused_moe.default_tiles`). ``sizes`` overrides
    the generated group sizes. XLA's ragged_dot tiling comes from the shipped
    table or its fallback rule; ``allow_compile=True`` asks libtpu when the
    shape is not in the table.
    """
    from kernels.activations import resolve_activation
    from kernels.fused_spec import FusedTiles, default_tiles, fused_moe_spec
    from perfmodel.tiling.predict import xla_ragged_dot_time
    from perfmodel.tiling.walker import walk

    c = get_tpu_chip(chip, what="the fused kernel (Pallas TPU)")
    check_fusion_shape(tokens=tokens, D=D, F=F, E=E, k=k)
    dt = canonical_dtype(dtype)
    act = resolve_activation(activation, glu=glu)
    rows = tokens * k
    gs = np.asarray(sizes, np.int64) if sizes is not None else group_sizes(rows, E, distribution, seed=seed)
    if gs.shape != (E,) or gs.sum() > rows or (gs < 0).any():
        raise ValueError(f"sizes must be {E} non-negative counts summing to at most rows={rows}, got {gs.tolist()}")
    if tiles is None:
        ft = default_tiles(T=rows, D=D, F=F, G=E, dtype=dt, glu=glu, chip=c, activation=act)
    else:
        ft = FusedTiles(tm=int(tiles[0]), tf=int(tiles[1]))
    spec = fused_moe_spec(T=rows, D=D, F=F, G=E, dtype=dt, tiles=ft, glu=glu, activation=act,
                          group_sizes=gs, chip=c)
    if spec.vmem_bytes > c.vmem_bytes_per_core:
        raise ValueError(f"tiles (tm={ft.tm}, tf={ft.tf}) need {spec.vmem_bytes} bytes of VMEM, more than "
                         f"{c.name}'s {c.vmem_bytes_per_core} per TensorCore")
    fused = _op_from_kernel("fused", walk(spec, c, params), f"tm={ft.tm} tf={ft.tf}")

    ops, sources = [], []
    projections = [("up", D, F)] + ([("gate", D, F)] if glu else [])
    for name, kk, nn in projections:
        t = xla_ragged_dot_time(c, gs, kk, nn, m=rows, dtype=dt, params=params, allow_compile=allow_compile)
        ops.append(_ragged_op(name, t, useful_flops=2 * int(gs.sum()) * kk * nn))
        sources.append(t.tiling_source)
    ops.append(_activation_op(c, rows, F, glu=glu, activation=act, dtype=dt, params=params))
    t = xla_ragged_dot_time(c, gs, F, D, m=rows, dtype=dt, params=params, allow_compile=allow_compile)
    ops.append(_ragged_op("down", t, useful_flops=2 * int(gs.sum()) * F * D))
    sources.append(t.tiling_source)

    q = dtype_bytes(dt)
    n_in = 2 if glu else 1
    intermediate = (2 * n_in + 2) * rows * F * q  # write up/gate, read them, write h, read h
    active = int((gs > 0).sum())
    fused_w = sum(b for n, b in fused.bytes_by_tensor if n.startswith("w_"))
    weight_reread = fused_w - (n_in + 1) * active * D * F * q
    x_ideal = n_in * rows * D * q + rows * F * q  # up/gate read x once, down reads h once
    x_unfused = sum(b for op in ops for n, b in op.bytes_by_tensor if n == "lhs")
    return FusionPrediction(
        chip=c.name, tokens=tokens, rows=rows, D=D, F=F, E=E, k=k, glu=glu, activation=act, dtype=dt,
        distribution=distribution if sizes is None else "given", group_sizes=tuple(int(g) for g in gs),
        fused_tiles=(ft.tm, ft.tf), fused=fused, unfused=tuple(ops), intermediate_bytes=float(intermediate),
        weight_reread_bytes=float(max(weight_reread, 0)), x_reread_bytes=float(max(x_unfused - x_ideal, 0)),
        params_source=params.source, tiling_sources=tuple(dict.fromkeys(sources)))


def _ragged_op(name: str, t, *, useful_flops: float) -> OpTime:
    """One ragged_dot call as an :class:`OpTime`; ``useful_flops`` = 2 (rows with an expert) K N."""
    if t.kernel is None:  # XLA's dense lowering (m not a multiple of 8): every group's matmul over all rows
        from perfmodel.tiling.predict import extra_time_parts

        compute, memory, overhead = extra_time_parts(t.chip, t.extra_flops, t.extra_hbm_bytes, t.extra_launches,
                                                     t.dtype, t.params)
        return OpTime(name=name, time_s=t.time_s, compute_s=compute, memory_s=memory, overhead_s=overhead,
                      executed_flops=float(t.extra_flops), useful_flops=float(useful_flops),
                      hbm_bytes=float(t.extra_hbm_bytes), bytes_by_tensor=(("dense", float(t.extra_hbm_bytes)),),
                      grid_steps=0, tiles="dense lowering")
    op = _op_from_kernel(name, t.kernel, "tm={} tk={} tn={}".format(*t.tiles))
    if t.extra_hbm_bytes or t.extra_launches:
        op = attrs.evolve(op, time_s=op.time_s + t.extra_s, hbm_bytes=op.hbm_bytes + t.extra_hbm_bytes)
    return op


def _percent(fraction: float) -> str:
    """``0.1 -> '10%'``; a share under 1% keeps two significant digits (``0.0011 -> '0.11%'``), not ``'0%'``."""
    pct = 100 * fraction
    return f"{pct:.0f}%" if pct >= 1 or pct == 0 else f"{pct:.2g}%"


def _rows_text(rows: float) -> str:
    return f"{rows:.0f}" if rows >= 10 else f"{rows:.3g}"


def explain(p: FusionPrediction) -> str:
    """One sentence naming the dominant cause of the predicted speedup or slowdown.

    Both paths compute-bound: their MXU times; fixed costs larger than the time gap they act on: the launches
    and grid steps; else the largest cause pointing the verdict's way (bytes one path moves and the other does
    not, and MXU padding of a compute-bound path), each weighed in seconds at the chip's HBM bandwidth and MXU
    peak; with none, the per-path MXU / DMA / fixed times (and a fused kernel left on one of two TensorCores).
    """
    s = p.speedup
    verdict = f"{s:.2f}x" + (" (fusion wins)" if s > 1.02 else " (ragged_dot wins)" if s < 0.98 else " (a tie)")
    unf_bytes = p.unfused_hbm_bytes
    fb = p.fused.bound
    ub = max(p.unfused, key=lambda o: o.time_s).bound
    bounds = f"fused {fb}-bound, ragged_dot path {ub}-bound"
    causes = []  # (bytes, +1 if the cause favours fusion else -1, text)
    if p.intermediate_bytes:
        causes.append((p.intermediate_bytes, 1, f"fusion removes the [T,F] round trip, "
                                                f"{_percent(p.intermediate_bytes / unf_bytes)} of unfused bytes"))
    if p.weight_reread_bytes:
        share = p.weight_reread_bytes / max(p.fused.hbm_bytes, 1)
        tm = p.fused_tiles[0]
        causes.append((p.weight_reread_bytes, -1,
                       f"fusion re-reads each expert's weights once per {tm}-row tile "
                       f"(~{p.tokens_per_expert / tm:.1f} tiles per expert), {_percent(share)} of fused bytes"))
    if p.x_reread_bytes:
        causes.append((p.x_reread_bytes, 1, f"ragged_dot re-reads activations once per output column tile "
                                            f"({_percent(p.x_reread_bytes / unf_bytes)} of unfused bytes)"))
    chip = get_tpu_chip(p.chip, what="the fused kernel (Pallas TPU)")
    # Weigh every cause in seconds at the chip's peaks: bytes / bandwidth, padded FLOPs / MXU peak.
    causes = [(b / chip.hbm_bytes_per_s, way, text) for b, way, text in causes]
    mxu_ops = [o for o in p.unfused if o.executed_flops]
    pad_flops = (sum(o.executed_flops - o.useful_flops for o in mxu_ops)
                 - (p.fused.executed_flops - p.fused.useful_flops))
    if (pad_flops > 0 and ub == "compute") or (pad_flops < 0 and fb == "compute"):
        ratio_u = sum(o.executed_flops for o in mxu_ops) / max(sum(o.useful_flops for o in mxu_ops), 1)
        ratio_f = p.fused.executed_flops / max(p.fused.useful_flops, 1)
        who = "ragged_dot" if pad_flops > 0 else "the fused kernel"
        causes.append((abs(pad_flops) / chip.peak_flops_per_s(p.dtype), 1 if pad_flops > 0 else -1,
                       f"{who} pads the {_rows_text(p.tokens_per_expert)} rows per expert to its row tiles: the "
                       f"ragged_dot path runs {ratio_u:.1f}x its useful MXU FLOPs, the fused kernel {ratio_f:.1f}x"))
    # Only a cause pointing the way of the verdict can explain it (a tie: either way).
    winner = 1 if s > 1.02 else -1 if s < 0.98 else 0
    causes = [c for c in causes if winner == 0 or c[1] == winner]
    overhead_gap = sum(o.overhead_s for o in p.unfused) - p.fused.overhead_s
    # Both memory-bound: each path's time is its DMA time plus its fixed costs, so the byte causes act through
    # the DMA gap; fixed costs dominate when their gap is the larger of the two.
    memory_gap = sum(o.memory_s for o in p.unfused) - p.fused.memory_s
    both_memory = fb == "memory" and ub == "memory"
    fixed_dominate = (abs(overhead_gap) > abs(memory_gap) if both_memory
                      else abs(overhead_gap) > 0.5 * abs(p.unfused_time_s - p.fused_time_s))
    if fb == "compute" and ub == "compute":
        fc = p.fused.compute_s
        uc = sum(o.compute_s for o in p.unfused)
        main = (f"both compute-bound: MXU time {uc * 1e6:.0f} us (ragged_dot path, plus its "
                f"activation pass {p.unfused[-2].time_s * 1e6:.0f} us) vs {fc * 1e6:.0f} us fused")
    elif fixed_dominate:
        main = (f"fixed costs dominate: {len(p.unfused)} launches and their grid steps cost "
                f"{sum(o.overhead_s for o in p.unfused) * 1e6:.1f} us vs {p.fused.overhead_s * 1e6:.1f} us fused")
    elif causes:
        main = max(causes)[2]
    else:
        def parts(ops):
            return (f"MXU {sum(o.compute_s for o in ops) * 1e6:.0f} us, DMA {sum(o.memory_s for o in ops) * 1e6:.0f}"
                    f" us, fixed {sum(o.overhead_s for o in ops) * 1e6:.0f} us")

        from kernels.fused_spec import megacore_cores

        one_core = chip.megacore and megacore_cores(chip, T=p.rows, tm=p.fused_tiles[0]) == 1
        main = ((f"the fused kernel has one {p.fused_tiles[0]}-row tile for {p.rows} rows, so it runs on one of "
                 f"{chip.name}'s 2 TensorCores while ragged_dot splits over both; " if one_core else
                 "no byte saving or padding decides it: ")
                + f"fused {parts([p.fused])} vs ragged_dot path {parts(p.unfused)}")
    return f"{main}; {bounds} -> {verdict}"
