"""``perfmodel validate kernel``: time the MoE FFN paths on the device at hand and confront the model.

**On a TPU** (the real test): over :func:`tpu_points` (tokens per expert 8..8192,
D, F/D 2..8, GLU or not, uniform/skewed groups, a few points with the fused
row tile forced too large so that the model predicts a loss), time the
forward of ``kernels.moe_ffn(implementation="fused")`` against
``implementation="ragged_dot"`` (jit, warm-up, round-robin rounds,
``block_until_ready``, medians) and compare with
:func:`perfmodel.fusion.predict_fusion` on the device's chip: ``|pred/meas - 1|``
per path and whether the predicted winner wins.

**On CPU** (what runs here and in CI), two things, said plainly:

1. The fused Pallas kernel only runs in TPU *interpret mode*: it is checked for
   **correctness only** against ``implementation="reference"`` at small shapes;
   interpret-mode timings are meaningless and are not taken.
2. The two XLA formulations of :mod:`validation.cpu_moe` (the ragged_dot path
   vs an F-chunked ``lax.scan`` without the ``[T, F]`` round trip) are timed
   against their op-level cost model, under two sets of rates: the plain
   roofline of the calibrated ``cpu`` chip (``perfmodel calibrate cpu``), and
   op-kind rates measured by micro-kernels at the start of the run
   (:func:`validation.cpu_moe.measure_rates`). Both outputs are checked equal.

Timing protocol (both devices): every function is compiled and run once
(warm-up), then rounds each call every function once, the order
alternating between rounds (at least ``repeats`` rounds, more for short programs
until each function has ``min_time_s`` of timed calls), so that all formulations share the machine's load
(this 2-core machine is shared by several processes); reported times are
medians, the measured speedup is the median of the per-round ratios.

On a TPU the fused kernel's output is also checked against the ragged_dot
path's at every timed point (``TpuRecord.ok``: within :data:`TOLERANCE` of
bf16, the tolerance of the CPU correctness check); a point whose output is
wrong fails the run (``perfmodel validate kernel`` exits 1).

Results are appended to ``results.jsonl`` point by point (an interrupt loses at
most the point in progress); a point that raises (a forced tile that does not
fit, a compile refusal, an out-of-memory) is recorded in ``Results.errors`` and
the sweep goes on; a point that raised anything but a ``ValueError`` (the kernel
or ragged_dot failed on the chip, not a shape the chip cannot hold) is also in
``Results.failed`` and fails the run (``perfmodel validate kernel`` exits 1); ``results.json``, ``report.md`` and the plots are
(re)written at the end, also after an interrupt or any other exception (from
the finished points, marked partial, before the exception propagates).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import attrs
import numpy as np

from perfmodel import jsonout
from validation.cpu_moe import MMAP_THRESHOLD_MAX_BYTES, heap_mmaps_large_blocks

SWEEPS = ("quick", "full")


def _check_sweep(sweep: str) -> None:
    if sweep not in SWEEPS:
        raise ValueError(f"sweep must be one of {SWEEPS}, got sweep={sweep!r}")


# -- sweeps ----------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class TpuPoint:
    """One TPU sweep point: ``tokens`` before routing, ``rows = tokens k``, ``tiles`` = fused ``(tm, tf)`` or default."""

    tokens: int
    D: int
    F: int
    E: int
    k: int
    glu: bool
    distribution: str = "uniform"
    tiles: tuple[int, int] | None = None
    note: str = ""

    @property
    def rows(self) -> int:
        return self.tokens * self.k

    @property
    def tokens_per_expert(self) -> float:
        return self.rows / self.E

    @property
    def label(self) -> str:
        t = "" if self.tiles is None else f" tiles={self.tiles[0]}x{self.tiles[1]}"
        return (f"tok/exp={self.tokens_per_expert:g} D={self.D} F={self.F} E={self.E} k={self.k}"
                f"{' GLU' if self.glu else ''} {self.distribution}{t}")


def _tpu(tpe: int, D: int, ratio: int, *, glu: bool, E: int = 8, k: int = 2, distribution: str = "uniform",
         tiles=None, note: str = "") -> TpuPoint:
    return TpuPoint(tokens=tpe * E // k, D=D, F=D * ratio, E=E, k=k, glu=glu, distribution=distribution,
                    tiles=tiles, note=note)


TPU_MEMORY_BUDGET_BYTES = 8e9
"""Largest ragged_dot-path footprint a sweep point may need (fits v5e's 16 GB HBM with room for XLA)."""


def tpu_memory_bytes(p: "TpuPoint", q: int = 2) -> float:
    """HBM the ragged_dot path holds at once: x, y, weights and the ``[rows, F]`` intermediates (bf16)."""
    n_in = 2 if p.glu else 1
    return q * (2 * p.rows * p.D + (n_in + 1) * p.E * p.D * p.F + (n_in + 1) * p.rows * p.F)


_FORCED_LOSS = "fused row tile forced large for tiny groups: the model predicts a loss (padding, weight re-reads)"


def tpu_points(sweep: str) -> tuple[TpuPoint, ...]:
    """TPU sweep spanning the predicted win and lose regions of :func:`perfmodel.fusion.predict_fusion`.

    Tokens per expert 8..8192 (decode-like to prefill-like), F/D 2..8, GLU and
    not, uniform and skewed groups at default tiles (the model predicts wins
    there), plus points whose fused row tile is forced far above the tokens per
    expert (the model predicts losses there), so both verdicts are tested.
    """
    _check_sweep(sweep)
    if sweep == "quick":
        pts = [_tpu(tpe, 1024, 4, glu=glu) for tpe in (8, 64, 512, 4096) for glu in (False, True)]
        pts += [_tpu(64, 1024, 2, glu=False), _tpu(512, 1024, 8, glu=True),
                _tpu(512, 1024, 4, glu=True, distribution="skewed"),
                _tpu(8, 1024, 4, glu=False, E=64, k=8, tiles=(512, 512), note=_FORCED_LOSS),
                _tpu(16, 512, 4, glu=False, E=32, k=4, tiles=(256, 128), note=_FORCED_LOSS)]
        return tuple(pts)
    pts = [_tpu(tpe, D, r, glu=glu) for tpe in (8, 32, 128, 512, 2048, 8192) for D in (512, 2048)
           for r in (2, 4, 8) for glu in (False, True)]
    pts = [p for p in pts if tpu_memory_bytes(p) <= TPU_MEMORY_BUDGET_BYTES]
    pts += [_tpu(tpe, 2048, 4, glu=True, distribution="skewed") for tpe in (8, 128, 2048)]
    pts += [_tpu(tpe, 1024, 4, glu=glu, E=64, k=8, tiles=(512, 512), note=_FORCED_LOSS)
            for tpe in (8, 32) for glu in (False, True)]
    pts += [_tpu(16, 512, 4, glu=False, E=32, k=4, tiles=(256, 128), note=_FORCED_LOSS)]
    return tuple(pts)


@attrs.frozen(kw_only=True)
class CpuPoint:
    """One CPU sweep point: rows ``T`` sorted into ``E`` groups; ``tf`` = F chunk (None: the model's best)."""

    T: int
    D: int
    F: int
    E: int
    glu: bool
    tf: int | None = None
    distribution: str = "uniform"
    note: str = ""

    @property
    def activation(self) -> str:
        return "silu" if self.glu else "gelu"

    @property
    def tokens_per_expert(self) -> float:
        return self.T / self.E

    @property
    def label(self) -> str:
        return f"T={self.T} D={self.D} F={self.F} E={self.E}{' GLU' if self.glu else ''} {self.distribution}"


_MEM = "memory-bound (small D): ragged_dot writes and re-reads h_m [T, E F]; chunked keeps [T, E tf] in cache"
_COMPUTE = "compute-bound (larger D): both do the same E x FLOPs; chunked saves only bytes"
_WEIGHTS = ("few rows, large F, tf forced to 32: weight-bound; chunked moves the weights twice (re-layout + "
            "per-chunk slices) vs once (ragged_dot's transpose), plus per-iteration overhead: ragged_dot should win")
_REREAD = ("many rows, tf forced to 32: chunked re-reads x_m [T, E D] (16 MiB) once per chunk, the analog of the "
           "fused kernel's weight re-reads; against it, ragged_dot's slow interleaved expansions")


def cpu_points(sweep: str) -> tuple[CpuPoint, ...]:
    """CPU sweep (f32) spanning where each XLA formulation should win.

    The chunked formulation wins when the ragged_dot path's ``[T, E F]``
    expanded round trip dominates (memory-bound: small D, large F, many rows);
    it should lose when the weights dominate (few rows, large F: it moves them
    twice) with many small chunks (per-iteration overhead); forced small chunks
    at many rows make it re-read ``x_m [T, E D]`` once per chunk: the CPU
    analogs of the fused kernel's weight re-reads and grid-step overhead. Executed FLOPs are ``E`` x the
    useful ones on CPU, so shapes stay small.
    """
    _check_sweep(sweep)
    if sweep == "quick":
        return (
            CpuPoint(T=2048, D=32, F=1024, E=8, glu=False, note=_MEM),
            CpuPoint(T=1024, D=64, F=1024, E=8, glu=True, note=_MEM),
            CpuPoint(T=1024, D=32, F=1024, E=8, glu=False, distribution="skewed",
                     note=_MEM + " (skewed groups: same dense cost)"),
            CpuPoint(T=512, D=256, F=512, E=8, glu=False, note=_COMPUTE),
            CpuPoint(T=16, D=64, F=8192, E=8, glu=False, tf=32, note=_WEIGHTS),
            CpuPoint(T=64, D=64, F=4096, E=8, glu=False, tf=32, note=_WEIGHTS),
            CpuPoint(T=32, D=32, F=2048, E=8, glu=True, tf=32, note=_WEIGHTS),
            CpuPoint(T=4096, D=128, F=512, E=8, glu=False, tf=32, note=_REREAD),
        )
    pts = []
    for T in (64, 512, 2048, 4096):
        for D in (32, 64, 128, 256):
            for r in (2, 8):
                for glu in (False, True):
                    F = D * r
                    if 2 * (3 if glu else 2) * T * 8 * D * F > 2e10:  # executed FLOPs budget per call
                        continue
                    note = _MEM if D <= 64 else _COMPUTE if D >= 256 else "between memory- and compute-bound"
                    pts.append(CpuPoint(T=T, D=D, F=F, E=8, glu=glu, note=note))
    pts += [CpuPoint(T=2048, D=32, F=1024, E=8, glu=False, distribution="skewed", note=_MEM),
            CpuPoint(T=16, D=64, F=8192, E=8, glu=False, tf=32, note=_WEIGHTS),
            CpuPoint(T=16, D=64, F=8192, E=8, glu=True, tf=32, note=_WEIGHTS),
            CpuPoint(T=64, D=64, F=4096, E=8, glu=False, tf=32, note=_WEIGHTS),
            CpuPoint(T=32, D=32, F=2048, E=8, glu=True, tf=32, note=_WEIGHTS),
            CpuPoint(T=16, D=128, F=4096, E=8, glu=False, tf=32, note=_WEIGHTS),
            CpuPoint(T=4096, D=128, F=512, E=8, glu=False, tf=32, note=_REREAD),
            CpuPoint(T=2048, D=256, F=1024, E=8, glu=False, tf=32, note=_REREAD)]
    return tuple(pts)


CORRECTNESS_SHAPES = (  # (T, D, F, E, glu, distribution, dtype, fused (tm, tf) or None for default tiles)
    (256, 128, 256, 4, False, "uniform", "f32", None),
    (200, 128, 512, 8, True, "skewed", "f32", (128, 128)),  # row tiles straddle groups, 4 F chunks accumulate
    (256, 128, 256, 4, True, "random", "bf16", None),
)
"""Small shapes at which the fused kernel (interpret mode) is checked against the reference on CPU."""

TOLERANCE = {"f32": 1e-4, "bf16": 4e-2}
"""Max |fused - reference| / max |reference| accepted per dtype (as tests/test_kernels_correctness.py)."""


# -- timing ------------------------------------------------------------------------

def _block(out) -> None:
    import jax

    jax.block_until_ready(out)


DEFAULT_REPEATS = {"quick": 11, "full": 21}
"""Fewest timed rounds per point of each sweep."""

DEFAULT_MIN_TIME_S = {"quick": 0.5, "full": 3.0}
"""Timed seconds per path and point each sweep asks for (more rounds for short programs, see
:func:`time_round_robin`)."""

MAX_ROUNDS = 201
"""Cap on the timed rounds of one point when ``min_time_s`` asks for more than ``repeats``."""


def check_min_time_s(value, option: str = "min_time_s") -> None:
    """Raise ``ValueError`` naming ``option`` and ``value`` unless it is a finite number of seconds >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{option} must be a finite number of seconds >= 0, got {option}={value!r}")


TPU_CALLS_PER_SAMPLE = 8
"""Back-to-back calls per timed sample on a TPU (see :func:`time_round_robin`). A jitted call and its
sync cost the host about 16 us on this project's 2-core machine (the ``cpu`` chip's ``launch_overhead_s``,
``perfmodel calibrate cpu``: a jitted op on 8 floats); one call per sample would add that to TPU programs
the quick sweep predicts at 36 us (v5p) to 8.7 ms (v5e) (:func:`predict_tpu_point` over
``tpu_points("quick")``, both paths, five TPUs), while the model charges 2 us per kernel launch. Queued calls
overlap each dispatch with the device work of the call before, leaving one unhidden dispatch and one sync
per 8 calls. A TPU VM's host cost is not measured here (no TPU)."""


