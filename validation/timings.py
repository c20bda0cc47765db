"""Predicted vs measured TPU times of grouped matmuls (tokamax autotuning caches).

Data: tokamax's autotuning cache files (FACTS section 5), e.g.
``../shared/data/tokamax/tpu_v5_lite/ragged_dot.json`` (XLA's
``jax.lax.ragged_dot``) and ``pallas_mosaic_tpu_ragged_dot.json`` (tokamax's
Pallas kernel at the tile config in each inner key). Outer key: the call
(``lhs``, ``rhs`` as ``dtype[shape]``, ``group_sizes``, dimension numbers,
flags); inner key: config; value: five ``evaluation_times_ms``. The measured
time of a row is the median of its samples.

For each row we predict the time with :mod:`perfmodel.tiling.predict` and
report ``|pred / meas - 1|`` (median, p90) per implementation and kind, and
for calls measured with both implementations whether the faster one is
predicted correctly.

What is not modelled, said plainly:
* ``return_residuals=true`` rows are predicted like the plain call (we do not
  know what tokamax adds; measured times are 3-30% higher) and reported
  separately;
* ``group_sizes`` given as ``{"num_groups", "total_size"}`` (a random split we
  cannot see) are replaced by an even split;
* XLA's drhs (no Mosaic kernel: dense masked batched matmul) is a coarse
  roofline.

Fitting (``--fit``): the constants of :class:`perfmodel.tiling.params.TimingParams`
(MXU fill rows per weight tile, VPU element ops per cycle, per-grid-step
overhead; HBM efficiency stays 1 and per-copy DMA latency 0: earlier fits with
them free drove them to those bounds)
minimise the squared ``log(pred / meas)`` over the forward and dlhs rows of both
implementations without residuals, each implementation weighted equally
(Nelder-Mead in log space); rows are
re-timed from their step profiles, not re-walked. The fitted values are
printed for pasting into ``perfmodel/tiling/params.py`` (``FITTED``); the
report shows the error before (``DEFAULT``) and after.
"""

from __future__ import annotations

import json
import math
import pathlib
import re

import attrs
import numpy as np

from perfmodel import jsonout
from perfmodel.hardware import canonical_dtype, get_chip
from perfmodel.tiling.params import DEFAULT, TimingParams
from perfmodel.tiling.predict import GroupedMatmulTime, tokamax_time, xla_ragged_dot_time

IMPLEMENTATIONS = {"ragged_dot.json": "xla_ragged_dot", "pallas_mosaic_tpu_ragged_dot.json": "tokamax_pallas"}
_KIND_BY_DN = {((1,), (1,)): "forward", ((1,), (2,)): "dlhs", ((0,), (0,)): "drhs"}
_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\]$")


def parse_array(text: str) -> tuple[str, tuple[int, ...]]:
    """``"bf16[4096,1024]"`` -> ``("bf16", (4096, 1024))``."""
    m = _ARRAY.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse array spec, got {text=}")
    return canonical_dtype(m.group(1)), tuple(int(x) for x in m.group(2).split(",") if x)


@attrs.frozen(kw_only=True)
class Call:
    """One measured ``ragged_dot`` call in grouped-matmul terms (``lhs [m, k]``, G groups, width n)."""

    key: str
    kind: str
    dtype: str
    m: int
    k: int
    n: int
    group_sizes: tuple[int, ...]
    random_split: bool
    return_residuals: bool

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    @property
    def label(self) -> str:
        res = " +res" if self.return_residuals else ""
        return f"{self.kind} m={self.m} k={self.k} n={self.n} G={self.num_groups}{res}"


@attrs.frozen(kw_only=True)
class Row:
    call: Call
    implementation: str
    config: tuple[tuple[str, object], ...]
    measured_s: float
    source: str = ""  # file, entry and config it was read from (error messages)


