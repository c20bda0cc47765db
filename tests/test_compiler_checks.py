"""validation.compiler_checks: perfmodel vs libtpu's cost analysis."""

import json

import pytest

from perfmodel import tpu_compile
from perfmodel.api import predict
from validation import compiler_checks as cc

needs_libtpu = pytest.mark.skipif(not tpu_compile.libtpu_available(), reason="libtpu not installed")

PREFETCH_HLO = """
ENTRY %main.1 (a.1: bf16[4096,4096], b.1: bf16[4096,4096]) -> bf16[4096,4096] {
  %copy-start = (bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)}, bf16[4096,4096]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%a.1), cross_program_prefetch_index=0
  %copy-done = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start)
}
"""


def test_prefetched_bytes_reads_copy_start_shapes():
    assert cc.prefetched_bytes(PREFETCH_HLO) == 4096 * 4096 * 2
    assert cc.prefetched_bytes("ROOT %fusion = bf16[8,128] fusion(%a)") == 0


def _row(delta):
    return cc.Row(check="flops", chip="v5e", case="c", shape="s", ours=1.0 + delta / 100, xla=1.0,
                  delta_pct=delta)


def test_stats_are_mean_and_max_of_absolute_deltas():
    assert cc.stats([_row(-10.0), _row(30.0)]) == (20.0, 30.0)


def test_report_files(tmp_path):
    peak = cc.ImpliedPeak(chip="v5e", device_kind="TPU v5 lite", flops_per_s=1.97e14,
                          elementwise_bytes_per_s=7.38e11, skinny_matmul_bytes_per_s=7.38e11,
                          catalog_flops_per_s=1.97e14, catalog_hbm_bytes_per_s=8.19e11, tensor_cores_per_chip=1)
    rep = cc.Report(rows=(cc.Row(check="flops", chip="v5e", case="small", shape="1x1x1", ours=2.0, xla=2.0,
                                 delta_pct=0.0),), peaks=(peak,), libtpu="x", jax="y")
    md, js = cc.write(rep, tmp_path)
    assert "| v5e | small |" in md.read_text()
    assert json.loads(js.read_text())["peaks"][0]["chip"] == "v5e"


@needs_libtpu
@pytest.mark.tpu_compile
def test_xla_bytes_are_ideal_plus_prefetch_bookkeeping():
    m, k, n = 1024, 512, 256
    prog = tpu_compile.compile_for_tpu(lambda a, b: a @ b, [((m, k), "bf16"), ((k, n), "bf16")], "v5e")
    ours = predict("matmul", chip="v5e", M=m, K=k, N=n).cost
    ideal = ours.read_bytes + ours.write_bytes
    assert prog.flops == ours.flops
    corrected = prog.bytes_accessed - 4 * cc.prefetched_bytes(prog.hlo_text)
    assert corrected == pytest.approx(ideal, rel=5e-3)


def test_tiled_time_uses_xla_tiles_from_the_table():
    class Compiled:  # stands in for a CompiledProgram: only optimal_seconds is read
        optimal_seconds = 1e-4

    # FACTS section 2: v5e, lhs bf16[4096,1024], rhs bf16[8,1024,4096] -> XLA tiles (128, 1024, 1280).
    row = cc._tiled_row("v5e", "c", "s", 4096, 1024, 4096, 8, "forward", Compiled())
    assert "tiles 128/1024/1280" in row.note and row.ours > 0
    assert row.delta_pct == pytest.approx(100 * (row.ours / 1e-4 - 1))


def test_run_resolves_every_chip_before_compiling(monkeypatch):
    monkeypatch.setattr(tpu_compile, "compile_for_tpu", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="chip='a100'"):
        cc.run(chips=["v5e", "a100"])
    with pytest.raises(ValueError, match="unknown chip 'nope'"):
        cc.run(chips=["v5e", "nope"])
    with pytest.raises(ValueError, match="no chips"):
        cc.run(chips=[])


@pytest.mark.parametrize("chips, match", [
    ("v5e,nope", "--chips: unknown chip 'nope'"),
    ("v5e,a100", "--chips: .*needs a TPU"),
    ("v5e,,v6e", "--chips must be a comma-separated list of chip names"),  # the empty item was dropped
])
def test_cli_refuses_bad_chips_before_compiling(chips, match, monkeypatch, capsys, tmp_path):
    import re

    from perfmodel.cli import main

    monkeypatch.setattr(tpu_compile, "compile_for_tpu", lambda *a, **k: pytest.fail("compiled"))
    rc = main(["validate", "compiler", "--chips", chips, "--out", str(tmp_path / "o")])
    assert rc == 2 and re.search(match, capsys.readouterr().err)
