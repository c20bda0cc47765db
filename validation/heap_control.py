"""Heap control for the CPU kernel validation: one sweep under glibc's default heap and under the steady heap.

The CPU stand-in compares XLA's ragged_dot path with the F-chunked formulation. Under glibc's
default heap, a program whose temporaries exceed the mmap threshold gets fresh pages at every
call and pays their faults; under the steady heap (``--malloc steady``,
:data:`validation.kernel_harness.STEADY_MALLOC_TUNABLES`) freed blocks are reused, as in a TPU
runtime's memory pool. Comparing the two runs point by point separates what the sweep measures
about memory traffic from what it measures about page faults.

    perfmodel validate kernel --sweep full --malloc default --out DIR_DEFAULT
    perfmodel validate kernel --sweep full --malloc steady --out DIR_STEADY
    python -m validation.heap_control DIR_DEFAULT DIR_STEADY   # writes heap_control.md beside them

A point is *fault-driven* when its ragged_dot program faulted at least half of a temporary of at
least ``MMAP_THRESHOLD_MAX_BYTES`` per call under the default heap.
"""

from __future__ import annotations

import pathlib
import sys

import attrs
import numpy as np

from validation import kernel_harness as kh


@attrs.frozen(kw_only=True)
class HeapRun:
    """One sweep's scores (from its ``results.json``)."""

    label: str
    winner_correct: int
    points: int
    roofline_winner_correct: int
    chip_winner_correct: int | None  # roofline + page faults; None for runs made before that term
    chip_decided_correct: int | None  # the same, at the points the measurement decides
    measured_decided_correct: int
    measured_decided_points: int
    near_ties_measured: int  # points whose measured speedup is within 10% of 1
    faulted_bytes_per_call: float  # summed over both programs of every point


@attrs.frozen(kw_only=True)
class HeapControl:
    default: HeapRun
    steady: HeapRun
    fault_driven_points: int
    speedup_default_median: float  # at the fault-driven points
    speedup_steady_median: float
    speedup_default_range: tuple[float, float]
    speedup_steady_range: tuple[float, float]
    ragged_time_ratio_median: float  # steady / default time of the ragged_dot path, fault-driven points
    chunked_time_ratio_median: float


def _score(label: str, res: kh.Results) -> HeapRun:
    s = kh.summarize_cpu(res.cpu)
    ex = dict(s.extra)
    return HeapRun(label=label, winner_correct=s.winner_correct, points=s.points,
                   roofline_winner_correct=int(ex["roofline_winner_correct"]),
                   chip_winner_correct=kh.chip_winner_correct(ex),
                   chip_decided_correct=None if kh.chip_winner_correct(ex) is None
                   else int(ex["measured_decided_chip_winner_correct"]),
                   measured_decided_correct=int(ex["measured_decided_winner_correct"]),
                   measured_decided_points=int(ex["measured_decided_points"]),
                   near_ties_measured=sum(abs(r.meas_speedup - 1) < 0.1 for r in res.cpu),
                   faulted_bytes_per_call=float(sum((r.ragged_fault_bytes or 0) + (r.chunked_fault_bytes or 0)
                                                    for r in res.cpu)))


def compare(default_dir: str | pathlib.Path, steady_dir: str | pathlib.Path) -> HeapControl:
    """Score both runs and compare them at the fault-driven points (the two sweeps must be the same)."""
    a = kh.load_results(pathlib.Path(default_dir) / "results.json")
    b = kh.load_results(pathlib.Path(steady_dir) / "results.json")
    if [r.point for r in a.cpu] != [r.point for r in b.cpu]:
        raise ValueError(f"{default_dir} and {steady_dir} timed different CPU points: run the same --sweep")
    if b.info.malloc_tunables != kh.STEADY_MALLOC_TUNABLES:
        raise ValueError(f"{steady_dir} did not run under the steady heap (GLIBC_TUNABLES="
                         f"{b.info.malloc_tunables!r}); run it with --malloc steady")
    idx = [i for i, r in enumerate(a.cpu) if (r.ragged_temp_bytes or 0) >= kh.MMAP_THRESHOLD_MAX_BYTES
           and (r.ragged_fault_bytes or 0) >= 0.5 * r.ragged_temp_bytes]
    if not idx:
        raise ValueError(f"no point of {default_dir} faulted a large temporary: nothing to compare")
    sa = [a.cpu[i].meas_speedup for i in idx]
    sb = [b.cpu[i].meas_speedup for i in idx]
    return HeapControl(
        default=_score("default", a), steady=_score("steady", b), fault_driven_points=len(idx),
        speedup_default_median=float(np.median(sa)), speedup_steady_median=float(np.median(sb)),
        speedup_default_range=(min(sa), max(sa)), speedup_steady_range=(min(sb), max(sb)),
        ragged_time_ratio_median=float(np.median([b.cpu[i].meas_ragged_s / a.cpu[i].meas_ragged_s for i in idx])),
        chunked_time_ratio_median=float(np.median([b.cpu[i].meas_chunked_s / a.cpu[i].meas_chunked_s for i in idx])))


def to_markdown(h: HeapControl, default_dir, steady_dir, host: str) -> str:
    from perfmodel.tables import markdown_table

    rows = [[r.label, "-" if r.chip_winner_correct is None else f"{r.chip_winner_correct}/{r.points}",
             f"{r.roofline_winner_correct}/{r.points}", f"{r.winner_correct}/{r.points}",
             "-" if r.chip_decided_correct is None else f"{r.chip_decided_correct}/{r.measured_decided_points}",
             f"{r.measured_decided_correct}/{r.measured_decided_points}", f"{r.near_ties_measured}/{r.points}",
             f"{r.faulted_bytes_per_call / 2**20:.0f}"] for r in (h.default, h.steady)]
    return "\n".join([
        "# CPU kernel validation: glibc's default heap vs the steady heap", "",
        f"Runs: `{default_dir}` (default heap) and `{steady_dir}` (steady heap), same sweep, {host}. "
        f"Made by `python -m validation.heap_control {default_dir} {steady_dir}`.", "",
        markdown_table(["heap", "winner right (cpu chip: roofline + page faults)",
                        "winner right (cpu chip roofline, no page faults)", "winner right (measured rates)",
                        "cpu chip right where the measurement decides",
                        "measured rates right where the measurement decides", "measured near-ties (within 10%)",
                        "faulted MiB per call, all programs"], rows), "",
        f"At the {h.fault_driven_points} points whose ragged_dot program faults a temporary of "
        f">= {kh.MMAP_THRESHOLD_MAX_BYTES // 2**20} MiB at every call under the default heap, the measured "
        f"speedup of the chunked formulation is {h.speedup_default_median:.2f} (median; "
        f"{h.speedup_default_range[0]:.2f}-{h.speedup_default_range[1]:.2f}) with the default heap and "
        f"{h.speedup_steady_median:.2f} ({h.speedup_steady_range[0]:.2f}-{h.speedup_steady_range[1]:.2f}) "
        f"with the steady heap; the steady heap changes the ragged_dot path's time by "
        f"x{h.ragged_time_ratio_median:.2f} and the chunked one's by x{h.chunked_time_ratio_median:.2f} "
        "(medians).", ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m validation.heap_control DIR_DEFAULT DIR_STEADY", file=sys.stderr)
        return 2
    h = compare(*argv)
    host = kh.load_results(pathlib.Path(argv[0]) / "results.json").info.host
    out = pathlib.Path(argv[0]).parent / "heap_control.md"
    out.write_text(to_markdown(h, argv[0], argv[1], host))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