def parse_call(key: str) -> Call:
    """Decode an outer key of a tokamax cache file."""
    d = json.loads(key)
    ldt, lhs = parse_array(d["lhs"])
    _, rhs = parse_array(d["rhs"])
    dn = d["ragged_dot_dimension_numbers"]["dot_dimension_numbers"][0]
    kind = _KIND_BY_DN.get((tuple(dn[0]), tuple(dn[1])))
    if kind is None:
        raise ValueError(f"unsupported ragged_dot dimension numbers, got {dn=}")
    gs = d["group_sizes"]
    random_split = isinstance(gs, dict)
    if random_split:
        g, total = int(gs["num_groups"]), int(gs["total_size"])
        if g <= 0:
            raise ValueError(f"num_groups must be a positive integer, got group_sizes={gs!r}")
        gs = [total // g + (1 if i < total % g else 0) for i in range(g)]
    if len(lhs) != 2 or len(rhs) != (2 if kind == "drhs" else 3):
        raise ValueError(f"{kind} needs lhs of rank 2 and rhs of rank {2 if kind == 'drhs' else 3}, "
                         f"got lhs={d['lhs']!r}, rhs={d['rhs']!r}")
    m, k = lhs
    n = rhs[1] if kind == "drhs" else (rhs[2] if kind == "forward" else rhs[1])
    return Call(key=key, kind=kind, dtype=ldt, m=m, k=k, n=n, group_sizes=tuple(int(x) for x in gs),
                random_split=random_split, return_residuals=bool(d.get("return_residuals")))


def _clip(text: str, width: int = 60) -> str:
    """``text`` quoted and cut to ``width`` characters (``...`` marks a cut): cache keys in messages."""
    return repr(text[:width]) + ("..." if len(text) > width else "")


def load_rows(path: str | pathlib.Path) -> list[Row]:
    """Rows with measurements from one cache file (implementation from the file name).

    A malformed entry is a ``ValueError`` naming the file, the entry (1-based position and its key, cut),
    the config and the bad field: a config key that is not a JSON object, tokamax tile sizes that are not
    positive integers, ``evaluation_times_ms`` that is not a list of positive numbers. A call with no
    configs, a config without samples, or one with a non-finite sample (not timed, or failed) has no rows.
    """
    path = pathlib.Path(path)
    impl = IMPLEMENTATIONS.get(path.name)
    if impl is None:
        raise ValueError(f"unknown cache file {path.name!r}; expected one of {sorted(IMPLEMENTATIONS)}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); expected a tokamax "
                         "autotuning cache (JSON)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a tokamax autotuning cache (a JSON object of calls), got "
                         f"{type(data).__name__}")
    rows = []
    for n, (key, configs) in enumerate(data.items(), 1):
        entry = f"{path}: entry {n} {_clip(key)}"
        try:
            call = parse_call(key)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            raise ValueError(f"{entry} is not a tokamax call key ({err})") from None
        if not isinstance(configs, dict):
            raise ValueError(f"{entry} should map configs to measurements, got {type(configs).__name__}")
        for ckey, value in configs.items():
            where = f"{entry}, config {_clip(ckey)}"
            cfg = jsonout.loads_object(ckey, f"{where}: the config key")
            if impl == "tokamax_pallas":
                for name in ("tile_m", "tile_k", "tile_n", "input_buffer_count"):
                    v = cfg.get(name, 2 if name == "input_buffer_count" else None)
                    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                        raise ValueError(f"{where}: {name} must be a positive integer, got {name}={v!r}")
            if not isinstance(value, dict):
                raise ValueError(f"{where}: expected an object with evaluation_times_ms, got {type(value).__name__}")
            samples = value.get("evaluation_times_ms")
            if samples is None or samples == []:  # a config the autotuner did not time: no row, as before
                continue
            if not (isinstance(samples, list) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and not v <= 0 for v in samples)):
                raise ValueError(f"{where}: evaluation_times_ms must be a list of positive numbers (times in ms), "
                                 f"got {samples!r}")
            if not all(math.isfinite(v) for v in samples):  # inf / nan: a failed measurement, no row
                continue
            rows.append(Row(call=call, implementation=impl, config=tuple(sorted(cfg.items())),
                            measured_s=float(np.median(samples)) * 1e-3, source=where))
    return rows


