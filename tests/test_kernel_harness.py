"""validation.kernel_harness and validation.cpu_moe: timing protocol, CPU formulations and their
cost model (vs XLA's cost analysis), the TPU path on a fake device, outputs, interrupts, bad input.

Nothing here asserts a timing: the timed runs use tiny shapes and only check structure.
"""

import json

import attrs
import numpy as np
import pytest

from kernels import moe_ffn
from validation import cpu_moe
from validation import kernel_harness as kh

# Rates of the committed quick run's order of magnitude (fixed, so tests do not time anything).
RATES = cpu_moe.CpuRates(flops_per_s=1e11, copy=((8 * 2**20, 3.5e10), (128 * 2**20, 4e9)),
                         expand_blocked=((4.5 * 2**20, 1.7e10), (72 * 2**20, 1.4e9)),
                         expand_interleaved=((4.5 * 2**20, 2.5e10), (72 * 2**20, 1.5e9)),
                         op_overhead_s=2.5e-7, call_overhead_s=4e-6, source="test")


# -- timing protocol ---------------------------------------------------------------------------

def test_round_robin_excludes_warmup_and_alternates_order():
    calls, clock = [], iter(range(1000))

    def fn(name):
        return lambda: calls.append(name) or name

    samples = kh.time_round_robin({"a": fn("a"), "b": fn("b")}, repeats=3, warmup=2,
                                  timer=lambda: float(next(clock)), block=lambda out: None)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up, untimed
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]  # order alternates between rounds
    assert samples == {"a": (1.0, 1.0, 1.0), "b": (1.0, 1.0, 1.0)}


def test_min_time_adds_rounds_for_short_programs_only():
    # A probe call of each function sets the rounds: ceil(min_time / fastest probe), at least repeats,
    # at most max_rounds; the probe itself is not a sample.
    def clocked(dt_s):
        now = [0.0]

        def timer():
            return now[0]

        def fn(name):
            def call():
                now[0] += dt_s[name]
                return name
            return call

        return timer, {n: fn(n) for n in dt_s}

    timer, fns = clocked({"a": 0.01, "b": 0.03})
    s = kh.time_round_robin(fns, repeats=5, min_time_s=1.0, timer=timer, block=lambda out: None)
    assert len(s["a"]) == len(s["b"]) == 100 and s["a"][0] == pytest.approx(0.01)
    timer, fns = clocked({"a": 0.5, "b": 0.5})
    assert len(kh.time_round_robin(fns, repeats=5, min_time_s=1.0, timer=timer, block=lambda o: None)["a"]) == 5
    timer, fns = clocked({"a": 1e-4, "b": 1e-4})
    s = kh.time_round_robin(fns, repeats=5, min_time_s=1.0, max_rounds=40, timer=timer, block=lambda o: None)
    assert len(s["a"]) == 40
    with pytest.raises(ValueError, match="min_time_s"):
        kh.time_round_robin(fns, repeats=5, min_time_s=-1.0, timer=timer, block=lambda o: None)


def test_paired_speedup_is_median_of_round_ratios():
    assert kh.paired_speedup((2.0, 9.0, 4.0), (1.0, 3.0, 1.0)) == 3.0



def test_fault_diagnostic_counts_fresh_pages():
    import jax
    import jax.numpy as jnp

    v = jnp.ones(16 * 2**20, jnp.float32)
    add = jax.jit(lambda a: a + 1.0)
    got = kh.fault_bytes_per_call(lambda: add(v))  # a fresh 64 MiB output block per call
    if got is None:
        pytest.skip("getrusage unavailable")
    assert got >= 32 * 2**20
    assert kh.fault_bytes_per_call(lambda: None) < 2**20


def test_split_half_reliability_compares_the_two_halves_of_the_rounds():
    # rounds 1-2: the slow path really is slower (ratio 2); rounds 3-4: the other way (ratio 0.5)
    assert not kh.split_half_agrees((2.0, 2.0, 1.0, 1.0), (1.0, 1.0, 2.0, 2.0))
    assert kh.split_half_agrees((2.0, 3.0, 2.5, 2.2), (1.0, 1.0, 1.0, 1.0))
    # an odd round count: the middle round goes to the second half
    assert not kh.split_half_agrees((2.0, 1.0, 1.0), (1.0, 2.0, 2.0))
    assert kh.split_half_agrees((2.0,), (1.0,))  # nothing to split