def time_round_robin(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                     min_time_s: float = 0.0, max_rounds: int = MAX_ROUNDS,
                     timer: Callable[[], float] = time.perf_counter,
                     block: Callable[[object], None] = _block,
                     calls_per_sample: int = 1) -> dict[str, tuple[float, ...]]:
    """Samples (seconds) of each zero-argument ``fns[name]`` over ``n`` rounds.

    ``warmup`` untimed calls each first (compilation). With ``min_time_s > 0``
    one more call of each is timed as a probe (discarded) and the number of
    rounds is ``n = min(max_rounds, max(repeats, ceil(min_time_s / t_fastest)))``:
    every function gets at least ``min_time_s`` of timed calls (a short program's
    per-call noise from the scheduler is then averaged over more rounds), but
    never fewer than ``repeats`` rounds; ``min_time_s = 0`` gives exactly
    ``repeats``. Round ``i`` calls every function once, in the given order for
    even ``i`` and reversed for odd ``i``; each call is timed up to
    ``block(result)`` (``jax.block_until_ready``).

    ``calls_per_sample = K > 1``: a sample is ``K`` calls dispatched back to back, timed up to
    ``block`` of the last result (one device runs them in order), divided by ``K``: the per-call
    time without K - 1 of the host's dispatch-and-sync round trips (:data:`TPU_CALLS_PER_SAMPLE`).
    """
    if not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got repeats={repeats!r}")
    if not isinstance(calls_per_sample, int) or isinstance(calls_per_sample, bool) or calls_per_sample <= 0:
        raise ValueError(f"calls_per_sample must be a positive integer, got calls_per_sample={calls_per_sample!r}")

    def timed(fn) -> float:
        t0 = timer()
        for _ in range(calls_per_sample - 1):
            fn()
        block(fn())
        return (timer() - t0) / calls_per_sample

    check_min_time_s(min_time_s)
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    names = list(fns)
    rounds = repeats
    if min_time_s > 0:
        probes = []
        for name in names:
            probes.append(timed(fns[name]) * calls_per_sample)  # the seconds one sample takes
        fastest = max(min(probes), 1e-9)
        rounds = min(max(max_rounds, repeats), max(repeats, math.ceil(min_time_s / fastest)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            samples[name].append(timed(fns[name]))
    return {n: tuple(s) for n, s in samples.items()}


def median(xs) -> float:
    return float(statistics.median(xs))


def paired_speedup(slow: tuple[float, ...], fast: tuple[float, ...]) -> float:
    """Median over rounds of ``slow_i / fast_i`` (robust to load that changes between rounds)."""
    return median([a / b for a, b in zip(slow, fast)])


def split_half_agrees(slow: tuple[float, ...], fast: tuple[float, ...]) -> bool:
    """Do the first and second halves of the rounds name the same winner (paired speedups on each side of 1)?

    The measurement's own reliability: a sweep whose halves disagree on a point's winner cannot be
    predicted at that point by any model; the fraction of agreeing points is the ceiling for the
    predicted-winner score of that run. With fewer than 2 rounds there is nothing to split (True).
    """
    k = len(slow) // 2
    if k == 0:
        return True
    return (paired_speedup(slow[:k], fast[:k]) > 1) == (paired_speedup(slow[k:], fast[k:]) > 1)


SPEEDUP_CI_LEVEL = 0.95
SPEEDUP_CI_RESAMPLES = 2000


def speedup_interval(slow: tuple[float, ...], fast: tuple[float, ...], *, level: float = SPEEDUP_CI_LEVEL,
                     resamples: int = SPEEDUP_CI_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of :func:`paired_speedup`: resample the rounds, take the median ratio.

    The measurement *decides* a point's winner when the interval excludes 1; otherwise the
    point is a tie within the run's noise, and no prediction can be scored against it. Rounds
    are resampled as pairs (one round = one call of each function, sharing the machine's load).
    Fixed ``seed``: the same samples give the same interval. Fewer than 2 rounds: ``(r, r)``.
    """
    ratios = np.asarray(slow, float) / np.asarray(fast, float)
    if ratios.size < 2:
        r = float(ratios[0]) if ratios.size else float("nan")
        return r, r
    rng = np.random.default_rng(seed)
    meds = np.median(ratios[rng.integers(0, ratios.size, (resamples, ratios.size))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def measurement_decides(slow: tuple[float, ...], fast: tuple[float, ...]) -> bool:
    """Does the :func:`speedup_interval` of the rounds exclude 1 (a winner beyond the run's noise)?"""
    lo, hi = speedup_interval(slow, fast)
    return lo > 1 or hi < 1


# -- records -------------------------------------------------------------------------

class _PairedRounds:
    """Noise checks of a record's paired rounds: ``_rounds`` = (ragged_dot path samples, the other's)."""

    @property
    def split_half_agrees(self) -> bool:
        """The measurement's own winner is the same in both halves of the rounds (see :func:`split_half_agrees`)."""
        return split_half_agrees(*self._rounds)

    @property
    def meas_speedup_interval(self) -> tuple[float, float]:
        return speedup_interval(*self._rounds)

    @property
    def measurement_decides(self) -> bool:
        """The measured speedup's 95% bootstrap interval excludes 1 (see :func:`speedup_interval`)."""
        return measurement_decides(*self._rounds)


@attrs.frozen(kw_only=True)
class CorrectnessRecord:
    """Fused kernel (interpret mode on CPU) vs ``implementation="reference"``."""

    T: int
    D: int
    F: int
    E: int
    glu: bool
    activation: str
    distribution: str
    dtype: str
    max_abs_err: float
    max_rel_err: float  # max |fused - reference| / max |reference|
    tolerance: float
    interpret: bool
    tiles: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.max_rel_err <= self.tolerance


@attrs.frozen(kw_only=True)
class CpuRecord(_PairedRounds):
    """One CPU sweep point: both XLA formulations, predicted (two rate sets) and measured."""

    point: CpuPoint
    tf: int
    pred_ragged_s: float  # op-kind rates measured at run start
    pred_chunked_s: float
    roofline_ragged_s: float  # plain roofline of the calibrated cpu chip (no page faults)
    roofline_chunked_s: float
    ragged_bound: str
    chunked_bound: str
    executed_flops: float
    useful_flops: float
    ragged_bytes: float  # executed bytes read + written, all ops and iterations
    chunked_bytes: float
    ragged_samples_s: tuple[float, ...]
    chunked_samples_s: tuple[float, ...]
    max_abs_diff: float  # chunked vs ragged_dot outputs
    max_rel_diff: float
    rates_index: int = 0  # which entry of Results.rates_history predicted this point
    # Diagnostics (not in the model): XLA's temp allocation per call (compiled memory analysis) and the
    # minor page faults one call takes, in bytes (4 KiB pages; None where getrusage is unavailable).
    ragged_temp_bytes: float | None = None
    chunked_temp_bytes: float | None = None
    ragged_fault_bytes: float | None = None
    chunked_fault_bytes: float | None = None
    # The cpu chip model's page-fault term (cpu_moe.page_fault_s of the temp block, s per call);
    # None in runs made before it existed (their chip model is the plain roofline).
    ragged_fault_pred_s: float | None = None
    chunked_fault_pred_s: float | None = None

    @property
    def meas_ragged_s(self) -> float:
        return median(self.ragged_samples_s)

    @property
    def meas_chunked_s(self) -> float:
        return median(self.chunked_samples_s)

    @property
    def pred_speedup(self) -> float:
        """ragged_dot time / chunked time (> 1: the formulation without the round trip wins)."""
        return self.pred_ragged_s / self.pred_chunked_s

    @property
    def roofline_speedup(self) -> float:
        return self.roofline_ragged_s / self.roofline_chunked_s

    @property
    def has_fault_model(self) -> bool:
        return self.ragged_fault_pred_s is not None and self.chunked_fault_pred_s is not None

    @property
    def chip_ragged_s(self) -> float:
        """The calibrated cpu chip's prediction: roofline + page faults of the temp block."""
        return self.roofline_ragged_s + (self.ragged_fault_pred_s or 0.0)

    @property
    def chip_chunked_s(self) -> float:
        return self.roofline_chunked_s + (self.chunked_fault_pred_s or 0.0)

    @property
    def chip_speedup(self) -> float:
        return self.chip_ragged_s / self.chip_chunked_s

    @property
    def chip_winner_agrees(self) -> bool:
        return (self.chip_speedup > 1) == (self.meas_speedup > 1)

    @property
    def meas_speedup(self) -> float:
        return paired_speedup(self.ragged_samples_s, self.chunked_samples_s)

    @property
    def winner_agrees(self) -> bool:
        return (self.pred_speedup > 1) == (self.meas_speedup > 1)

    @property
    def roofline_winner_agrees(self) -> bool:
        return (self.roofline_speedup > 1) == (self.meas_speedup > 1)

    @property
    def _rounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.ragged_samples_s, self.chunked_samples_s


@attrs.frozen(kw_only=True)
class TpuRecord(_PairedRounds):
    """One TPU sweep point: fused vs ragged_dot forward, predicted and measured."""

    point: TpuPoint
    chip: str
    fused_tiles: tuple[int, int]
    pred_fused_s: float
    pred_ragged_s: float
    sentence: str
    fused_samples_s: tuple[float, ...]
    ragged_samples_s: tuple[float, ...]
    max_rel_diff: float  # fused vs ragged_dot outputs, relative to max |ragged_dot|
    # bf16 runs: the CPU correctness check's bf16 tolerance (records written before the check get it on loading)
    tolerance: float = TOLERANCE["bf16"]

    @property
    def ok(self) -> bool:
        """The fused kernel's output matches the ragged_dot path's: ``max_rel_diff <= tolerance`` (NaN fails)."""
        return self.max_rel_diff <= self.tolerance

    @property
    def meas_fused_s(self) -> float:
        return median(self.fused_samples_s)

    @property
    def meas_ragged_s(self) -> float:
        return median(self.ragged_samples_s)

    @property
    def pred_speedup(self) -> float:
        """ragged_dot path time / fused time (> 1: fusion wins)."""
        return self.pred_ragged_s / self.pred_fused_s

    @property
    def meas_speedup(self) -> float:
        return paired_speedup(self.ragged_samples_s, self.fused_samples_s)

    @property
    def winner_agrees(self) -> bool:
        return (self.pred_speedup > 1) == (self.meas_speedup > 1)

    @property
    def _rounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.ragged_samples_s, self.fused_samples_s


@attrs.frozen(kw_only=True)
class Summary:
    """Error statistics over a sweep: per path, ``median |pred / meas - 1|``; winner agreement."""

    points: int
    median_abs_rel_err: tuple[tuple[str, float], ...]
    winner_correct: int
    extra: tuple[tuple[str, float], ...] = ()

    @property
    def winner_fraction(self) -> float:
        return self.winner_correct / self.points if self.points else float("nan")


RATES_MAX_AGE_S = 30.0
"""On CPU the micro-kernel rates are re-measured when older than this (the machine's load drifts)."""

TIE = 0.10
"""Predicted speedups within ``1 +- TIE`` are near-ties (reported separately: noise decides them here)."""


def _abs_rel(pred: float, meas: float) -> float:
    return abs(pred / meas - 1.0)


def summarize_cpu(records) -> Summary:
    recs = list(records)
    if not recs:
        return Summary(points=0, median_abs_rel_err=(), winner_correct=0)
    err = (("ragged_dot (measured rates)", median([_abs_rel(r.pred_ragged_s, r.meas_ragged_s) for r in recs])),
           ("chunked (measured rates)", median([_abs_rel(r.pred_chunked_s, r.meas_chunked_s) for r in recs])),
           ("ragged_dot (cpu chip roofline)", median([_abs_rel(r.roofline_ragged_s, r.meas_ragged_s) for r in recs])),
           ("chunked (cpu chip roofline)", median([_abs_rel(r.roofline_chunked_s, r.meas_chunked_s) for r in recs])),
           ("ragged_dot (cpu chip + page faults)", median([_abs_rel(r.chip_ragged_s, r.meas_ragged_s) for r in recs])),
           ("chunked (cpu chip + page faults)", median([_abs_rel(r.chip_chunked_s, r.meas_chunked_s) for r in recs])),
           ("speedup (measured rates)", median([_abs_rel(r.pred_speedup, r.meas_speedup) for r in recs])))
    decided = [r for r in recs if abs(r.pred_speedup - 1) >= TIE]
    chip_decided = [r for r in recs if abs(r.chip_speedup - 1) >= TIE]
    return Summary(points=len(recs), median_abs_rel_err=err, winner_correct=sum(r.winner_agrees for r in recs),
                   extra=(("roofline_winner_correct", float(sum(r.roofline_winner_agrees for r in recs))),
                          ("chip_winner_correct", float(sum(r.chip_winner_agrees for r in recs))),
                          ("fault_model_points", float(sum(r.has_fault_model for r in recs))),
                          ("decided_points", float(len(decided))),
                          ("split_half_agree", float(sum(r.split_half_agrees for r in recs))),
                          ("decided_winner_correct", float(sum(r.winner_agrees for r in decided))))
                   + _measured_decided(recs)
                   + (("measured_decided_chip_winner_correct",
                       float(sum(r.chip_winner_agrees for r in recs if r.measurement_decides))),
                      ("chip_decided_points", float(len(chip_decided))),
                      ("chip_decided_winner_correct", float(sum(r.chip_winner_agrees for r in chip_decided)))))


def chip_winner_correct(extra: dict) -> int | None:
    """The calibrated cpu chip model's winner score from :func:`summarize_cpu`'s ``extra`` (as a dict), or
    None for a run made before the page-fault term (its chip model is the plain roofline)."""
    if extra.get("fault_model_points") and "chip_winner_correct" in extra:
        return int(extra["chip_winner_correct"])
    return None


def _measured_decided(recs) -> tuple[tuple[str, float], ...]:
    """Points whose measured winner is beyond the run's noise, and how many of them the model gets right."""
    dec = [r for r in recs if r.measurement_decides]
    return (("measured_decided_points", float(len(dec))),
            ("measured_decided_winner_correct", float(sum(r.winner_agrees for r in dec))))


def summarize_tpu(records) -> Summary:
    recs = list(records)
    if not recs:
        return Summary(points=0, median_abs_rel_err=(), winner_correct=0)
    err = (("fused", median([_abs_rel(r.pred_fused_s, r.meas_fused_s) for r in recs])),
           ("ragged_dot", median([_abs_rel(r.pred_ragged_s, r.meas_ragged_s) for r in recs])),
           ("speedup", median([_abs_rel(r.pred_speedup, r.meas_speedup) for r in recs])))
    return Summary(points=len(recs), median_abs_rel_err=err, winner_correct=sum(r.winner_agrees for r in recs),
                   extra=(("split_half_agree", float(sum(r.split_half_agrees for r in recs))),
                          ("output_correct", float(sum(r.ok for r in recs))))
                   + _measured_decided(recs))


# -- inputs ------------------------------------------------------------------------------

def make_inputs(*, T: int, D: int, F: int, E: int, glu: bool, dtype: str, distribution: str, seed: int = 0,
                sizes=None):
    """``(x, group_sizes, w_up, w_down[, w_gate])`` with unit-scale outputs (weights ~ N(0, 1/fan_in))."""
    import jax.numpy as jnp

    from perfmodel.fusion import group_sizes

    jdt = {"f32": jnp.float32, "bf16": jnp.bfloat16}[dtype]
    rng = np.random.default_rng(seed)
    gs = np.asarray(sizes if sizes is not None else group_sizes(T, E, distribution, seed=seed), np.int32)

    def arr(shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) / math.sqrt(fan_in), jdt)

    args = [arr((T, D), 1), jnp.asarray(gs), arr((E, D, F), D), arr((E, F, D), F)]
    if glu:
        args.append(arr((E, D, F), D))
    return tuple(args)


def _rel_diff(a, b) -> tuple[float, float]:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return d, d / scale if scale > 0 else d


# -- CPU runs --------------------------------------------------------------------------------

def run_correctness(shapes=CORRECTNESS_SHAPES, *, progress: Callable[[str], None] = print):
    """Fused kernel in interpret mode vs the reference at ``shapes`` (correctness only)."""
    import jax

    from kernels import moe_ffn

    out = []
    from kernels import FusedTiles

    for T, D, F, E, glu, dist, dtype, tiles in shapes:
        ft = None if tiles is None else FusedTiles(tm=tiles[0], tf=tiles[1])
        args = make_inputs(T=T, D=D, F=F, E=E, glu=glu, dtype=dtype, distribution=dist)
        act = "silu" if glu else "gelu"
        fused = jax.jit(lambda *a: moe_ffn(*a, activation=act, implementation="fused", tiles=ft))(*args)
        ref = jax.jit(lambda *a: moe_ffn(*a, activation=act, implementation="reference"))(*args)
        d, rel = _rel_diff(fused, ref)
        rec = CorrectnessRecord(T=T, D=D, F=F, E=E, glu=glu, activation=act, distribution=dist, dtype=dtype,
                                max_abs_err=d, max_rel_err=rel, tolerance=TOLERANCE[dtype],
                                interpret=jax.devices()[0].platform != "tpu", tiles=tiles)
        progress(f"correctness T={T} D={D} F={F} E={E}{' GLU' if glu else ''} {dist} {dtype} tiles={tiles or 'default'}: "
                 f"max rel err {rel:.2e} ({'ok' if rec.ok else 'FAIL'})")
        out.append(rec)
    return out


STEADY_MALLOC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                          "glibc.malloc.trim_threshold=17179869184")
"""glibc tunables (environment variable ``GLIBC_TUNABLES``, read at process start) for a *steady* heap.

One arena for every thread, no mmapped blocks and no trimming below 16 GiB: a block freed at the end
of one call stays in the heap and usually serves the same request at the next call, so XLA's per-call
temporaries mostly stop faulting fresh pages. Not always: now and then fragmentation makes the heap grow
and a call faults again (``tests/test_kernel_harness.py`` therefore checks the fewest faults of 6 calls, in up to 3 processes:
in 2 of 11 processes here every call faulted, 2026-12-02). The committed full sweeps
(``validation/results/kernel_cpu/heap_control``, 2026-12-02) faulted 0 MiB per call over all 132 programs
with these tunables and 2902 MiB without (an earlier pair: 29 and 3080 MiB). TPU and GPU runtimes hand out device memory
from a pool they reserved up front, so the steady heap is the closer CPU stand-in for them; the micro-kernel rates and
the timed programs of one run share the same allocator either way. Ignored by a non-glibc libc
(the per-call fault column of the report shows whether it took effect). A control, not the default:
``validation/results/kernel_cpu/heap_control`` shows what it changes.
"""

MALLOC_MODES = ("steady", "default")


def malloc_env(mode: str, environ=None) -> dict[str, str] | None:
    """The environment a CPU run needs for allocator ``mode``, or None if the current one already fits.

    ``steady``: ``GLIBC_TUNABLES`` = :data:`STEADY_MALLOC_TUNABLES` (a child process must be started with
    it: glibc reads tunables once, at start-up). ``default``: whatever this process has (never a child).
    """
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc must be one of {MALLOC_MODES}, got malloc={mode!r}")
    environ = dict(os.environ if environ is None else environ)
    if mode == "default" or environ.get("GLIBC_TUNABLES") == STEADY_MALLOC_TUNABLES:
        return None
    return {**environ, "GLIBC_TUNABLES": STEADY_MALLOC_TUNABLES}


def fault_bytes_per_call(fn: Callable[[], object], calls: int = 3) -> float | None:
    """Minor page faults of one call of ``fn`` (after a warm-up call), as bytes of 4 KiB pages.

    A diagnostic of the CPU runtime, not a model input: XLA on CPU allocates a program's temporaries
    as one block per call; glibc serves blocks above :data:`MMAP_THRESHOLD_MAX_BYTES` with fresh
    pages, which fault on first touch every call. ``None`` where ``getrusage`` is missing.
    Counts assume 4 KiB pages (what XLA's allocations get here); memory backed by transparent huge
    pages faults once per 2 MiB and is undercounted.
    """
    try:
        import resource
    except ImportError:  # not on Linux / macOS
        return None
    _block(fn())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        _block(fn())
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls * 4096.0


def run_cpu_point(point: CpuPoint, *, rates, chip, repeats: int, min_time_s: float = 0.0,
                  timer=time.perf_counter) -> CpuRecord:
    """Predict and time both XLA formulations at ``point`` (f32) and check their outputs agree.

    Three predictions: the measured micro-kernel ``rates``; the calibrated ``chip``'s plain roofline; and
    that roofline plus :func:`validation.cpu_moe.page_fault_s` of each program's temp block (XLA's compiled
    memory analysis, known before timing; the heap setting is this process's ``GLIBC_TUNABLES``).
    """
    import jax

    from validation import cpu_moe

    shape = dict(T=point.T, D=point.D, F=point.F, E=point.E, glu=point.glu, activation=point.activation)
    chip_rates = cpu_moe.CpuRates.from_chip(chip)
    tf = point.tf or cpu_moe.best_chunk(chip_rates, **shape)  # the scored model's choice
    pr = cpu_moe.predict_ragged_path(rates, **shape)
    pc = cpu_moe.predict_chunked(rates, **shape, tf=tf)
    rr = cpu_moe.predict_ragged_path(chip_rates, **shape)
    rc = cpu_moe.predict_chunked(chip_rates, **shape, tf=tf)
    args = make_inputs(T=point.T, D=point.D, F=point.F, E=point.E, glu=point.glu, dtype="f32",
                       distribution=point.distribution)
    fs = {name: jax.jit(f) for name, f in cpu_moe.formulations(activation=point.activation, tf=tf).items()}
    d, rel = _rel_diff(fs["chunked"](*args), fs["ragged_dot"](*args))
    samples = time_round_robin({n: (lambda f=f: f(*args)) for n, f in fs.items()}, repeats=repeats,
                               min_time_s=min_time_s, timer=timer)
    temp = {n: f.lower(*args).compile().memory_analysis().temp_size_in_bytes for n, f in fs.items()}
    faults = {n: fault_bytes_per_call(lambda f=f: f(*args)) for n, f in fs.items()}
    fault_rate = chip_rates.page_fault_bytes_per_s
    mmaps = heap_mmaps_large_blocks(os.environ.get("GLIBC_TUNABLES"))
    fault_pred = {n: None if fault_rate is None else cpu_moe.page_fault_s(
        float(t), page_fault_bytes_per_s=fault_rate, mmaps_large_blocks=mmaps) for n, t in temp.items()}
    return CpuRecord(ragged_temp_bytes=float(temp["ragged_dot"]), chunked_temp_bytes=float(temp["chunked"]),
                     ragged_fault_pred_s=fault_pred["ragged_dot"], chunked_fault_pred_s=fault_pred["chunked"],
                     ragged_fault_bytes=faults["ragged_dot"], chunked_fault_bytes=faults["chunked"],
                     point=point, tf=tf, pred_ragged_s=pr.time_s, pred_chunked_s=pc.time_s,
                     roofline_ragged_s=rr.time_s, roofline_chunked_s=rc.time_s, ragged_bound=pr.bound,
                     chunked_bound=pc.bound, executed_flops=pr.flops, useful_flops=pr.useful_flops,
                     ragged_bytes=pr.bytes, chunked_bytes=pc.bytes,
                     ragged_samples_s=samples["ragged_dot"], chunked_samples_s=samples["chunked"],
                     max_abs_diff=d, max_rel_diff=rel)


@attrs.frozen(kw_only=True)
class CostCheckRow:
    """Model bytes/FLOPs vs XLA's cost analysis at one small shape (loop body counted once, as XLA does)."""

    shape: str
    formulation: str
    model_bytes: float
    xla_bytes: float
    model_dot_flops: float
    xla_flops: float


COST_CHECK_SHAPES = ((512, 32, 512, 8, False, 128), (512, 64, 512, 8, True, 128))


def run_cost_check(shapes=COST_CHECK_SHAPES):
    """Compile both formulations at ``shapes`` and compare the op model with ``cost_analysis()``."""
    from validation import cpu_moe

    rows = []
    for T, D, F, E, glu, tf in shapes:
        act = "silu" if glu else "gelu"
        args = make_inputs(T=T, D=D, F=F, E=E, glu=glu, dtype="f32", distribution="uniform")
        fs = cpu_moe.formulations(activation=act, tf=tf)
        shape = dict(T=T, D=D, F=F, E=E, glu=glu, activation=act)
        for name, ops in (("ragged_dot", cpu_moe.ragged_path_ops(**shape)),
                          ("chunked", cpu_moe.chunked_ops(**shape, tf=tf))):
            c = cpu_moe.xla_cost_check(fs[name], args, ops, formulation=name)
            rows.append(CostCheckRow(shape=f"T={T} D={D} F={F} E={E}{' GLU' if glu else ''} tf={tf}",
                                     formulation=name, model_bytes=c.model_bytes, xla_bytes=c.xla_bytes,
                                     model_dot_flops=c.model_flops, xla_flops=c.xla_flops))
    return rows


# -- TPU runs ---------------------------------------------------------------------------------

def predict_tpu_point(point: TpuPoint, chip: str):
    """:func:`perfmodel.fusion.predict_fusion` at ``point`` (bf16) with the group sizes the run uses."""
    from perfmodel.fusion import group_sizes, predict_fusion

    gs = group_sizes(point.rows, point.E, point.distribution)
    return predict_fusion(chip=chip, tokens=point.tokens, D=point.D, F=point.F, E=point.E, k=point.k,
                          glu=point.glu, dtype="bf16", tiles=point.tiles, sizes=gs), gs


def run_tpu_point(point: TpuPoint, *, chip: str, repeats: int, min_time_s: float = 0.0, timer=time.perf_counter,
                  time_fns: Callable | None = None) -> TpuRecord:
    """Predict and time the fused kernel vs the ragged_dot path at ``point`` (bf16 forward).

    ``time_fns(point, prediction, group_sizes, *, repeats, min_time_s, timer) -> (fused_samples,
    ragged_samples, max_rel_diff)``
    replaces the real timing (tests inject one; the default compiles and times
    ``kernels.moe_ffn`` on the default device).
    """
    pred, gs = predict_tpu_point(point, chip)
    fused_s, ragged_s, rel = (time_fns or _time_tpu)(point, pred, gs, repeats=repeats, min_time_s=min_time_s,
                                                     timer=timer)
    return TpuRecord(point=point, chip=chip, fused_tiles=tuple(pred.fused_tiles), pred_fused_s=pred.fused_time_s,
                     pred_ragged_s=pred.unfused_time_s, sentence=pred.sentence, fused_samples_s=tuple(fused_s),
                     ragged_samples_s=tuple(ragged_s), max_rel_diff=rel)


def _time_tpu(point: TpuPoint, pred, gs, *, repeats: int, min_time_s: float, timer):
    import jax

    from kernels import FusedTiles, moe_ffn

    args = make_inputs(T=point.rows, D=point.D, F=point.F, E=point.E, glu=point.glu, dtype="bf16",
                       distribution=point.distribution, sizes=gs)
    tiles = FusedTiles(tm=pred.fused_tiles[0], tf=pred.fused_tiles[1])
    fused = jax.jit(lambda *a: moe_ffn(*a, activation=pred.activation, implementation="fused", tiles=tiles))
    ragged = jax.jit(lambda *a: moe_ffn(*a, activation=pred.activation, implementation="ragged_dot"))
    _, rel = _rel_diff(fused(*args), ragged(*args))
    s = time_round_robin({"fused": lambda: fused(*args), "ragged_dot": lambda: ragged(*args)},
                         repeats=repeats, min_time_s=min_time_s, timer=timer, calls_per_sample=TPU_CALLS_PER_SAMPLE)
    return s["fused"], s["ragged_dot"], rel


# -- the whole run ------------------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class RunInfo:
    """Where and how a validation run happened."""

    device_platform: str
    device_kind: str
    chip: str
    sweep: str
    repeats: int
    started_at: str
    host: str
    cpu_count: int
    load_average: tuple[float, float, float]
    jax_version: str
    command: str
    malloc_tunables: str = ""  # GLIBC_TUNABLES of the run ("": glibc's default heap; see STEADY_MALLOC_TUNABLES)
    # CPU: the rates that chose each unforced F chunk tf (runs before 2026-12-02 used the measured ones)
    chunk_chosen_by: str = "measured micro-kernel rates"
    # more rounds than ``repeats`` until each path has this much timed (time_round_robin); 0 before 2026-12-02
    min_time_s: float = 0.0
    # calls per timed sample (time_round_robin; TPU_CALLS_PER_SAMPLE on a TPU since 2026-12-04, 1 on CPU)
    calls_per_sample: int = 1


def _json_default(o):
    if attrs.has(type(o)):
        return attrs.asdict(o, recurse=True)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


class _Sink:
    """Appends one JSON line per finished record (flushed), so an interrupt loses at most one point."""

    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        path.write_text("")

    def write(self, kind: str, record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "record": record}, default=_json_default) + "\n")
            f.flush()


@attrs.frozen(kw_only=True)
class Results:
    info: RunInfo
    correctness: tuple[CorrectnessRecord, ...] = ()
    cost_check: tuple[CostCheckRow, ...] = ()
    rates: object = None  # the first set of measured rates (or the chip roofline)
    rates_history: tuple = ()  # every set measured during the run, in order
    chip_rates: object = None
    cpu: tuple[CpuRecord, ...] = ()
    tpu: tuple[TpuRecord, ...] = ()
    errors: tuple[str, ...] = ()  # every point not timed: skipped (a ValueError, e.g. tiles too big) or failed
    failed: tuple[str, ...] = ()  # the subset that raised anything else: the kernel failed on the chip
    complete: bool = True


def run(*, sweep: str = "quick", out: str | os.PathLike = "validation/results/kernel", repeats: int | None = None,
        min_time_s: float | None = None, device=None, progress: Callable[[str], None] = print, command: str = "perfmodel validate kernel",
        recalibrate: bool = True, points=None, time_fns: Callable | None = None,
        correctness_shapes=CORRECTNESS_SHAPES, cost_check_shapes=COST_CHECK_SHAPES) -> tuple[Results, list[pathlib.Path]]:
    """Run the harness on ``device`` (default ``jax.devices()[0]``), write the outputs to ``out``.

    ``points`` overrides the sweep's points (CPU: :class:`CpuPoint`, TPU:
    :class:`TpuPoint`); ``device`` may be any object with ``platform`` and
    ``device_kind`` (tests use a fake TPU with ``time_fns``). On CPU,
    ``recalibrate=False`` uses the saved ``cpu`` chip roofline as the primary
    rates instead of timing micro-kernels first. Each point is timed over at
    least ``repeats`` rounds and until each path has ``min_time_s`` of timed
    calls (:func:`time_round_robin`; defaults :data:`DEFAULT_REPEATS` and
    :data:`DEFAULT_MIN_TIME_S` of the sweep).
    """
    import jax

    from perfmodel.hardware import chip_for_device, get_chip
    from perfmodel.tpu_compile import default_device

    _check_sweep(sweep)
    device = device or default_device()
    on_tpu = device.platform == "tpu"
    if repeats is None:
        repeats = DEFAULT_REPEATS[sweep]
    if not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive integer, got repeats={repeats!r}")
    if min_time_s is None:
        min_time_s = DEFAULT_MIN_TIME_S[sweep]
    check_min_time_s(min_time_s)
    chip = get_chip(device.device_kind) if on_tpu else chip_for_device(device)
    outdir = pathlib.Path(out)
    sink = _Sink(outdir / "results.jsonl")
    info = RunInfo(device_platform=device.platform, device_kind=device.device_kind, chip=chip.name, sweep=sweep,
                   repeats=repeats, started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   host=f"{platform.machine()} {_cpu_model()}", cpu_count=os.cpu_count() or 1,
                   load_average=tuple(round(x, 2) for x in os.getloadavg()), jax_version=jax.__version__,
                   command=command, malloc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                   chunk_chosen_by="-" if on_tpu else "calibrated cpu chip roofline", min_time_s=float(min_time_s),
                   calls_per_sample=TPU_CALLS_PER_SAMPLE if on_tpu else 1)
    sink.write("info", info)
    state = dict(info=info)
    t_start = time.perf_counter()
    try:
        if on_tpu:
            _run_tpu(state, sink, points or tpu_points(sweep), chip.name, repeats, min_time_s, progress, time_fns,
                     t_start)
        else:
            _run_cpu(state, sink, points or cpu_points(sweep), chip, repeats, min_time_s, progress, recalibrate, t_start,
                     correctness_shapes, cost_check_shapes)
    except BaseException as err:  # Ctrl-C, SIGTERM, or a failure outside the per-point handling
        why = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed ({type(err).__name__}: {err})"
        progress(f"{why}: writing the report from the finished points")
        results = Results(**state, complete=False)
        paths = write_outputs(results, outdir)
        raise
    results = Results(**state)
    paths = write_outputs(results, outdir)
    return results, paths


def _elapsed(t0: float) -> str:
    return f"[{time.perf_counter() - t0:6.1f} s]"


def _run_cpu(state, sink, points, chip, repeats, min_time_s, progress, recalibrate, t0, correctness_shapes,
             cost_check_shapes) -> None:
    from validation import cpu_moe

    progress(f"{_elapsed(t0)} device cpu: fused kernel = correctness only (interpret mode timings are meaningless)")
    corr = []
    for rec in run_correctness(correctness_shapes, progress=lambda s: progress(f"{_elapsed(t0)} {s}")):
        corr.append(rec)
        sink.write("correctness", rec)
        state["correctness"] = tuple(corr)
    state["cost_check"] = tuple(run_cost_check(cost_check_shapes))
    for row in state["cost_check"]:
        sink.write("cost_check", row)
    progress(f"{_elapsed(t0)} cost model vs XLA cost_analysis: "
             + ", ".join(f"{r.formulation} bytes x{r.model_bytes / r.xla_bytes:.4f}" for r in state["cost_check"]))
    state["chip_rates"] = cpu_moe.CpuRates.from_chip(chip)
    history, measured_at = [], -math.inf

    def current_rates():
        nonlocal measured_at
        if not recalibrate:
            rates = state["chip_rates"]
        elif time.perf_counter() - measured_at > RATES_MAX_AGE_S:
            rates = cpu_moe.measure_rates()
            measured_at = time.perf_counter()
            progress(f"{_elapsed(t0)} rates now: " + _rates_line(rates))
        else:
            return history[-1], len(history) - 1
        if not history or rates is not history[-1]:
            history.append(rates)
            sink.write("rates", rates)
            state["rates"], state["rates_history"] = history[0], tuple(history)
        return rates, len(history) - 1

    recs = []
    for i, p in enumerate(points):
        rates, k = current_rates()
        rec = attrs.evolve(run_cpu_point(p, rates=rates, chip=chip, repeats=repeats, min_time_s=min_time_s),
                           rates_index=k)
        recs.append(rec)
        sink.write("cpu", rec)
        state["cpu"] = tuple(recs)
        progress(f"{_elapsed(t0)} [{i + 1}/{len(points)}] {p.label} tf={rec.tf}: ragged_dot {rec.meas_ragged_s * 1e3:.2f} ms"
                 f" (pred {rec.pred_ragged_s * 1e3:.2f}), chunked {rec.meas_chunked_s * 1e3:.2f} ms "
                 f"(pred {rec.pred_chunked_s * 1e3:.2f}); speedup meas {rec.meas_speedup:.2f}x, pred cpu chip "
                 f"{rec.chip_speedup:.2f}x {'ok' if rec.chip_winner_agrees else 'WRONG WINNER'}, measured rates "
                 f"{rec.pred_speedup:.2f}x {'ok' if rec.winner_agrees else 'WRONG WINNER'}")


def _run_tpu(state, sink, points, chip, repeats, min_time_s, progress, time_fns, t0) -> None:
    recs, errors, failed = [], [], []
    for i, p in enumerate(points):
        try:
            rec = run_tpu_point(p, chip=chip, repeats=repeats, min_time_s=min_time_s, time_fns=time_fns)
        except Exception as err:
            # ValueError: e.g. forced tiles that do not fit VMEM; anything else (jax's JaxRuntimeError, a
            # RuntimeError, for a Mosaic compile refusal or RESOURCE_EXHAUSTED) also costs only this point
            skipped = isinstance(err, ValueError)
            what = str(err) if skipped else f"{type(err).__name__}: {err}"
            errors.append(f"{p.label}: {what}")
            state["errors"] = tuple(errors)
            if not skipped:
                failed.append(errors[-1])
                state["failed"] = tuple(failed)
            sink.write("error", {"point": p, "error": what, "failed": not skipped})
            progress(f"{_elapsed(t0)} [{i + 1}/{len(points)}] {p.label}: "
                     f"{'skipped' if skipped else 'FAILED'} ({what})")
            continue
        recs.append(rec)
        sink.write("tpu", rec)
        state["tpu"] = tuple(recs)
        progress(f"{_elapsed(t0)} [{i + 1}/{len(points)}] {p.label}: fused {rec.meas_fused_s * 1e6:.1f} us (pred "
                 f"{rec.pred_fused_s * 1e6:.1f}), ragged_dot {rec.meas_ragged_s * 1e6:.1f} us (pred "
                 f"{rec.pred_ragged_s * 1e6:.1f}); speedup meas {rec.meas_speedup:.2f}x pred {rec.pred_speedup:.2f}x "
                 f"{'ok' if rec.winner_agrees else 'WRONG WINNER'}; output max rel diff {rec.max_rel_diff:.1e} "
                 f"{'ok' if rec.ok else 'WRONG OUTPUT'}")


def _rates_line(r) -> str:
    def tab(t):
        return "/".join(f"{v / 1e9:.2f}" for _, v in t)

    return (f"dot {r.flops_per_s / 1e9:.0f} GFLOP/s; GB/s by working set (small/medium/large): copy {tab(r.copy)}, "
            f"expand blocked {tab(r.expand_blocked)}, interleaved {tab(r.expand_interleaved)}; "
            f"op overhead {r.op_overhead_s * 1e6:.2f} us, call overhead {r.call_overhead_s * 1e6:.1f} us")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# -- outputs ---------------------------------------------------------------------------------------

def _tuples(v):
    """JSON lists back to the tuples the frozen records hold (recursively)."""
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build(cls, d: dict):
    return cls(**{k: _tuples(v) for k, v in d.items()})


def load_results(path: str | os.PathLike) -> Results:
    """Rebuild :class:`Results` from a ``results.json`` that :func:`write_outputs` wrote.

    Raw samples, predictions and rates are all in the file, so the report and plots can be
    re-rendered (``perfmodel validate kernel --render DIR``) without timing anything again.
    """
    from validation.cpu_moe import CpuRates

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results.json at {path} (run `perfmodel validate kernel --out DIR` first)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a `perfmodel validate kernel` results.json: not UTF-8 text "
                         f"(byte {err.start}: {err.reason})") from None
    d = jsonout.loads_object(text, f"{path} is not a `perfmodel validate kernel` results.json")
    missing = [k for k in ("info", "cpu", "tpu") if k not in d]
    if missing:
        raise ValueError(f"{path} is not a `perfmodel validate kernel` results.json: missing {', '.join(missing)}")

    def rates(r):
        if r is None:
            return None
        return _build(CpuRates, r)

    def cpu(r):
        return _build(CpuRecord, {**r, "point": _build(CpuPoint, r["point"])})

    def tpu(r):
        return _build(TpuRecord, {**r, "point": _build(TpuPoint, r["point"])})

    return Results(info=_build(RunInfo, d["info"]),
                   correctness=tuple(_build(CorrectnessRecord, r) for r in d.get("correctness", [])),
                   cost_check=tuple(_build(CostCheckRow, r) for r in d.get("cost_check", [])),
                   rates=rates(d.get("rates")), rates_history=tuple(rates(r) for r in d.get("rates_history", [])),
                   chip_rates=rates(d.get("chip_rates")), cpu=tuple(cpu(r) for r in d["cpu"]),
                   tpu=tuple(tpu(r) for r in d["tpu"]), errors=tuple(d.get("errors", ())),
                   failed=tuple(d.get("failed", ())),
                   complete=bool(d.get("complete", True)))