def expand_paths(paths) -> list[pathlib.Path]:
    """The timing files named by ``paths`` (files, or folders: their tokamax cache files).

    A file reached twice (the same folder twice, a folder and a file in it, a symlink) is a ``ValueError``
    naming it: its rows would be counted twice, as :func:`load_rows` cannot tell.
    """
    out = []
    seen: dict[pathlib.Path, str] = {}  # resolved file -> the argument that named it
    for arg in paths:
        p = pathlib.Path(arg)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.json") if q.name in IMPLEMENTATIONS)
        elif p.exists():
            found = [p]
        else:
            raise FileNotFoundError(f"no such timing file or directory: {p}")
        for q in found:
            key = q.resolve()
            if key in seen:
                raise ValueError(f"timing file {str(key)!r} is given twice (by {seen[key]!r} and {str(arg)!r}): "
                                 "its rows would be counted twice")
            seen[key] = str(arg)
            out.append(q)
    if not out:
        raise ValueError(f"no tokamax cache files among {list(map(str, paths))}")
    return out


def predict_row(row: Row, chip, params: TimingParams = DEFAULT, *, allow_compile: bool = True) -> GroupedMatmulTime:
    c = row.call
    if row.implementation == "xla_ragged_dot":
        return xla_ragged_dot_time(chip, c.group_sizes, c.k, c.n, m=c.m, kind=c.kind, dtype=c.dtype,
                                   params=params, allow_compile=allow_compile)
    cfg = dict(row.config)
    return tokamax_time(chip, c.group_sizes, c.k, c.n, m=c.m, kind=c.kind, dtype=c.dtype, params=params,
                        tm=int(cfg["tile_m"]), tk=int(cfg["tile_k"]), tn=int(cfg["tile_n"]),
                        input_buffer_count=int(cfg.get("input_buffer_count", 2)))


@attrs.frozen(kw_only=True)
class Result:
    row: Row
    pred: GroupedMatmulTime
    predicted_s: float

    @property
    def modelled(self) -> bool:
        """False for XLA's drhs: libtpu 0.0.42 lowers it to a dense G x matmul, and the
        measured times (25-56x faster than that) show the measured run lowered it otherwise."""
        return self.pred.lowering != "dense"

    @property
    def ratio(self) -> float:
        return self.predicted_s / self.row.measured_s


@attrs.frozen(kw_only=True)
class Summary:
    implementation: str
    kind: str
    rows: int
    median_abs_err: float
    p90_abs_err: float


def summarize(results: list[Result]) -> list[Summary]:
    out = []
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if not r.modelled:
            continue
        kind = r.row.call.kind + ("+res" if r.row.call.return_residuals else "")
        for key in ((r.row.implementation, kind), (r.row.implementation, "all")):
            groups.setdefault(key, []).append(abs(r.ratio - 1))
    for (impl, kind), errs in sorted(groups.items()):
        e = np.asarray(errs)
        out.append(Summary(implementation=impl, kind=kind, rows=len(e), median_abs_err=float(np.median(e)),
                           p90_abs_err=float(np.percentile(e, 90))))
    return out


@attrs.frozen(kw_only=True)
class FasterCheck:
    call: Call
    measured: tuple[float, float]   # (xla, tokamax) best measured
    predicted: tuple[float, float]  # (xla, tokamax) predicted at those rows

    @property
    def correct(self) -> bool:
        return (self.measured[0] < self.measured[1]) == (self.predicted[0] < self.predicted[1])