def test_measurement_decides_only_when_the_bootstrap_interval_excludes_one():
    rng = np.random.default_rng(1)
    fast = tuple(1.0 + 0.05 * rng.random(21))
    slow = tuple(1.3 + 0.05 * rng.random(21))  # every round 1.2-1.35x slower
    lo, hi = kh.speedup_interval(slow, fast)
    assert 1.0 < lo <= kh.paired_speedup(slow, fast) <= hi
    assert kh.measurement_decides(slow, fast) and kh.measurement_decides(fast, slow)
    # the same distribution on both sides: ratios straddle 1, the run cannot name a winner
    a, b = tuple(1.0 + 0.2 * rng.random(21)), tuple(1.0 + 0.2 * rng.random(21))
    lo, hi = kh.speedup_interval(a, b)
    assert lo < 1 < hi and not kh.measurement_decides(a, b)
    assert kh.speedup_interval(a, b) == kh.speedup_interval(a, b)  # seeded: reproducible
    assert kh.speedup_interval((2.0,), (1.0,)) == (2.0, 2.0)

# -- the CPU formulations ----------------------------------------------------------------------

@pytest.mark.parametrize("glu, sizes", [(False, [30, 0, 20, 14]), (True, [10, 25, 0, 20])])
def test_chunked_equals_ragged_dot_and_reference(glu, sizes):
    # Second case leaves 9 rows past sum(group_sizes): they must come out zero in both.
    x, gs, *ws = kh.make_inputs(T=64, D=32, F=128, E=4, glu=glu, dtype="f32", distribution="uniform",
                                sizes=sizes)
    act = "silu" if glu else "gelu"
    y_c = cpu_moe.moe_ffn_chunked(x, gs, *ws, activation=act, tf=32)
    y_r = moe_ffn(x, gs, *ws, activation=act, implementation="ragged_dot")
    y_ref = moe_ffn(x, gs, *ws, activation=act, implementation="reference")
    np.testing.assert_allclose(y_c, y_r, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(y_c, y_ref, atol=1e-5, rtol=1e-5)
    assert not np.asarray(y_c)[sum(sizes):].any()


def test_chunk_must_divide_F():
    x, gs, wu, wd = kh.make_inputs(T=16, D=8, F=48, E=2, glu=False, dtype="f32", distribution="uniform")
    with pytest.raises(ValueError, match="tf=32 should be a positive divisor of F=48"):
        cpu_moe.moe_ffn_chunked(x, gs, wu, wd, tf=32)
    with pytest.raises(ValueError, match="tf=0"):
        cpu_moe.chunked_ops(T=16, D=8, F=48, E=2, glu=False, activation="gelu", tf=0)


# -- the cost model ------------------------------------------------------------------------------

@pytest.mark.parametrize("glu, activation", [(False, "gelu"), (True, "silu"), (False, "relu")])
def test_op_model_bytes_match_xla_cost_analysis(glu, activation):
    T, D, F, E, tf = 64, 32, 128, 4, 32
    args = kh.make_inputs(T=T, D=D, F=F, E=E, glu=glu, dtype="f32", distribution="uniform")
    fs = cpu_moe.formulations(activation=activation, tf=tf)
    shape = dict(T=T, D=D, F=F, E=E, glu=glu, activation=activation)
    for name, ops in (("ragged_dot", cpu_moe.ragged_path_ops(**shape)),
                      ("chunked", cpu_moe.chunked_ops(**shape, tf=tf))):
        c = cpu_moe.xla_cost_check(fs[name], args, ops, formulation=name)
        assert abs(c.model_bytes - c.xla_bytes) <= 512, (name, c)  # group-size bookkeeping only
        # XLA adds elementwise FLOPs (masks, selects, activation) to the dot FLOPs the model counts.
        assert 0.85 < c.flops_ratio <= 1.0, (name, c)


def test_ragged_path_bytes_and_flops_by_hand():
    T, D, F, E, q = 64, 32, 128, 4, 4
    ops = cpu_moe.ragged_path_ops(T=T, D=D, F=F, E=E, glu=False, activation="gelu")
    expected = (2 * 2 * E * D * F  # transpose w_up, w_down (read + write)
                + T * D + T * E * D  # expand x
                + T * E * D + E * D * F + T * F  # dot up
                + 2 * T * F  # activation pre-pass
                + 2 * T * F + T * E * F  # expand h (reads up and the pre-pass)
                + T * E * F + E * F * D + T * D) * q  # dot down
    assert sum(op.bytes for op in ops) == expected
    assert sum(op.flops for op in ops) == E * cpu_moe.useful_flops(T=T, D=D, F=F, glu=False)  # dense: E x


def test_both_formulations_execute_the_same_flops():
    shape = dict(T=256, D=64, F=512, E=8, glu=True, activation="silu")
    r = cpu_moe.predict_ragged_path(RATES, **shape)
    c = cpu_moe.predict_chunked(RATES, **shape, tf=64)
    assert r.flops == c.flops == 8 * r.useful_flops
    assert c.op_executions > r.op_executions  # loop body runs F / tf times


def test_time_is_call_plus_op_roofline_plus_overheads():
    ops = (cpu_moe.XlaOp(name="d", kind="dot", flops=2e9, accesses=(cpu_moe.Access(tensor="a", bytes=1e6),)),
           cpu_moe.XlaOp(name="c", kind="copy", flops=0.0, count=3,
                         accesses=(cpu_moe.Access(tensor="b", bytes=8e6, footprint=1e9),)))
    rates = attrs.evolve(RATES, flops_per_s=1e11, copy=((1.0, 1e9),), op_overhead_s=1e-6, call_overhead_s=1e-5)
    p = cpu_moe.predict_time(ops, rates, formulation="t", useful_flops=2e9)
    # dot: max(20 ms, 1 ms) + 1 us; copy: 3 x (8 ms + 1 us); call 10 us
    assert p.time_s == pytest.approx(1e-5 + 0.02 + 1e-6 + 3 * (0.008 + 1e-6))
    assert p.bound == "memory" and p.op_executions == 4


def test_rates_interpolate_log_log_and_clamp():
    r = attrs.evolve(RATES, copy=((1e6, 1e10), (1e8, 1e9)))
    assert r.bytes_per_s("copy", 1e7) == pytest.approx(10**9.5)
    assert r.bytes_per_s("copy", 1e3) == pytest.approx(1e10)
    assert r.bytes_per_s("dot", 1e12) == pytest.approx(1e9)


def test_chip_roofline_rates():
    from perfmodel.hardware import get_chip

    r = cpu_moe.CpuRates.from_chip(get_chip("v5e"))
    assert r.flops_per_s == 1.97e14 and r.bytes_per_s("expand_interleaved", 5e8) == 8.19e11


def test_page_fault_term_charges_large_temp_blocks_only_when_the_heap_mmaps_them():
    mib, rate = 2**20, 2e9
    thr = cpu_moe.MMAP_THRESHOLD_MAX_BYTES
    assert cpu_moe.page_fault_s(thr - 1, page_fault_bytes_per_s=rate, mmaps_large_blocks=True) == 0.0
    assert cpu_moe.page_fault_s(64 * mib, page_fault_bytes_per_s=rate, mmaps_large_blocks=True) == 64 * mib / rate
    assert cpu_moe.page_fault_s(64 * mib, page_fault_bytes_per_s=rate, mmaps_large_blocks=False) == 0.0
    with pytest.raises(ValueError, match="page_fault_bytes_per_s=0"):
        cpu_moe.page_fault_s(64 * mib, page_fault_bytes_per_s=0, mmaps_large_blocks=True)
    assert cpu_moe.heap_mmaps_large_blocks(None) and cpu_moe.heap_mmaps_large_blocks("glibc.malloc.arena_max=1")
    assert not cpu_moe.heap_mmaps_large_blocks(kh.STEADY_MALLOC_TUNABLES)


def _record(**kw):
    base = dict(point=kh.CpuPoint(T=64, D=16, F=64, E=4, glu=False, note="x"), tf=32, pred_ragged_s=1.0,
                pred_chunked_s=1.0, roofline_ragged_s=1.0, roofline_chunked_s=1.2, ragged_bound="memory",
                chunked_bound="memory", executed_flops=1.0, useful_flops=1.0, ragged_bytes=1.0, chunked_bytes=1.0,
                ragged_samples_s=(2.0, 2.0, 2.0), chunked_samples_s=(1.0, 1.0, 1.0), max_abs_diff=0.0,
                max_rel_diff=0.0)
    return kh.CpuRecord(**{**base, **kw})


def test_chip_verdict_includes_the_page_faults_and_old_runs_fall_back_to_the_roofline():
    # the roofline alone names ragged_dot (1.0 s < 1.2 s); its temp block's faults (0.5 s) flip the verdict
    new = _record(ragged_fault_pred_s=0.5, chunked_fault_pred_s=0.0)
    assert new.roofline_speedup < 1 < new.chip_speedup and new.chip_winner_agrees
    assert not new.roofline_winner_agrees
    old = _record()  # a run from before the page-fault term
    assert not old.has_fault_model and old.chip_speedup == old.roofline_speedup
    ex = dict(kh.summarize_cpu([new, old]).extra)
    assert (ex["chip_winner_correct"], ex["roofline_winner_correct"], ex["fault_model_points"]) == (1, 0, 1)
    assert ex["measured_decided_chip_winner_correct"] == 1  # both decide (2.0 vs 1.0 every round)
    # predicted near-ties (within 10%) are left out of the decided score: 1.0 / 1.2 and 1.5 / 1.2 both count
    assert (ex["chip_decided_points"], ex["chip_decided_winner_correct"]) == (2, 1)


def test_quick_cpu_sweep_spans_both_verdicts():
    preds = []
    for p in kh.cpu_points("quick"):
        shape = dict(T=p.T, D=p.D, F=p.F, E=p.E, glu=p.glu, activation=p.activation)
        tf = p.tf or cpu_moe.best_chunk(RATES, **shape)
        preds.append(cpu_moe.predict_ragged_path(RATES, **shape).time_s
                     / cpu_moe.predict_chunked(RATES, **shape, tf=tf).time_s)
    assert any(s > 1.2 for s in preds) and any(s < 0.85 for s in preds)


# -- runs and outputs ------------------------------------------------------------------------------

def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cpu_run_writes_incremental_results_report_and_plots(tmp_path):
    pts = [kh.CpuPoint(T=64, D=16, F=64, E=4, glu=False, note="tiny"),
           kh.CpuPoint(T=32, D=16, F=64, E=4, glu=True, tf=32, note="tiny")]
    shapes = ((64, 128, 256, 2, False, "uniform", "f32", None),)
    msgs = []
    res, paths = kh.run(sweep="quick", out=tmp_path, repeats=2, min_time_s=0, points=pts, recalibrate=False,
                        correctness_shapes=shapes, cost_check_shapes=((64, 16, 64, 4, True, 32),),
                        progress=msgs.append)
    assert [r.ok for r in res.correctness] == [True]
    assert len(res.cpu) == 2 and all(len(r.ragged_samples_s) == 2 for r in res.cpu)
    assert all(r.max_rel_diff < 1e-5 for r in res.cpu)
    kinds = [line["kind"] for line in _lines(tmp_path / "results.jsonl")]
    assert kinds == ["info", "correctness", "cost_check", "cost_check", "rates", "cpu", "cpu"]
    md = (tmp_path / "report.md").read_text()
    assert "correctness only, interpret mode timings are meaningless" in md
    assert "predicted winner correct" in md and "E x the useful FLOPs" in md
    for name in ("predicted_vs_measured", "speedup_vs_tokens_per_expert"):
        assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.svg").exists()
    js = json.loads((tmp_path / "results.json").read_text())
    assert js["summary_cpu"]["points"] == 2 and len(js["derived_cpu"]) == 2
    assert all(r.ragged_temp_bytes > 0 and r.chunked_temp_bytes > 0 for r in res.cpu)
    assert "Fresh pages per call" in md
    # the calibrated chip's prediction adds the page-fault term of each program's temp block
    assert all(r.has_fault_model for r in res.cpu) and res.chip_rates.page_fault_bytes_per_s > 0
    for r in res.cpu:
        assert r.chip_ragged_s == pytest.approx(r.roofline_ragged_s + r.ragged_fault_pred_s)
    assert "calibrated cpu chip, roofline + page faults (issue target >= 90%)" in md
    assert [d["chip_winner_agrees"] for d in js["derived_cpu"]] == [r.chip_winner_agrees for r in res.cpu]
    assert "measurement reliability" in md and dict(js["summary_cpu"]["extra"])["split_half_agree"] in (0, 1, 2)
    extra = dict(js["summary_cpu"]["extra"])
    assert 0 <= extra["measured_decided_winner_correct"] <= extra["measured_decided_points"] <= 2
    assert "where the measurement decides the winner" in md
    assert "- heap: " in md and res.info.malloc_tunables == __import__("os").environ.get("GLIBC_TUNABLES", "")
    assert [d["measurement_decides"] for d in js["derived_cpu"]] == [r.measurement_decides for r in res.cpu]
    assert any("[2/2]" in m for m in msgs)
    assert res.rates_history == (res.rates,) and res.rates is res.chip_rates  # recalibrate=False

    # --render rebuilds the same records from results.json and rewrites the report without timing
    from perfmodel.cli import main

    back = kh.load_results(tmp_path / "results.json")
    assert back.cpu == res.cpu and back.correctness == res.correctness and back.rates == res.rates
    assert back.cost_check == res.cost_check and back.info == res.info
    (tmp_path / "report.md").unlink()
    assert main(["validate", "kernel", "--render", str(tmp_path)]) == 0
    md2 = (tmp_path / "report.md").read_text()
    assert "re-rendered from the saved samples" in md2 and "predicted winner correct" in md2
    assert main(["validate", "kernel", "--render", str(tmp_path / "nowhere")]) == 2


def test_cpu_rates_are_remeasured_when_stale(tmp_path, monkeypatch):
    calls = []

    def fake_measure():
        calls.append(1)
        return attrs.evolve(RATES, source=f"fake {len(calls)}")

    monkeypatch.setattr(cpu_moe, "measure_rates", fake_measure)
    monkeypatch.setattr(kh, "RATES_MAX_AGE_S", 0.0)  # every point sees stale rates
    pts = [kh.CpuPoint(T=32, D=16, F=64, E=4, glu=False)] * 2
    res, _ = kh.run(sweep="quick", out=tmp_path, repeats=1, min_time_s=0, points=pts, correctness_shapes=(),
                    cost_check_shapes=(), progress=lambda s: None)
    assert len(calls) == 2 and [r.rates_index for r in res.cpu] == [0, 1]
    assert [r.source for r in res.rates_history] == ["fake 1", "fake 2"]
    kinds = [line["kind"] for line in _lines(tmp_path / "results.jsonl")]
    assert kinds == ["info", "rates", "cpu", "rates", "cpu"]


@attrs.frozen
class FakeDevice:
    platform: str = "tpu"
    device_kind: str = "TPU v5 lite"


def _fake_tpu_timer(fused_factor, ragged_factor, stop_after=None):
    calls = []

    def time_fns(point, pred, gs, *, repeats, min_time_s, timer):
        calls.append(point)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return ((pred.fused_time_s * fused_factor,) * repeats, (pred.unfused_time_s * ragged_factor,) * repeats, 1e-3)

    return time_fns


TPU_POINTS = (kh.TpuPoint(tokens=256, D=512, F=1024, E=8, k=2, glu=False),
              kh.TpuPoint(tokens=64, D=512, F=2048, E=32, k=4, glu=False, tiles=(256, 128)))


def test_tpu_path_on_a_fake_device(tmp_path):
    # Measured = predicted x 1.1 (fused) and x 0.9 (ragged_dot): errors 0.1, winners as predicted
    # unless a predicted speedup lies within [1, 1.1 / 0.9).
    res, _ = kh.run(sweep="quick", out=tmp_path, repeats=3, device=FakeDevice(), points=TPU_POINTS,
                    time_fns=_fake_tpu_timer(1.1, 0.9), progress=lambda s: None)
    assert res.info.chip == "v5e" and len(res.tpu) == 2 and not res.cpu
    s = kh.summarize_tpu(res.tpu)
    assert dict(s.median_abs_rel_err)["fused"] == pytest.approx(0.1 / 1.1)
    assert "measured_decided_chip_winner_correct" not in dict(s.extra)  # the cpu chip model is CPU-only
    assert dict(s.median_abs_rel_err)["ragged_dot"] == pytest.approx(0.1 / 0.9)
    assert res.tpu[1].pred_speedup < 1  # forced-large row tile: the model predicts a loss
    for r in res.tpu:
        assert r.meas_speedup == pytest.approx(r.pred_speedup * 0.9 / 1.1)
    md = (tmp_path / "report.md").read_text()
    assert "Fused kernel vs ragged_dot forward on this TPU" in md and "interpret" not in md


def test_interrupt_keeps_finished_points(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        kh.run(sweep="quick", out=tmp_path, repeats=2, device=FakeDevice(), points=TPU_POINTS,
               time_fns=_fake_tpu_timer(1.0, 1.0, stop_after=1), progress=lambda s: None)
    assert [line["kind"] for line in _lines(tmp_path / "results.jsonl")] == ["info", "tpu"]
    assert "interrupted: partial results" in (tmp_path / "report.md").read_text()


def test_a_tpu_point_whose_fused_output_is_wrong_fails_the_cli(tmp_path, monkeypatch, capsys):
    """On a TPU there are no interpret-mode correctness records: the fused output's max rel diff vs ragged_dot is
    the only correctness check, and it is held to the CPU check's bf16 tolerance (a 90%-wrong kernel exited 0)."""
    from perfmodel import tpu_compile
    from perfmodel.cli import main

    monkeypatch.setattr(tpu_compile, "default_device", FakeDevice)
    monkeypatch.setattr(kh, "tpu_points", lambda sweep: TPU_POINTS)
    diffs = iter((0.9, 1e-3))
    monkeypatch.setattr(kh, "_time_tpu", lambda point, pred, gs, *, repeats, min_time_s, timer: (
        (pred.fused_time_s,) * repeats, (pred.unfused_time_s,) * repeats, next(diffs)))
    assert main(["validate", "kernel", "--out", str(tmp_path), "--repeats", "3", "--min-time", "0"]) == 1
    assert "output vs ragged_dot FAILED at 1 TPU point(s) (tolerance 0.04)" in capsys.readouterr().out
    res = kh.load_results(tmp_path / "results.json")
    assert [r.ok for r in res.tpu] == [False, True] and res.tpu[0].tolerance == kh.TOLERANCE["bf16"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert [d["ok"] for d in data["derived_tpu"]] == [False, True]
    assert dict(data["summary_tpu"]["extra"])["output_correct"] == 1
    md = (tmp_path / "report.md").read_text()
    assert "| output ok |" in md and "**NO**" in md and "**1/2 correct**; **WRONG OUTPUT** at" in md
    diffs = iter((1e-3, 1e-3))
    assert main(["validate", "kernel", "--out", str(tmp_path), "--repeats", "3", "--min-time", "0"]) == 0


def test_a_tpu_point_that_raises_a_runtime_error_is_recorded_and_the_sweep_goes_on(tmp_path):
    """A Mosaic compile refusal or RESOURCE_EXHAUSTED is a JaxRuntimeError (a RuntimeError, not a ValueError):
    it used to abort the sweep; it now costs its point only, recorded like a tile that does not fit."""
    import jax

    points = TPU_POINTS + (kh.TpuPoint(tokens=128, D=512, F=1024, E=8, k=2, glu=True),)
    ok = _fake_tpu_timer(1.0, 1.0)
    calls = []

    def time_fns(point, pred, gs, **kw):
        calls.append(point)
        if len(calls) == 2:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem")
        return ok(point, pred, gs, **kw)

    res, _ = kh.run(sweep="quick", out=tmp_path, repeats=2, min_time_s=0, device=FakeDevice(), points=points,
                    time_fns=time_fns, progress=lambda s: None)
    assert len(res.tpu) == 2 and res.complete
    assert res.errors == (f"{points[1].label}: JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory in memory "
                          f"space vmem",)
    assert [line["kind"] for line in _lines(tmp_path / "results.jsonl")] == ["info", "tpu", "error", "tpu"]
    assert res.failed == res.errors  # a runtime error is a failure, not a skip
    assert f"- **FAILED** {res.errors[0]}" in (tmp_path / "report.md").read_text()
    assert kh.load_results(tmp_path / "results.json").failed == res.failed


def test_a_tpu_point_that_fails_on_the_chip_fails_the_cli_and_a_skipped_one_does_not(tmp_path, monkeypatch, capsys):
    """A point whose kernel raised on the TPU (a Mosaic compile error, RESOURCE_EXHAUSTED) is a failed validation:
    it was listed as 'not timed' and `perfmodel validate kernel` exited 0. A ValueError (forced tiles the chip
    cannot hold) stays a skip."""
    import jax

    from perfmodel import tpu_compile
    from perfmodel.cli import main

    monkeypatch.setattr(tpu_compile, "default_device", FakeDevice)
    monkeypatch.setattr(kh, "tpu_points", lambda sweep: TPU_POINTS)

    def timer(raise_at_second):
        calls = []

        def time_tpu(point, pred, gs, *, repeats, min_time_s, timer):
            calls.append(point)
            if len(calls) == 2:
                raise raise_at_second
            return (pred.fused_time_s,) * repeats, (pred.unfused_time_s,) * repeats, 1e-3
        return time_tpu

    argv = ["validate", "kernel", "--out", str(tmp_path), "--repeats", "2", "--min-time", "0"]
    monkeypatch.setattr(kh, "_time_tpu", timer(jax.errors.JaxRuntimeError("INTERNAL: Mosaic failed to compile")))
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"1 point(s) FAILED on v5e (the run raised): {TPU_POINTS[1].label}: JaxRuntimeError: INTERNAL" in out
    assert "skipped" not in out
    monkeypatch.setattr(kh, "_time_tpu", timer(ValueError("tiles tm=4096 tf=2048 do not fit VMEM")))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"1 point(s) skipped (the chip cannot hold the shape): {TPU_POINTS[1].label}: tiles" in out
    assert "FAILED" not in out
    res = kh.load_results(tmp_path / "results.json")
    assert len(res.errors) == 1 and res.failed == ()
    assert f"- skipped {res.errors[0]}" in (tmp_path / "report.md").read_text()


def test_any_exception_writes_the_outputs_of_the_finished_points_before_propagating(tmp_path, monkeypatch):
    """Only KeyboardInterrupt used to write results.json / report.md / plots: a crash (here an XLA error on
    the CPU path, which has no per-point handling) left only results.jsonl behind."""
    import jax

    real, calls = kh.run_cpu_point, []

    def run_cpu_point(point, **kw):
        calls.append(point)
        if len(calls) == 2:
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real(point, **kw)

    monkeypatch.setattr(kh, "run_cpu_point", run_cpu_point)
    msgs = []
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        kh.run(sweep="quick", out=tmp_path, repeats=1, min_time_s=0, points=[kh.CpuPoint(T=32, D=16, F=64, E=4,
               glu=False)] * 2, recalibrate=False, correctness_shapes=(), cost_check_shapes=(), progress=msgs.append)
    res = kh.load_results(tmp_path / "results.json")
    assert len(res.cpu) == 1 and not res.complete
    assert "interrupted: partial results" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "predicted_vs_measured.png").exists()
    assert msgs[-1] == ("failed (JaxRuntimeError: RESOURCE_EXHAUSTED: out of memory): writing the report from "
                        "the finished points")


def test_a_second_run_into_the_same_folder_starts_over(tmp_path):
    """No resume: results.jsonl is emptied and every point is timed again (what perfmodel report's comment says)."""
    for _ in range(2):
        kh.run(sweep="quick", out=tmp_path, repeats=2, min_time_s=0, device=FakeDevice(), points=TPU_POINTS,
               time_fns=_fake_tpu_timer(1.0, 1.0), progress=lambda s: None)
    assert [line["kind"] for line in _lines(tmp_path / "results.jsonl")] == ["info", "tpu", "tpu"]


def test_tpu_sweeps_span_tokens_per_expert_and_shapes():
    for sweep in kh.SWEEPS:
        pts = kh.tpu_points(sweep)
        tpe = [p.tokens_per_expert for p in pts]
        assert min(tpe) == 8 and max(tpe) >= 4096
        assert {p.F // p.D for p in pts} >= {2, 4, 8}
        assert {p.glu for p in pts} == {False, True} and {"uniform", "skewed"} <= {p.distribution for p in pts}
        assert any(p.tiles for p in pts)  # forced-loss points


# -- bad input --------------------------------------------------------------------------------------

def test_bad_sweep_and_repeats(tmp_path):
    with pytest.raises(ValueError, match="sweep='medium'"):
        kh.cpu_points("medium")
    with pytest.raises(ValueError, match="repeats=0"):
        kh.run(sweep="quick", out=tmp_path, repeats=0, device=FakeDevice(), points=TPU_POINTS)
    with pytest.raises(ValueError, match="repeats=0"):
        kh.time_round_robin({"a": lambda: 0}, repeats=0)
    with pytest.raises(ValueError, match="min_time_s=nan"):
        kh.run(sweep="quick", out=tmp_path, min_time_s=float("nan"), device=FakeDevice(), points=TPU_POINTS)


def test_cli_rejects_bad_sweep(capsys):
    from perfmodel.cli import main

    assert main(["validate", "kernel", "--sweep", "medium"]) == 2
    assert "sweep='medium'" in capsys.readouterr().err


# -- the steady heap (--malloc) -----------------------------------------------------------------

def test_malloc_env_sets_the_tunables_once_and_rejects_unknown_modes():
    env = kh.malloc_env("steady", {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": kh.STEADY_MALLOC_TUNABLES}
    assert kh.malloc_env("steady", env) is None  # already in a steady child: run here
    assert kh.malloc_env("default", {"PATH": "/bin"}) is None
    with pytest.raises(ValueError, match="malloc='huge'"):
        kh.malloc_env("huge", {})


def test_cli_reruns_a_cpu_sweep_in_a_child_with_the_steady_heap(tmp_path, monkeypatch):
    import subprocess

    from perfmodel.cli import main

    seen = {}

    def fake_run(argv, env):
        seen.update(argv=argv, env=env)
        return subprocess.CompletedProcess(argv, 3)

    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["validate", "kernel", "--sweep", "quick", "--out", str(tmp_path), "--repeats", "3",
                 "--min-time", "0.25", "--malloc", "steady"]) == 3
    assert seen["argv"][1:] == ["-m", "perfmodel", "validate", "kernel", "--sweep", "quick", "--out", str(tmp_path),
                                "--malloc", "steady", "--repeats", "3", "--min-time", "0.25"]
    assert seen["env"]["GLIBC_TUNABLES"] == kh.STEADY_MALLOC_TUNABLES


_FAULTS_PROBE = """
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.tile(x, (1, 8)) * 2.0) @ jnp.ones((4096, 8)))   # the dot's operand: a 40 MiB temporary
x = jnp.ones((2560, 512), jnp.float32)
f(x).block_until_ready(); f(x).block_until_ready()
faulted = []
for _ in range(6):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faulted.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) * 4096)
print(min(faulted))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES needs glibc")
def test_steady_heap_stops_fresh_page_faults_of_large_temporaries():
    import os
    import subprocess
    import sys

    def faulted(tunables):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"JAX_PLATFORMS": "cpu"}
        env |= {"GLIBC_TUNABLES": tunables} if tunables else {}
        out = subprocess.run([sys.executable, "-c", _FAULTS_PROBE], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    # fewest bytes faulted by one of 6 calls: glibc's default maps the temporary afresh at every call;
    # the steady heap serves it from the freed block (at most calls: now and then the heap grows once more).
    # In 2 of 11 processes here the steady heap's layout kept the freed block from fitting the next
    # request and every call faulted (2026-12-02), so up to 3 fresh processes get a chance.
    assert faulted(None) > 30 * 2**20
    steady = []
    for _ in range(3):
        steady.append(faulted(kh.STEADY_MALLOC_TUNABLES))
        if steady[-1] < 2**20:
            break
    assert min(steady) < 2**20, steady


@pytest.mark.parametrize("glu", [False, True])
def test_single_chunk_model_matches_xla(glu):
    # tf = F: XLA drops the trip-1 loop and the weight copies; the model must follow.
    T, D, F, E = 64, 32, 128, 4
    act = "silu" if glu else "gelu"
    args = kh.make_inputs(T=T, D=D, F=F, E=E, glu=glu, dtype="f32", distribution="uniform")
    ops = cpu_moe.chunked_ops(T=T, D=D, F=F, E=E, glu=glu, activation=act, tf=F)
    c = cpu_moe.xla_cost_check(cpu_moe.formulations(activation=act, tf=F)["chunked"], args, ops,
                               formulation="chunked")
    assert abs(c.model_bytes - c.xla_bytes) <= 512 and all(op.count == 1 for op in ops)


def _async_device(host_s: float, device_s: float):
    """A clock, functions and block of a device that queues calls: each call costs the host ``host_s`` and
    the device ``device_s`` once both the call is dispatched and the previous one has run."""
    now, device_free, blocks = [0.0], [0.0], [0]

    def call():
        now[0] += host_s
        device_free[0] = max(device_free[0], now[0]) + device_s

    def block(out):
        blocks[0] += 1
        now[0] = max(now[0], device_free[0])

    return (lambda: now[0]), {"a": call}, block, blocks


def test_back_to_back_calls_per_sample_hide_the_host_dispatch():
    # one call per sample times dispatch + device (115 us for a 100 us program behind 15 us of dispatch)
    timer, fns, block, blocks = _async_device(15e-6, 100e-6)
    one = kh.time_round_robin(fns, repeats=4, warmup=0, timer=timer, block=block)["a"]
    assert one == pytest.approx((115e-6,) * 4)
    timer, fns, block, blocks = _async_device(15e-6, 100e-6)
    eight = kh.time_round_robin(fns, repeats=4, warmup=0, timer=timer, block=block, calls_per_sample=8)["a"]
    # each sample starts on an idle device: one dispatch in 8 is not hidden (101.9 us vs 115 us)
    assert eight == pytest.approx(((15e-6 + 8 * 100e-6) / 8,) * 4)
    assert blocks[0] == 4  # one sync per sample, not per call
    with pytest.raises(ValueError, match="calls_per_sample must be a positive integer, got calls_per_sample=0"):
        kh.time_round_robin(fns, repeats=1, calls_per_sample=0, timer=timer, block=block)


def test_tpu_timing_uses_several_calls_per_sample(monkeypatch):
    seen = {}

    def fake_round_robin(fns, **kw):
        seen.update(kw)
        return {name: (1e-3,) for name in fns}

    monkeypatch.setattr(kh, "time_round_robin", fake_round_robin)
    point = kh.TpuPoint(tokens=64, D=128, F=256, E=4, k=2, glu=False)
    pred, gs = kh.predict_tpu_point(point, "v5e")
    kh._time_tpu(point, pred, gs, repeats=2, min_time_s=0.0, timer=lambda: 0.0)  # fused in interpret mode here
    assert seen["calls_per_sample"] == kh.TPU_CALLS_PER_SAMPLE > 1