def write_outputs(results: Results, outdir: pathlib.Path, *, rendered: str = "") -> list[pathlib.Path]:
    """``results.json``, ``report.md`` and the plots (PNG + SVG) in ``outdir``.

    ``rendered``: a note that the report was re-rendered from a saved run (``--render``), shown under the title.
    """
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    js = outdir / "results.json"
    payload = attrs.asdict(results, recurse=True)
    payload["summary_cpu"] = attrs.asdict(summarize_cpu(results.cpu))
    payload["summary_tpu"] = attrs.asdict(summarize_tpu(results.tpu))
    payload["heap"] = ("default" if _mmaps(results) else "steady") if results.cpu else None
    payload["derived_cpu"] = [dict(meas_ragged_s=r.meas_ragged_s, meas_chunked_s=r.meas_chunked_s,
                                   meas_speedup=r.meas_speedup, pred_speedup=r.pred_speedup,
                                   meas_speedup_interval=r.meas_speedup_interval,
                                   measurement_decides=r.measurement_decides,
                                   winner_agrees=r.winner_agrees, chip_ragged_s=r.chip_ragged_s,
                                   chip_chunked_s=r.chip_chunked_s, chip_speedup=r.chip_speedup,
                                   chip_winner_agrees=r.chip_winner_agrees) for r in results.cpu]
    payload["derived_tpu"] = [dict(meas_fused_s=r.meas_fused_s, meas_ragged_s=r.meas_ragged_s,
                                   meas_speedup=r.meas_speedup, pred_speedup=r.pred_speedup,
                                   meas_speedup_interval=r.meas_speedup_interval,
                                   measurement_decides=r.measurement_decides,
                                   winner_agrees=r.winner_agrees, ok=r.ok) for r in results.tpu]
    js.write_text(json.dumps(payload, indent=1, default=_json_default))
    paths = [js]
    paths += plot_results(results, outdir)
    md = outdir / "report.md"
    md.write_text(to_markdown(results, plots=[p.name for p in paths if p.suffix == ".png"], rendered=rendered))
    return [md] + paths