def faster_checks(results: list[Result]) -> list[FasterCheck]:
    """Calls measured with both implementations: is the faster one predicted?"""
    best: dict[tuple[str, str], Result] = {}
    for r in results:
        if not r.modelled:
            continue
        key = (r.row.call.key, r.row.implementation)
        if key not in best or r.row.measured_s < best[key].row.measured_s:
            best[key] = r
    out = []
    for (ckey, impl), r in sorted(best.items()):
        if impl != "xla_ragged_dot" or (ckey, "tokamax_pallas") not in best:
            continue
        t = best[(ckey, "tokamax_pallas")]
        out.append(FasterCheck(call=r.row.call, measured=(r.row.measured_s, t.row.measured_s),
                               predicted=(r.predicted_s, t.predicted_s)))
    return out


def evaluate(rows: list[Row], chip, params: TimingParams = DEFAULT, *, allow_compile: bool = True) -> list[Result]:
    out = []
    for row in rows:
        try:
            pred = predict_row(row, chip, params, allow_compile=allow_compile)
        except ValueError as err:  # a call the model refuses (e.g. lhs bf16[0,512]): name where it was read
            raise ValueError(f"{row.source or row.call.label}: {err}") from None
        out.append(Result(row=row, pred=pred, predicted_s=pred.time_s))
    return out


def retimed_results(results: list[Result], params: TimingParams) -> list[Result]:
    """Results re-timed under ``params`` from their step profiles (no new walk)."""
    out = []
    for r in results:
        pred = r.pred.retimed(params)
        out.append(Result(row=r.row, pred=pred, predicted_s=pred.time_s))
    return out


FIT_NAMES = ("mxu_fill_rows", "vpu_ops_per_cycle", "grid_step_overhead_s")
_FIT_START = (16.0, 600.0, 0.35e-6)


def _fit_rows(results: list[Result]) -> list[Result]:
    """The rows :func:`fit_params` fits on: forward and dlhs without residuals."""
    return [r for r in results if r.row.call.kind in ("forward", "dlhs") and not r.row.call.return_residuals]


class HeldOutTooSmall(ValueError):
    """:func:`cross_validate` cannot leave rows to fit on beside every fold (too few calls)."""


def fit_params(results: list[Result], chip) -> tuple[TimingParams, float]:
    """Least squares on log(pred/meas) over forward and dlhs rows without residuals (module docstring).

    Returns the fitted params and the final loss. ``mxu_efficiency`` and
    ``hbm_efficiency`` stay 1 (MXU losses are carried by ``mxu_fill_rows``; a fit
    with a free HBM efficiency ran into its bound of 1), ``dma_latency_s`` 0.
    """
    from scipy.optimize import minimize

    chip = get_chip(chip)
    use = _fit_rows(results)
    if not use:
        raise ValueError(f"no forward/dlhs rows without residuals to fit on among {len(results)} rows")
    meas = np.array([r.row.measured_s for r in use])
    # Each implementation weighs equally, whatever its number of rows.
    impls = [r.row.implementation for r in use]
    weight = np.array([1.0 / impls.count(i) for i in impls])

    def params_of(x):
        return TimingParams(source="fitted", **{k: float(v) for k, v in zip(FIT_NAMES, np.exp(x))})

    def loss(x):
        try:
            p = params_of(x)
        except ValueError:
            return 1e9
        pred = np.array([r.pred.retimed(p).time_s for r in use])
        return float(np.sum(weight * np.log(pred / meas) ** 2))

    best = None
    for scale in (1.0, 0.5, 2.0):
        start = np.log(np.asarray(_FIT_START) * scale)
        res = minimize(loss, start, method="Nelder-Mead",
                       options=dict(maxiter=2000, maxfev=2000, xatol=1e-4, fatol=1e-8))
        if best is None or res.fun < best.fun:
            best = res
    p = params_of(best.x)
    return attrs.evolve(p, source=(
        f"fitted by `perfmodel validate timings ... --chip {chip.name} --fit` on {len(use)} forward/dlhs rows "
        f"without residuals (sum of squared log errors {best.fun:.4f})")), float(best.fun)


