"""Speedup maps of the fused MoE kernel over (tokens per expert, F/D), and the crossover.

Each map cell is one uniform-group MoE FFN call evaluated with the closed
forms of :mod:`perfmodel.fusion_closed_form` (vectorised numpy), with the
fused kernel's tiles chosen per cell as the fastest candidate that fits VMEM
(the candidates of :func:`kernels.fused_spec.candidate_tiles` for the cell's rows, with its
megacore half-of-T tile for calls of at most 128 rows on v4 and v5p) and XLA's
ragged_dot tiles from :mod:`perfmodel.xla_tiling` (shipped table or rule).
The crossover is where the speedup crosses 1 along the tokens axis,
interpolated in log space.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from perfmodel.hardware import canonical_dtype, dtype_bytes, get_tpu_chip
from perfmodel.tiling.params import FITTED, TimingParams


@attrs.frozen(kw_only=True)
class SpeedupMap:
    """Speedup (ragged_dot time / fused time) on a (F/D, tokens per expert) grid."""

    chip: str
    D: int
    E: int
    glu: bool
    activation: str
    dtype: str
    tokens_per_expert: np.ndarray  # [nx]
    f_over_d: np.ndarray  # [ny] F / D, where F is the requested F/D times D rounded to a multiple of 256
    F: np.ndarray  # [ny]
    speedup: np.ndarray  # [ny, nx]
    fused_time_s: np.ndarray
    unfused_time_s: np.ndarray
    tm: np.ndarray  # chosen fused tiles [ny, nx]
    tf: np.ndarray
    crossovers: tuple[tuple[float, tuple[float, ...]], ...]  # (F/D, tokens-per-expert crossings)
    # per F/D row: the largest tokens per expert at which ragged_dot still wins (nan: fusion always wins)
    last_loss_tokens_per_expert: np.ndarray
    params_source: str


@functools.lru_cache(maxsize=4096)
def _fused_facts(chip: str, D: int, tm: int, tf: int, dtype: str, glu: bool,
                 activation: str) -> tuple[int, float, float]:
    """(VMEM bytes, VPU ops per step, row-mask VPU ops per straddling step) from the fused kernel's own spec
    on ``chip`` (its Mosaic scratch terms, as the kernel's tile search counts them)."""
    from kernels.fused_spec import FusedTiles, fused_moe_spec

    spec = fused_moe_spec(T=tm, D=D, F=tf, G=1, dtype=dtype, tiles=FusedTiles(tm=tm, tf=tf), glu=glu,
                          activation=activation, chip=chip)
    return spec.vmem_bytes, float(spec.step_vpu_flops), float(spec.epilogue_vpu_ops)


@functools.lru_cache(maxsize=65536)
def _xla(chip: str, m: int, k: int, n: int, E: int, dtype: str) -> tuple[int, int, int, float]:
    from perfmodel.xla_tiling import ragged_dot_tiling

    t = ragged_dot_tiling(chip, m, k, n, E, dtype, allow_compile=False)
    if t.lowering != "mosaic":
        raise ValueError(f"XLA lowers ragged_dot densely for m={m} (not a multiple of 8); map rows must be")
    return t.tm, t.tk, t.tn, _xla_vpu(k, n, t.tm, t.tk, t.tn, dtype)


@functools.lru_cache(maxsize=4096)
def _xla_vpu(k, n, tm, tk, tn, dtype) -> float:
    from perfmodel.tiling.gmm import ragged_dot_spec

    spec = ragged_dot_spec(None, [tm], k, n, m=tm, dtype=dtype, tiling=(tm, tk, tn))
    return spec.step_vpu_flops + spec.epilogue_vpu_ops / -(-k // tk)


def _positive_axis(name: str, values) -> np.ndarray:
    """``values`` as a float array: a non-empty 1-D sequence of finite positive numbers, else a ValueError
    naming ``name`` and the first bad value."""
    try:
        a = np.asarray(values, float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of finite positive numbers, got {name}={values!r}") from None
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of finite positive numbers, "
                         f"got {name}={values!r}")
    bad = np.flatnonzero(~(np.isfinite(a) & (a > 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be finite and positive, got {name}[{i}]={float(a[i])}")
    return a


#: the map's F axis is in multiples of this (real models use F in multiples of 256)
F_STEP = 256


def speedup_map(chip: str = "v5e", *, D: int = 2048, E: int = 8, glu: bool = True, activation: str | None = None,
                dtype: str = "bf16", tokens_per_expert=None, f_over_d=None, n: int = 200,
                params: TimingParams = FITTED) -> SpeedupMap:
    """Evaluate the map (default n = 200 points per axis: tokens per expert 8..16384, F/D 1..8).

    Tokens per expert are rounded to multiples of 8 and F = (F/D) D to multiples of 256 (at least 256),
    duplicates dropped, so a small D gives fewer than ``n`` F/D rows (D = 2048: 57; D = 8192: 200); with the
    default F/D axis, D below :data:`F_STEP` is refused (the axis could not start at F/D = 1).
    Given axes must be finite and positive. The largest cell (most tokens per expert times E rows) must be a
    shape a prediction takes (:func:`perfmodel.fusion.check_fusion_shape`: ``E <= MAX_EXPERTS``, rows
    ``<= MAX_ROWS``), refused before any work; not its grid-step limit, as the closed forms walk no grid.
    The widest F must let one expert's ``D x F`` weight fit the chip's HBM.
    """
    from kernels.activations import resolve_activation
    from kernels.fused_spec import FusedTiles, chip_candidate_tiles, no_tiles_fit_reason
    from perfmodel.fusion import check_fusion_shape
    from perfmodel.fusion_closed_form import evaluate_times, fused_core_share

    c = get_tpu_chip(chip, what="the fusion map (fused Pallas kernel vs ragged_dot)")
    dt = canonical_dtype(dtype)
    act = resolve_activation(activation, glu=glu)
    q = dtype_bytes(dt)
    for name, v in (("D", D), ("E", E), ("n", n)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    if tokens_per_expert is None:
        tokens_per_expert = np.geomspace(8, 16384, n)
    g = np.maximum(8, np.round(_positive_axis("tokens_per_expert", tokens_per_expert) / 8) * 8)
    default_axis = f_over_d is None
    if default_axis:
        f_over_d = np.linspace(1, 8, n)
    # Real models use F in multiples of 256; finer steps only add tile-divisibility noise.
    F = np.maximum(F_STEP, np.round(_positive_axis("f_over_d", f_over_d) * D / F_STEP) * F_STEP)
    if default_axis and D < F_STEP:  # F/D = 1 needs F = D, below the step F is rounded to
        raise ValueError(f"D={D} is below the map's F step of {F_STEP}: F is a multiple of {F_STEP}, so the F/D "
                         f"axis 1..8 would become {F.min() / D:g}..{F.max() / D:g}; use D >= {F_STEP}")
    # In Python ints, before the int64 casts below (E = 1e17 overflowed rows = g E to a negative m).
    most, widest = int(g.max()), int(F.max())
    try:
        check_fusion_shape(tokens=most * E, D=D, F=widest, E=E, walk=False)
    except ValueError as err:
        raise ValueError(f"the map's largest cell, tokens_per_expert={most} times E={E} = {most * E} tokens "
                         f"(k=1): {err}") from None
    if D * widest * q > c.hbm_bytes:  # also keeps F within int64 (f_over_d = 1e300 wrapped around)
        raise ValueError(f"D={D} and f_over_d={float(widest) / D:g} give F={widest}: one expert's D x F weight, "
                         f"{D * widest * q:.3g} B, exceeds {c.name}'s HBM ({c.hbm_bytes:.3g} B)")
    g = g.astype(np.int64)
    F = np.unique(F.astype(np.int64))
    rows = g * E
    G2, F2 = np.meshgrid(g, F)  # [ny, nx]
    R2 = G2 * E
    up = np.array([[_xla(c.name, int(r), D, int(f), E, dt) for r in rows] for f in F])  # [ny, nx, 4]
    dn = np.array([[_xla(c.name, int(r), int(f), D, E, dt) for r in rows] for f in F])
    # The tiles candidate_tiles offers: row tiles per column, TM_CANDIDATES below the rows, the smallest
    # covering them (rows rounded up to 8 if smaller), and on megacore chips half the rows for calls of at
    # most 128 rows, which split over both cores; F tiles per F row, as candidate_tiles offers them for that F.
    tms_by_col = [{t.tm for t in chip_candidate_tiles(c, T=int(r), F=F_STEP)} for r in rows]
    tfs_by_row = [{t.tf for t in chip_candidate_tiles(c, T=8, F=int(f))} for f in F]
    tf_rows = [(tf, np.array([i for i, tfs in enumerate(tfs_by_row) if tf in tfs]))
               for tf in sorted(set().union(*tfs_by_row))]
    best_t = np.full(R2.shape, np.inf)
    best_unf = np.full(R2.shape, np.nan)
    best_tm = np.zeros(R2.shape, np.int64)
    best_tf = np.zeros(R2.shape, np.int64)
    for tm in sorted(set().union(*tms_by_col)):
        cols = np.array([j for j, tms in enumerate(tms_by_col) if tm in tms])
        share = np.array([fused_core_share(c.name, rows=int(rows[j]), E=E, tm=tm) for j in cols])
        for tf, ri in tf_rows:
            vmem, vpu, vpu_mask = _fused_facts(c.name, D, tm, tf, dt, glu, act)
            if vmem > c.vmem_bytes_per_core:
                continue
            blk = np.ix_(ri, cols)  # the F rows this tf divides, the columns this tm is offered at
            u, d = up[blk], dn[blk]
            times = evaluate_times(c, rows=R2[blk], D=D, F=F2[blk], E=E, tm=tm, tf=tf,
                                   xla_up=(u[..., 0], u[..., 1], u[..., 2]), xla_down=(d[..., 0], d[..., 1], d[..., 2]),
                                   vpu_per_step=(vpu, vpu_mask, u[..., 3], d[..., 3]), q=q, glu=glu, activation=act,
                                   dtype=dt, fused_share=share, params=params)
            better = times.fused_time_s < best_t[blk]
            best_t[blk] = np.where(better, times.fused_time_s, best_t[blk])
            # the ragged_dot path does not depend on the fused tiles: any evaluation of a cell gives it
            best_unf[blk] = np.where(np.isnan(best_unf[blk]), times.unfused_time_s, best_unf[blk])
            best_tm[blk] = np.where(better, tm, best_tm[blk])
            best_tf[blk] = np.where(better, tf, best_tf[blk])
    if not np.isfinite(best_t).all():
        # A tile's footprint does not depend on F or the rows, and tf=128 is offered at every cell (F is a
        # multiple of 256), so a cell without tiles means its smallest candidate overflows VMEM.
        failing = np.flatnonzero(~np.isfinite(best_t).all(axis=0))
        footprints = [(_fused_facts(c.name, D, tm, tf, dt, glu, act)[0], FusedTiles(tm=tm, tf=tf))
                      for tm in sorted(set().union(*(tms_by_col[j] for j in failing)))
                      for tf in sorted(set().union(*tfs_by_row))]
        raise ValueError(f"no fused tiles fit {c.name}'s VMEM (D={D}{', GLU' if glu else ''}, dtype={dt}): "
                         f"{no_tiles_fit_reason(c, footprints)}")
    speedup = best_unf / best_t
    crossings = []
    for i in range(len(F)):
        ls = np.log(speedup[i])
        idx = np.nonzero(np.sign(ls[:-1]) * np.sign(ls[1:]) < 0)[0]
        xs = []
        for j in idx:
            x0, x1 = np.log(g[j]), np.log(g[j + 1])
            xs.append(float(np.exp(x0 + (x1 - x0) * ls[j] / (ls[j] - ls[j + 1]))))
        crossings.append((float(F[i] / D), tuple(xs)))
    lose = speedup < 1
    last_loss = np.array([float(g[np.nonzero(row)[0].max()]) if row.any() else np.nan for row in lose])
    return SpeedupMap(last_loss_tokens_per_expert=last_loss, chip=c.name, D=D, E=E, glu=glu, activation=act, dtype=dt, tokens_per_expert=g,
                      f_over_d=F / D, F=F, speedup=speedup, fused_time_s=best_t, unfused_time_s=best_unf,
                      tm=best_tm, tf=best_tf, crossovers=tuple(crossings), params_source=params.source)


@attrs.frozen(kw_only=True)
class WalkerCheck:
    """The map's closed forms against the step-by-step walker (:func:`perfmodel.fusion.predict_fusion`)
    on sampled cells, each with the map's own tiles. Errors are ``|map / walker - 1|``."""

    cells: int
    speedup_error_median: float
    speedup_error_max: float
    fused_time_error_max: float
    unfused_time_error_max: float
    verdict_disagreements: int  # cells where one says fusion wins and the other that ragged_dot does
    worst_cell: tuple[int, int]  # (tokens per expert, F) of the largest speedup error


def walker_check(m: SpeedupMap, cells: int, *, seed: int = 0, progress=None) -> WalkerCheck:
    """Walk ``cells`` cells of ``m`` drawn without replacement (numpy ``default_rng(seed)``; all cells if
    the map has fewer) through the walker and compare. ``progress(i, cells)`` is called after each."""
    from perfmodel.fusion import predict_fusion

    if not isinstance(cells, (int, np.integer)) or cells <= 0:
        raise ValueError(f"cells must be a positive integer, got cells={cells!r}")
    ny, nx = m.speedup.shape
    flat = np.random.default_rng(seed).choice(ny * nx, size=min(cells, ny * nx), replace=False)
    err_s, err_f, err_u, flips = [], [], [], 0
    for i, idx in enumerate(flat):
        r, c = divmod(int(idx), nx)
        p = predict_fusion(chip=m.chip, tokens=int(m.tokens_per_expert[c]) * m.E, D=m.D, F=int(m.F[r]), E=m.E,
                           glu=m.glu, activation=m.activation, dtype=m.dtype,
                           tiles=(int(m.tm[r, c]), int(m.tf[r, c])))
        err_s.append(abs(m.speedup[r, c] / p.speedup - 1))
        err_f.append(abs(m.fused_time_s[r, c] / p.fused.time_s - 1))
        err_u.append(abs(m.unfused_time_s[r, c] / p.unfused_time_s - 1))
        flips += bool((m.speedup[r, c] > 1) != (p.speedup > 1))
        if progress is not None:
            progress(i + 1, len(flat))
    worst = divmod(int(flat[int(np.argmax(err_s))]), nx)
    return WalkerCheck(cells=len(flat), speedup_error_median=float(np.median(err_s)),
                       speedup_error_max=float(max(err_s)), fused_time_error_max=float(max(err_f)),
                       unfused_time_error_max=float(max(err_u)), verdict_disagreements=flips,
                       worst_cell=(int(m.tokens_per_expert[worst[1]]), int(m.F[worst[0]])))