def render(outdir: str | os.PathLike) -> list[pathlib.Path]:
    """Re-write ``report.md``, ``results.json`` (with the current summaries) and the plots of a saved run."""
    outdir = pathlib.Path(outdir)
    results = load_results(outdir / "results.json")
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return write_outputs(results, outdir, rendered=f"report re-rendered from the saved samples by "
                                                   f"`perfmodel validate kernel --render {outdir}` at {when}")


def plot_results(results: Results, outdir: pathlib.Path) -> list[pathlib.Path]:
    """Predicted vs measured time (scatter) and speedup vs tokens per expert; empty if nothing was timed."""
    from perfmodel.plots import _pyplot, save

    if results.tpu:
        series = {"fused": [(r.pred_fused_s, r.meas_fused_s) for r in results.tpu],
                  "ragged_dot": [(r.pred_ragged_s, r.meas_ragged_s) for r in results.tpu]}
        sp = [(r.point.tokens_per_expert, r.pred_speedup, r.meas_speedup, r.point.glu) for r in results.tpu]
        what, ylab = f"{results.info.chip}: fused kernel vs ragged_dot (forward, bf16)", "ragged_dot time / fused time"
    elif results.cpu:
        series = {"ragged_dot path": [(r.chip_ragged_s, r.meas_ragged_s) for r in results.cpu],
                  "chunked (no [T,F] round trip)": [(r.chip_chunked_s, r.meas_chunked_s) for r in results.cpu]}
        sp = [(r.point.tokens_per_expert, r.chip_speedup, r.meas_speedup, r.point.glu) for r in results.cpu]
        model = "cpu chip: roofline + page faults" if all(r.has_fault_model for r in results.cpu) else \
            "cpu chip roofline"
        what = f"CPU, XLA ragged_dot path vs F-chunked scan (f32)\npredicted by the calibrated {model}"
        ylab = "ragged_dot path time / chunked time"
    else:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    allv = [v for pts in series.values() for pm in pts for v in pm]
    lo, hi = min(allv) / 1.5, max(allv) * 1.5
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="predicted = measured")
    ax.plot([lo, hi], [2 * lo, 2 * hi], "k:", lw=0.8, label="2x off")
    ax.plot([lo, hi], [lo / 2, hi / 2], "k:", lw=0.8)
    for (name, pts), m in zip(series.items(), "os"):
        ax.scatter([p for p, _ in pts], [m_ for _, m_ in pts], marker=m, s=36, edgecolor="k", lw=0.5, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted time (s)")
    ax.set_ylabel("measured time (s, median)")
    ax.set_title(f"Predicted vs measured\n{what}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    p1 = save(fig, outdir / "predicted_vs_measured.png")

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for glu, col in ((False, "#4c72b0"), (True, "#dd8452")):
        pts = [s for s in sp if s[3] == glu]
        if not pts:
            continue
        lab = "GLU" if glu else "non-GLU"
        ax.scatter([s[0] for s in pts], [s[2] for s in pts], color=col, marker="o", s=40, edgecolor="k", lw=0.5,
                   label=f"measured ({lab})")
        ax.scatter([s[0] for s in pts], [s[1] for s in pts], facecolor="none", edgecolor=col, marker="D", s=40,
                   label=f"predicted ({lab})")
        for s in pts:
            ax.plot([s[0], s[0]], [s[1], s[2]], color=col, lw=0.6, alpha=0.6)
    ax.axhline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per expert (rows / E)")
    ax.set_ylabel(f"speedup: {ylab}")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}x" if v in (0.5, 2, 3, 5) else ""))
    ax.set_title(f"Speedup vs tokens per expert (above 1: the path without the [T,F] round trip wins)\n{what}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    p2 = save(fig, outdir / "speedup_vs_tokens_per_expert.png")
    return [p1, p1.with_suffix(".svg"), p2, p2.with_suffix(".svg")]


def _ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def _us(x: float) -> str:
    return f"{x * 1e6:.1f}"


def _rounds_text(results: Results) -> str:
    i = results.info
    per = (f"; each sample {i.calls_per_sample} back-to-back calls timed to the last one's result, divided by "
           f"{i.calls_per_sample}" if i.calls_per_sample > 1 else "")
    if not i.min_time_s:
        return f"{i.repeats} round-robin rounds{per}"
    n = [len(r.ragged_samples_s) for r in (*results.cpu, *results.tpu)]
    got = f" ({min(n)}-{max(n)} per point)" if n else ""
    return (f"round-robin rounds: at least {i.repeats}, more until each path has {i.min_time_s:g} s timed, "
            f"at most {max(MAX_ROUNDS, i.repeats)}{got}{per}")


def to_markdown(results: Results, *, plots=(), rendered: str = "") -> str:
    """The report: how it ran, correctness, cost-model check, per-point table, summary, what it cannot show."""
    from perfmodel.tables import markdown_table

    i = results.info
    lines = [f"# Kernel validation: `{i.command}`", "",
             f"- device: {i.device_platform} ({i.device_kind}); model chip: `{i.chip}`",
             f"- machine: {i.host}, {i.cpu_count} cores, load average at start {i.load_average} "
             f"(shared by several processes: timings are noisy)",
             f"- jax {i.jax_version}; sweep `{i.sweep}`; {_rounds_text(results)} after one warm-up "
             f"per function; times are medians, speedups the median of per-round ratios",
             f"- started {i.started_at}" + ("" if results.complete else "; **interrupted: partial results**")]
    if i.device_platform == "cpu":
        lines.append("- heap: " + ("**steady** (`GLIBC_TUNABLES=" + i.malloc_tunables + "`: freed blocks are reused, "
                                   "few fresh pages per call; `--malloc steady`)"
                                   if i.malloc_tunables == STEADY_MALLOC_TUNABLES else
                                   "glibc's default" + (f" with `GLIBC_TUNABLES={i.malloc_tunables}`"
                                                        if i.malloc_tunables else "")
                                   + " (large temporaries may fault fresh pages at every call; `--malloc steady` mostly removes that)"))
    lines += [f"- {rendered}", ""] if rendered else [""]
    if results.correctness:
        lines += ["## Fused Pallas kernel: correctness only", "",
                  "On this device the fused kernel runs in Pallas TPU interpret mode: **correctness only, "
                  "interpret mode timings are meaningless** and none are taken. Error = max |fused - reference| "
                  "/ max |reference| against `implementation=\"reference\"` (f32 HIGHEST-precision oracle).", ""]
        lines.append(markdown_table(
            ["T", "D", "F", "E", "GLU", "groups", "dtype", "tiles (tm, tf)", "max abs err", "max rel err",
             "tolerance", "ok"],
            [[r.T, r.D, r.F, r.E, r.glu, r.distribution, r.dtype, r.tiles or "default", f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}",
              f"{r.tolerance:g}", "yes" if r.ok else "**NO**"] for r in results.correctness]))
        lines.append("")
    if results.cpu or results.cost_check:
        lines += _cpu_markdown(results, markdown_table)
    if results.tpu or results.errors:
        lines += _tpu_markdown(results, markdown_table)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _cpu_markdown(results: Results, markdown_table) -> list[str]:
    s = summarize_cpu(results.cpu)
    lines = ["## CPU: the XLA ragged_dot path vs an XLA formulation without the [T, F] round trip", "",
             "What is compared (`validation/cpu_moe.py`): XLA on CPU expands `ragged_dot` into a dense masked "
             "computation (`[T, E K] @ [E K, N]`, **E x the useful FLOPs**). The *ragged_dot path* "
             "(`kernels.moe_ffn(implementation=\"ragged_dot\")`) writes the `[T, F]` intermediates and the "
             "expanded `h_m [T, E F]` to memory and reads them back. The *chunked* formulation does the same "
             "dense expansion by hand, once for x, then a `lax.scan` over F chunks of width tf: up chunk -> "
             "activation -> expanded `[T, E tf]` -> down chunk accumulated, so only a `[T, E tf]` piece exists "
             "at a time; it re-reads `x_m [T, E D]` once per chunk and pays per-iteration op overhead. Both "
             "execute the same FLOPs; the comparison isolates the bytes-vs-overhead trade that fusion makes on a TPU.",
             "",
             "Sweep choice (column *why*): memory-bound points (small D, large F, many rows) where removing the "
             "`[T, E F]` round trip should win; compute-bound points (larger D) where both do the same E x FLOPs "
             "and the verdict is a near-tie; weight-bound points (few rows, large F, tf forced to 32) where the "
             "chunked formulation moves the weights twice and pays per-iteration overhead, so the ragged_dot "
             "path should win; and a many-rows point with tf forced small, where the chunked formulation "
             "re-reads `x_m` once per chunk (the analog of the fused kernel's weight re-reads). tf is the "
             f"best chunk of the {results.info.chunk_chosen_by} (without a page-fault term) unless forced.", ""]
    if results.cost_check:
        lines += ["### Cost model vs XLA's `cost_analysis()`", "",
                  "Model bytes are the sum over the ops of the optimized HLO of every tensor read or written; "
                  "XLA counts a `while` body once (it does not know the trip count), so the chunked rows compare "
                  "outside-loop ops + one iteration. XLA's FLOPs also count elementwise work (mask compares, "
                  "selects, the activation), which the model leaves out (dot FLOPs only), hence the 1-4% gap.", ""]
        lines.append(markdown_table(
            ["shape", "formulation", "model bytes", "XLA bytes", "ratio", "model dot FLOPs", "XLA FLOPs", "ratio"],
            [[r.shape, r.formulation, f"{r.model_bytes:.0f}", f"{r.xla_bytes:.0f}",
              f"{r.model_bytes / r.xla_bytes:.4f}", f"{r.model_dot_flops:.3g}", f"{r.xla_flops:.3g}",
              f"{r.model_dot_flops / r.xla_flops:.3f}"] for r in results.cost_check]))
        lines.append("")
    if results.rates is not None:
        r, c = results.rates, results.chip_rates
        lines += ["### Time model", "",
                  "`t = c + sum over op executions of (max(dot FLOPs / P, bytes / BW_kind(W)) + o)`, where `BW_kind(W)` "
                  "is the rate of the op's kind (copy, blocked expansion, XLA's interleaved expansion; dots "
                  "stream at the copy rate) at its working set `W` (sum of the tensors it touches), "
                  "interpolated log-log between micro-kernel sizes; the cpu chip model adds the page-fault term "
                  "`t_fault` of each program's temp block (below). Two sets of rates (the measured ones are "
                  f"re-measured every {RATES_MAX_AGE_S:.0f} s of the run, {len(results.rates_history)} time(s) "
                  "here; each point is predicted with the latest; the first set is shown, all are in "
                  "results.json):", ""]

        def tab(t):
            if len(t) == 1:
                return f"{t[0][1] / 1e9:.2f} (any size)"
            return ", ".join(f"{w / 2**20:.3g} MiB: {v / 1e9:.2f}" for w, v in t)

        lines.append(markdown_table(
            ["rates", "dot GFLOP/s", "copy GB/s", "expand blocked GB/s", "expand interleaved GB/s",
             "op / call overhead", "page faults GB/s", "source"],
            [[name, f"{x.flops_per_s / 1e9:.0f}", tab(x.copy), tab(x.expand_blocked), tab(x.expand_interleaved),
              f"{x.op_overhead_s * 1e6:.2f} / {x.call_overhead_s * 1e6:.1f} us",
              "-" if x.page_fault_bytes_per_s is None else f"{x.page_fault_bytes_per_s / 1e9:.2f}", x.source]
             for name, x in (("measured micro-kernels at run start", r), ("calibrated cpu chip", c))
             if x is not None]))
        heap = "steady (no mmapped blocks: no page-fault term)" if not _mmaps(results) else \
            f"default (blocks >= {MMAP_THRESHOLD_MAX_BYTES // 2**20} MiB are fresh mmaps: page-fault term on)"
        lines += ["", f"Heap of this run: {heap}."]
        lines.append("")
    if results.cpu:
        lines += ["### Per point (times in ms; speedup = ragged_dot path / chunked)", ""]
        lines.append(markdown_table(
            ["point", "tf", "why", "pred ragged", "meas ragged", "pred chunked", "meas chunked", "pred speedup",
             "meas speedup [95% CI]", "winner", "cpu chip speedup", "chip winner", "roofline speedup",
             "bound (ragged / chunked)", "max rel diff"],
            [[r.point.label, r.tf, r.point.note, _ms(r.pred_ragged_s), _ms(r.meas_ragged_s), _ms(r.pred_chunked_s),
              _ms(r.meas_chunked_s), f"{r.pred_speedup:.2f}", _speedup_cell(r),
              "ok" if r.winner_agrees else "**wrong**", f"{r.chip_speedup:.2f}",
              "ok" if r.chip_winner_agrees else "**wrong**", f"{r.roofline_speedup:.2f}",
              f"{r.ragged_bound} / {r.chunked_bound}", f"{r.max_rel_diff:.1e}"] for r in results.cpu]))
        lines += ["", "### Summary", ""]
        lines += [f"- {name}: median |pred/meas - 1| = {v:.2f}" for name, v in s.median_abs_rel_err]
        lines += [_chip_winner_line(s),
                  f"- with the measured micro-kernel rates: {s.winner_correct}/{s.points} "
                  f"({100 * s.winner_fraction:.0f}%)",
                  f"- excluding predicted near-ties (|pred speedup - 1| < {TIE:.0%}): cpu chip "
                  f"{int(dict(s.extra)['chip_decided_winner_correct'])}/{int(dict(s.extra)['chip_decided_points'])}, "
                  f"measured rates "
                  f"{int(dict(s.extra)['decided_winner_correct'])}/{int(dict(s.extra)['decided_points'])} correct",
                  f"- measurement reliability: the first and second halves of the rounds name the same winner at "
                  f"{int(dict(s.extra)['split_half_agree'])}/{s.points} points (where they disagree, noise decides "
                  f"the winner)",
                  _measured_decided_line(s),
                  "- cpu chip's wrong winners (pred / meas speedup): " + (", ".join(
                      f"{r.point.label} tf={r.tf} ({r.chip_speedup:.2f} / {r.meas_speedup:.2f})"
                      for r in results.cpu if not r.chip_winner_agrees) or "none"),
                  "- measured rates' wrong winners (pred / meas speedup): " + (", ".join(
                      f"{r.point.label} tf={r.tf} ({r.pred_speedup:.2f} / {r.meas_speedup:.2f})"
                      for r in results.cpu if not r.winner_agrees) or "none"),
                  f"- outputs of the two formulations agree: max rel diff "
                  f"{max(r.max_rel_diff for r in results.cpu):.1e}", ""]
    lines += _fault_markdown(results.cpu, markdown_table)
    lines += ["### What this CPU run can and cannot show", "",
              "- It checks that the fused kernel computes the right numbers (interpret mode), that the op-level "
              "byte counts of both XLA formulations match XLA's own cost analysis, and whether the roofline-style "
              "time model ranks two real XLA programs correctly on a real (shared, noisy) machine.",
              "- It says nothing about TPU times: no Mosaic kernel runs here, the CPU pays E x FLOPs for "
              "ragged_dot, its 'memory' is a cache hierarchy, and the load from other processes changes the "
              "rates between measurements (the micro-kernel rates are re-measured at the start of each run for "
              "that reason). Run `perfmodel validate kernel` on a TPU for the real test.", ""]
    return lines


def _fault_markdown(records, markdown_table) -> list[str]:
    """Diagnostic table: XLA temp allocation and page faults per call vs the measured-rates model's error."""
    rows, big, small = [], [], []
    for r in records:
        for name, temp, fault, pred, chip, meas in (
                ("ragged_dot", r.ragged_temp_bytes, r.ragged_fault_bytes, r.pred_ragged_s, r.chip_ragged_s,
                 r.meas_ragged_s),
                ("chunked", r.chunked_temp_bytes, r.chunked_fault_bytes, r.pred_chunked_s, r.chip_chunked_s,
                 r.meas_chunked_s)):
            if temp is None or fault is None:
                continue
            (big if temp >= MMAP_THRESHOLD_MAX_BYTES else small).append((fault, temp, pred / meas, chip / meas))
            if temp >= MMAP_THRESHOLD_MAX_BYTES or fault >= 2**20:
                rows.append([f"{r.point.label} tf={r.tf}", name, f"{temp / 2**20:.1f}", f"{fault / 2**20:.1f}",
                             f"{chip / meas:.2f}", f"{pred / meas:.2f}"])
    if not (big or small):
        return []
    lines = ["### Fresh pages per call: what the page-fault term charges", "",
             "XLA on CPU allocates a program's temporaries as one block per call (`temp` = "
             "`compiled.memory_analysis().temp_size_in_bytes`); glibc serves blocks above its largest mmap "
             f"threshold ({MMAP_THRESHOLD_MAX_BYTES // 2**20} MiB on 64-bit) with fresh pages, which fault on "
             "first touch at every call (`faulted` = minor page faults of one call x 4 KiB, from getrusage). "
             "The cpu chip model charges them (`t_fault = temp / R_fault` for temp >= the threshold, 0 under the "
             "steady heap: `validation/cpu_moe.py`, *Page faults*); the measured-rates model does not (its 64 MiB "
             "micro-kernels pay faults implicitly). Under the steady heap (`--malloc steady`) freed "
             "blocks are mostly reused and `faulted` should be near 0.", ""]
    for label, group in ((f"temp >= {MMAP_THRESHOLD_MAX_BYTES // 2**20} MiB", big),
                         (f"temp < {MMAP_THRESHOLD_MAX_BYTES // 2**20} MiB", small)):
        if group:
            lines.append(f"- {label}: {len(group)} programs, median faulted / temp "
                         f"{median([f / t if t else 0.0 for f, t, _, _ in group]):.2f}, "
                         f"median pred / meas time: cpu chip {median([c for _, _, _, c in group]):.2f}, "
                         f"measured rates {median([e for _, _, e, _ in group]):.2f}")
    lines += ["", "Programs with temp above the threshold or more than 1 MiB faulted per call:", ""]
    lines.append(markdown_table(["point", "formulation", "temp MiB", "faulted MiB / call",
                                 "pred / meas (cpu chip)", "pred / meas (measured rates)"], rows)
                 if rows else "none")
    return lines + [""]


def _speedup_cell(r) -> str:
    """Measured speedup with its bootstrap interval; a tie within the run's noise is marked."""
    lo, hi = r.meas_speedup_interval
    return f"{r.meas_speedup:.2f} [{lo:.2f}, {hi:.2f}]" + ("" if r.measurement_decides else " tie")


def _mmaps(results: Results) -> bool:
    return heap_mmaps_large_blocks(results.info.malloc_tunables)


def _chip_winner_line(s: Summary) -> str:
    """The issue's target line: the calibrated cpu chip model's winner score (roofline + page faults)."""
    x = dict(s.extra)
    chip, plain, nf = chip_winner_correct(x), int(x["roofline_winner_correct"]), int(x["fault_model_points"])
    if chip is None:
        return (f"- predicted winner correct with the calibrated cpu chip roofline (issue target >= 90%): "
                f"**{plain}/{s.points} ({100 * plain / s.points:.0f}%)**; this run predates the page-fault term")
    return (f"- predicted winner correct with the calibrated cpu chip, roofline + page faults (issue target >= 90%): "
            f"**{chip}/{s.points} ({100 * chip / s.points:.0f}%)**; its plain roofline without the page-fault "
            f"term: {plain}/{s.points}" + ("" if nf == s.points else f" (page-fault term at {nf} points only)"))


def _measured_decided_line(s: Summary) -> str:
    x = dict(s.extra)
    n, ok = int(x["measured_decided_points"]), int(x["measured_decided_winner_correct"])
    chip = x.get("measured_decided_chip_winner_correct")
    return (f"- where the measurement decides the winner ({SPEEDUP_CI_LEVEL:.0%} bootstrap interval of the median "
            f"per-round speedup, {SPEEDUP_CI_RESAMPLES} resamples of the rounds, excludes 1): "
            + ("" if chip is None else f"cpu chip **{int(chip)}/{n}**, measured rates ")
            + f"**{ok}/{n}** correct"
            + (f" ({100 * ok / n:.0f}%)" if n and chip is None else "") + f"; the other {s.points - n} points are "
            f"ties within this run's noise (marked `tie` in the table)")


def _tpu_markdown(results: Results, markdown_table) -> list[str]:
    s = summarize_tpu(results.tpu)
    lines = ["## Fused kernel vs ragged_dot forward on this TPU", "",
             "Predicted by `perfmodel.fusion.predict_fusion` (tiling walker, fitted timing constants) at the "
             "group sizes used; measured with `kernels.moe_ffn` (bf16), times in us.", ""]
    if results.tpu:
        lines.append(markdown_table(
            ["point", "fused tiles", "pred fused", "meas fused", "pred ragged_dot", "meas ragged_dot",
             "pred speedup", "meas speedup [95% CI]", "winner", "max rel diff", "output ok", "model's explanation",
             "note"],
            [[r.point.label, f"{r.fused_tiles[0]}x{r.fused_tiles[1]}", _us(r.pred_fused_s), _us(r.meas_fused_s),
              _us(r.pred_ragged_s), _us(r.meas_ragged_s), f"{r.pred_speedup:.2f}", _speedup_cell(r),
              "ok" if r.winner_agrees else "**wrong**", f"{r.max_rel_diff:.1e}", "yes" if r.ok else "**NO**",
              r.sentence, r.point.note]
             for r in results.tpu]))
        wins = sum(r.pred_speedup > 1 for r in results.tpu)
        lines += ["", "### Summary", ""]
        lines += [f"- {name}: median |pred/meas - 1| = {v:.2f}" for name, v in s.median_abs_rel_err]
        lines += [f"- predicted winner correct: **{s.winner_correct}/{s.points} ({100 * s.winner_fraction:.0f}%)**; "
                  f"the model predicted fusion to win at {wins} and lose at {s.points - wins} points",
                  f"- measurement reliability: the first and second halves of the rounds name the same winner at "
                  f"{int(dict(s.extra)['split_half_agree'])}/{s.points} points",
                  _measured_decided_line(s),
                  _tpu_output_line(results.tpu), ""]
    if results.errors:
        lines += ["Points not timed (skipped: the chip cannot hold the shape; **FAILED**: the run raised):", ""]
        lines += [f"- {'**FAILED** ' if e in results.failed else 'skipped '}{e}" for e in results.errors] + [""]
    return lines


def _tpu_output_line(records) -> str:
    """How many points' fused output matches the ragged_dot path's (``TpuRecord.ok``), and which do not."""
    bad = [r for r in records if not r.ok]
    tol = ", ".join(f"{t:g}" for t in sorted({r.tolerance for r in records}))
    return (f"- fused output vs ragged_dot (max |fused - ragged_dot| / max |ragged_dot| <= {tol}, the bf16 "
            f"tolerance of the CPU correctness check): **{len(records) - len(bad)}/{len(records)} correct**"
            + ("" if not bad else "; **WRONG OUTPUT** at " + ", ".join(
                f"{r.point.label} ({r.max_rel_diff:.1e})" for r in bad)))