def cross_validate(results: list[Result], chip, folds: int = 2) -> list[Result]:
    """Held-out predictions: calls split into ``folds`` groups (stratified by implementation); each fold is
    predicted with constants fitted on the others (a check that the fit does not just
    memorise the rows).

    :class:`HeldOutTooSmall` (naming the rows and calls there are) if a fold holds every row to fit on,
    e.g. a single call: the others would have nothing to fit on.
    """
    # Stratified: calls measured with tokamax's kernel (few) are dealt out first.
    tok = {r.row.call.key for r in results if r.row.implementation == "tokamax_pallas"}
    keys = sorted({r.row.call.key for r in results}, key=lambda k: (k not in tok, k))
    fold_of = {k: i % folds for i, k in enumerate(keys)}
    fit = _fit_rows(results)
    if any(all(fold_of[r.row.call.key] == f for r in fit) for f in range(folds)):
        raise HeldOutTooSmall(
            f"cross-validation ({folds}-fold by call) needs forward/dlhs rows without residuals from at least "
            f"{folds} calls in different folds, got {len(fit)} such row(s) from "
            f"{len({r.row.call.key for r in fit})} call(s)")
    out: dict[int, Result] = {}
    for f in range(folds):
        train = [r for r in results if fold_of[r.row.call.key] != f]
        params, _ = fit_params(train, chip)
        for i, r in enumerate(results):
            if fold_of[r.row.call.key] == f:
                pred = r.pred.retimed(params)
                out[i] = Result(row=r.row, pred=pred, predicted_s=pred.time_s)
    return [out[i] for i in range(len(results))]


def speedup_error(checks: list[FasterCheck]) -> float:
    """Median |predicted speedup / measured speedup - 1| (speedup = XLA time / tokamax time)."""
    if not checks:
        return float("nan")
    e = [abs((f.predicted[0] / f.predicted[1]) / (f.measured[0] / f.measured[1]) - 1) for f in checks]
    return float(np.median(e))


# -- report -----------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_rows(before: list[Result], after: list[Result]) -> list[list[str]]:
    b = {(s.implementation, s.kind): s for s in summarize(before)}
    rows = []
    for s in summarize(after):
        sb = b.get((s.implementation, s.kind))
        rows.append([s.implementation, s.kind, s.rows,
                     _pct(sb.median_abs_err) if sb else "-", _pct(sb.p90_abs_err) if sb else "-",
                     _pct(s.median_abs_err), _pct(s.p90_abs_err)])
    return rows


