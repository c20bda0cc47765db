"""validation.heap_control: the default-vs-steady heap comparison of two committed CPU sweeps (no timing)."""

import pathlib

import pytest

from validation import heap_control as hc
from validation import kernel_harness as kh

RUNS = pathlib.Path(__file__).resolve().parents[1] / "validation" / "results" / "kernel_cpu" / "heap_control"


def test_comparison_scores_each_run_as_its_own_report_does():
    h = hc.compare(RUNS / "default", RUNS / "steady")
    for run, name in ((h.default, "default"), (h.steady, "steady")):
        res = kh.load_results(RUNS / name / "results.json")
        s = kh.summarize_cpu(res.cpu)
        assert (run.winner_correct, run.points) == (s.winner_correct, s.points)
        assert run.near_ties_measured == sum(abs(r.meas_speedup - 1) < 0.1 for r in res.cpu)
    # the steady heap is what the run says it was: (almost) no page faults per call
    assert h.steady.faulted_bytes_per_call < 0.01 * h.default.faulted_bytes_per_call
    lo, hi = h.speedup_steady_range
    assert lo <= h.speedup_steady_median <= hi and 0 < h.fault_driven_points <= h.default.points
    md = hc.to_markdown(h, "a", "b", "host")
    assert f"{h.default.winner_correct}/{h.default.points}" in md and f"{h.fault_driven_points} points" in md


def test_the_runs_must_be_the_same_sweep_and_the_second_steady(tmp_path):
    with pytest.raises(ValueError, match="did not run under the steady heap"):
        hc.compare(RUNS / "default", RUNS / "default")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        hc.compare(tmp_path, RUNS / "steady")
    assert hc.main(["only-one"]) == 2