def write_report(out_dir, chip, files, before: list[Result], after: list[Result], params: TimingParams,
                 fitted_now: bool, held_out: list[Result] | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Markdown and JSON reports of a timings validation run."""
    from perfmodel.tables import markdown_table

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chip = get_chip(chip)
    stem = f"timings_{chip.name}"
    fc_b, fc_a = faster_checks(before), faster_checks(after)
    lines = [
        f"# Predicted vs measured grouped-matmul times on {chip.name}",
        "",
        "Generated by `perfmodel validate timings "
        + " ".join(str(f) for f in files) + f" --chip {chip.name}" + (" --fit" if fitted_now else "")
        + f" --out {out_dir}` (validation/timings.py).",
        "",
        "Data: tokamax autotuning cache (real TPU v5e measurements, median of 5 samples per row).",
        "`before` = ideal constants (`perfmodel.tiling.params.DEFAULT`: peak MXU/HBM, VPU untimed, "
        "chip overhead defaults); `after` = " + ("constants fitted in this run" if fitted_now else
                                                   "`perfmodel.tiling.params.FITTED`") + ":",
        "",
        "```",
        *(f"{f.name} = {getattr(params, f.name)!r}" for f in attrs.fields(TimingParams)),
        "```",
        "",
        "## |pred/meas - 1| per implementation and kind",
        "",
        markdown_table(["implementation", "kind", "rows", "median before", "p90 before", "median after",
                        "p90 after"], summary_rows(before, after)),
        "",
        "`+res` = calls with `return_residuals=true`, predicted like the plain call (not modelled). "
        "Fit rows: forward and dlhs without residuals, each implementation weighted equally; "
        "drhs rows are predictions, not fitted.",
        "",
        f"## Faster implementation predicted correctly: {sum(f.correct for f in fc_a)}/{len(fc_a)} after "
        f"({sum(f.correct for f in fc_b)}/{len(fc_b)} before)",
        "",
        "tokamax is faster in every measured pair, so this count alone has little power; the size of "
        f"the gap is a sharper test: median |predicted speedup / measured speedup - 1| = "
        f"{_pct(speedup_error(fc_a))} after ({_pct(speedup_error(fc_b))} before).",
        "",
        markdown_table(["call", "meas XLA ms", "meas tokamax ms", "pred XLA ms", "pred tokamax ms", "right"],
                       [[f.call.label, f"{1e3 * f.measured[0]:.3f}", f"{1e3 * f.measured[1]:.3f}",
                         f"{1e3 * f.predicted[0]:.3f}", f"{1e3 * f.predicted[1]:.3f}",
                         "yes" if f.correct else "NO"] for f in fc_a]),
        "",
        *([] if held_out is None else [
            "## Held-out check (2-fold by call: each half predicted with constants fitted on the other)",
            "",
            markdown_table(["implementation", "kind", "rows", "median held-out", "p90 held-out"],
                           [[x.implementation, x.kind, x.rows, _pct(x.median_abs_err), _pct(x.p90_abs_err)]
                            for x in summarize(held_out)]),
            "",
        ]),
        "## Not modelled",
        "",
        "XLA `ragged_dot` drhs (ragged contracting dimension): libtpu 0.0.42 compiles it to a dense "
        "masked batched matmul of G x 2mkn FLOPs (perfmodel.xla_tiling); that predicts 25-56x the "
        "measured times, so the measured runs used another lowering that we cannot see. Rows listed "
        "below with the dense prediction, excluded from the statistics and the faster-implementation check.",
        "",
        "## Every row",
        "",
        markdown_table(["implementation", "call", "tiles (tm,tk,tn)", "tiling source", "meas ms",
                        "pred before ms", "pred after ms", "after/meas"],
                       [[a.row.implementation, a.row.call.label, str(a.pred.tiles), a.pred.tiling_source,
                         f"{1e3 * a.row.measured_s:.3f}", f"{1e3 * b.predicted_s:.3f}",
                         f"{1e3 * a.predicted_s:.3f}",
                         f"{a.ratio:.2f}" + ("" if a.modelled else " (not modelled)")]
                        for b, a in zip(before, after)]),
        "",
    ]
    md = out_dir / f"{stem}.md"
    md.write_text("\n".join(lines))
    js = out_dir / f"{stem}.json"
    js.write_text(jsonout.dumps({
        "chip": chip.name, "files": [str(f) for f in files], "fitted_now": fitted_now,
        "params": attrs.asdict(params),
        "summary_before": [attrs.asdict(s) for s in summarize(before)],
        "summary_after": [attrs.asdict(s) for s in summarize(after)],
        "faster_correct_after": [sum(f.correct for f in fc_a), len(fc_a)],
        "faster_correct_before": [sum(f.correct for f in fc_b), len(fc_b)],
        "speedup_median_abs_err_after": speedup_error(fc_a),
        "summary_held_out": None if held_out is None else [attrs.asdict(s) for s in summarize(held_out)],
        "rows": [{"implementation": a.row.implementation, "call": attrs.asdict(a.row.call),
                  "config": dict(a.row.config), "tiles": a.pred.tiles, "tiling_source": a.pred.tiling_source,
                  "measured_s": a.row.measured_s, "predicted_before_s": b.predicted_s,
                  "predicted_after_s": a.predicted_s, "modelled": a.modelled}
                 for b, a in zip(before, after)],
    }, indent=1, default=str))
    return md, js
