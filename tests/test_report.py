"""`perfmodel report` on built-in defaults: every section and plot, and markdown numbers = JSON."""

import json
import pathlib
import re

import pytest

from perfmodel.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--out", str(out)]) == 0
    return out, (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


def test_every_section_is_present(report):
    _, md, data = report
    for title in ("## Hardware catalog", "## Roofline", "## When fusion beats ragged_dot",
                  "## Dense vs MoE scaling laws", "## Validation status"):
        assert title in md
    assert set(data["sections"]) == {"hardware", "roofline", "fusion", "scaling", "validation"}
    assert data["chips"] == ["v5e", "v6e"]


def test_every_referenced_plot_exists_and_is_an_image(report):
    out, md, _ = report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) >= 6
    for name in images:
        png = out / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in ("roofline.png", "fusion_map_v5e.png", "fusion_map_v6e.png", "fusion_breakdown.png",
                 "scaling_isoflops.png", "scaling_frontier.png", "scaling_loss_frontier.png"):
        assert (out / name).exists()


def test_fusion_numbers_in_markdown_match_the_json(report):
    _, md, data = report
    for chip, d in data["sections"]["fusion"]["chips"].items():
        block = md.split(f"### {chip}", 1)[1]
        assert f"**{d['speedup']:.2f}x**" in block
        assert f"{d['unfused_time_s'] * 1e6:.0f} us" in block and f"{d['fused_time_s'] * 1e6:.0f} us" in block
        assert d["sentence"] in block
        assert d["speedup"] == pytest.approx(d["unfused_time_s"] / d["fused_time_s"])


def test_validation_rows_in_markdown_match_the_json(report):
    _, md, data = report
    rows = data["sections"]["validation"]
    assert len(rows) >= 8
    for r in rows:
        assert r["result"].replace("|", "\\|") in md
    checks = " ".join(r["check"] for r in rows)
    for needle in ("XLA cost_analysis", "VMEM", "v5e", "Chinchilla", "held-out training", "CPU"):
        assert needle in checks


def test_heldout_rows_give_the_error_above_the_fitted_floor(report):
    _, _, data = report
    rows = {r["check"]: r["result"] for r in data["sections"]["validation"]}
    for g in data["sections"]["scaling"]["groups"]:
        h = g["heldout"]
        assert (f"above the fitted floor E={h['floor_loss']:.2g}: {h['best_loss_excess_error_percent']:+.1f}%"
                in rows[f"held-out training budget ({g['label']})"])
    # the Chinchilla row carries the same check on Chinchilla's runs, from the committed refit
    committed = json.loads((pathlib.Path(__file__).resolve().parents[1] / "validation/results/chinchilla_refit.json")
                           .read_text())
    for h in committed["heldout"]:
        assert (f"fitted below {h['cut_flops']:.0e} FLOPs, the lowest of the {h['n_heldout']} held-out points' "
                f"losses {h['lowest_error_percent']:+.1f}% (above the floor {h['lowest_excess_error_percent']:+.1f}%)"
                in rows["Chinchilla refit (Epoch protocol)"])


def test_hardware_numbers_match_the_catalog(report):
    _, md, data = report
    from perfmodel.hardware import CATALOG, format_si

    for rec in data["sections"]["hardware"]:
        chip = CATALOG[rec["chip"]]
        assert rec["bf16_flops_per_s"] == chip.bf16_flops_per_s
        assert format_si(chip.bf16_flops_per_s, "FLOP/s") in md


def test_scaling_section_reports_both_architectures_with_intervals(report):
    _, md, data = report
    labels = [g["label"] for g in data["sections"]["scaling"]["groups"]]
    assert "dense" in labels and any(l.startswith("moe") for l in labels)
    assert "MoE vs dense at equal compute" in md
    # every interval printed is a 95% interval with resamples beyond both ends (>= 40 kept), none flagged as short
    assert "(only " not in md
    for g in data["sections"]["scaling"]["groups"]:
        a2 = g["approach2"]
        if a2 is not None:
            assert a2["a"]["n_resamples"] >= 40 and a2["n_attempted"] >= a2["a"]["n_resamples"]
            assert f"{a2['a']['n_resamples']} of {a2['n_attempted']} resamples kept" in md


def test_measured_tpu_kernel_results_become_validation_rows(tmp_path):
    """A `perfmodel validate kernel` run made on a TPU shows up in the report's validation table."""
    from perfmodel.report import measured_kernel_rows

    run = tmp_path / "validation" / "results" / "kernel_v5e"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "info": {"chip": "v5e", "device_kind": "TPU v5 lite", "sweep": "quick",
                 "command": "perfmodel validate kernel --sweep quick"},
        "summary_tpu": {"points": 10, "winner_correct": 9,
                        "median_abs_rel_err": [["fused", 0.12], ["ragged_dot", 0.08], ["speedup", 0.15]],
                        "extra": [["output_correct", 10.0]]},
    }))
    rows = measured_kernel_rows(tmp_path / "validation" / "results")
    assert len(rows) == 1 and rows[0]["ok"] is True
    assert "9/10" in rows[0]["result"] and "fused 12.0%" in rows[0]["result"]
    cpu_only = tmp_path / "validation" / "results" / "kernel_cpu"
    cpu_only.mkdir()
    (cpu_only / "results.json").write_text(json.dumps({"summary_tpu": {"points": 0}}))
    assert len(measured_kernel_rows(tmp_path / "validation" / "results")) == 1


def test_a_measured_tpu_kernel_row_is_met_only_if_every_fused_output_was_correct(tmp_path):
    """Winner right at 10/10 points is no pass when the fused kernel computed the wrong numbers at one of them
    (the row's ``ok`` looked at the winners only); a file without the count is not met either."""
    from perfmodel.report import measured_kernel_rows

    run = tmp_path / "validation" / "results" / "kernel_v5e"
    run.mkdir(parents=True)

    def row(extra):
        (run / "results.json").write_text(json.dumps({
            "info": {"chip": "v5e", "device_kind": "TPU v5 lite", "sweep": "quick"},
            "summary_tpu": {"points": 10, "winner_correct": 10, "extra": extra,
                            "median_abs_rel_err": [["fused", 0.1], ["ragged_dot", 0.1], ["speedup", 0.1]]}}))
        (r,) = measured_kernel_rows(tmp_path / "validation" / "results")
        return r

    r = row([["split_half_agree", 10.0], ["output_correct", 9.0]])
    assert r["ok"] is False and "fused output = ragged_dot's at 9/10 points" in r["result"]
    r = row([["split_half_agree", 10.0]])
    assert r["ok"] is False and "not counted in this file" in r["result"]
    assert row([["output_correct", 10.0]])["ok"] is True


def test_a_measured_tpu_kernel_row_is_not_met_when_a_point_failed_on_the_chip(tmp_path):
    """A point that raised on the TPU (results.json ``failed``) used to leave the row met on the other points, and a
    run whose every point failed (summary points 0) had no row at all: the report said nothing was measured."""
    from perfmodel.report import measured_kernel_rows

    run = tmp_path / "validation" / "results" / "kernel_v5e"
    run.mkdir(parents=True)
    fail = "T=256 D=512: JaxRuntimeError: INTERNAL: Mosaic failed to compile TPU kernel"

    def row(points, failed):
        (run / "results.json").write_text(json.dumps({
            "info": {"chip": "v5e", "device_kind": "TPU v5 lite", "sweep": "quick"}, "failed": failed,
            "summary_tpu": {"points": points, "winner_correct": points, "extra": [["output_correct", points]],
                            "median_abs_rel_err": [["fused", 0.1], ["ragged_dot", 0.1], ["speedup", 0.1]]}}))
        return measured_kernel_rows(tmp_path / "validation" / "results")

    (r,) = row(10, [fail])
    assert r["ok"] is False and "10/10" in r["result"] and f"1 point(s) FAILED (the run raised): {fail}" in r["result"]
    (r,) = row(0, [fail, fail])
    assert r["ok"] is False and r["result"] == f"2 point(s) FAILED (the run raised): {fail}; {fail}"
    assert row(10, [])[0]["ok"] is True
    assert row(0, []) == []


def _fake_tpu(monkeypatch, device_kind):
    import types

    from perfmodel import tpu_compile

    monkeypatch.setattr(tpu_compile, "default_device",
                        lambda: types.SimpleNamespace(platform="tpu", device_kind=device_kind))


def test_on_a_tpu_the_catalog_does_not_know_the_report_says_not_measured_and_is_written(tmp_path, monkeypatch):
    """'TPU v3' (get_chip refuses it) used to raise inside the last section, and write_report discarded the
    whole report; now the validation table says why the kernel was not measured."""
    from perfmodel import report as R

    _fake_tpu(monkeypatch, "TPU v3")
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.validation_section))
    md = R.write_report(tmp_path / "rep", log=lambda s: None).read_text()
    assert "## Hardware catalog" in md
    (row,) = [r for r in json.loads((tmp_path / "rep" / "report.json").read_text())["sections"]["validation"]
              if r["check"] == "fused vs ragged_dot measured on TPU v3"]
    assert row["ok"] is None and row["result"].startswith("not measured: unknown chip 'TPU v3'")
    assert "| not measured: unknown chip 'TPU v3'" in md


def test_a_failing_kernel_harness_gives_a_failed_row_and_the_rest_of_the_report(tmp_path, monkeypatch):
    """Any exception from the harness is logged and becomes a failed row (met: no); an interrupt still stops."""
    import jax

    from perfmodel import report as R
    from validation import kernel_harness

    def crash(**kw):
        raise jax.errors.JaxRuntimeError("INTERNAL: Mosaic failed to compile TPU kernel")

    _fake_tpu(monkeypatch, "TPU v5 lite")
    monkeypatch.setattr(kernel_harness, "run", crash)
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.validation_section))
    logs = []
    md = R.write_report(tmp_path / "rep", log=logs.append).read_text()
    assert "## Hardware catalog" in md and any("failed (JaxRuntimeError: INTERNAL" in s for s in logs)
    (row,) = [r for r in json.loads((tmp_path / "rep" / "report.json").read_text())["sections"]["validation"]
              if r["check"] == "fused vs ragged_dot measured on v5e"]
    assert row["ok"] is False and row["result"].startswith("failed: JaxRuntimeError: INTERNAL: Mosaic")

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(kernel_harness, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        R.measure_on_tpu(tmp_path / "rep", log=lambda s: None)


def test_cpu_validation_row_passes_only_if_every_committed_full_sweep_meets_the_target(tmp_path, monkeypatch):
    """One lucky run is not the model's score: the row quotes each full sweep and needs all of them >= 90%."""
    from perfmodel import report

    def run(rel, chip_right, steady=False):
        d = tmp_path / rel
        d.mkdir(parents=True)
        summary = {"points": 66, "winner_correct": 40,
                   "median_abs_rel_err": [["ragged_dot (cpu chip + page faults)", 0.5],
                                          ["chunked (cpu chip + page faults)", 0.4]],
                   "extra": [["chip_winner_correct", chip_right], ["fault_model_points", 66],
                             ["split_half_agree", 54], ["measured_decided_points", 41],
                             ["measured_decided_chip_winner_correct", 40]]}
        js = {"info": {"sweep": "full", "host": "x86_64 test", "cpu_count": 2}, "summary_cpu": summary,
              "heap": "steady" if steady else "default"}
        (d / "results.json").write_text(json.dumps(js))
        return js

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    main = run("kernel_cpu/full", 60)
    run("kernel_cpu/heap_control/default", 61)
    run("kernel_cpu/heap_control/steady", 59, steady=True)
    row = dict(zip(("check", "against", "data", "result", "target", "date", "command", "ok"),
                   report._cpu_kernel_row(main, "2026-12-02")))
    assert "60/66 (`kernel_cpu/full`, default heap)" in row["result"]
    assert "59/66 (`kernel_cpu/heap_control/steady`, steady heap)" in row["result"]
    assert row["ok"] is False  # 59/66 < 90%
    (tmp_path / "kernel_cpu/heap_control/steady/results.json").unlink()
    assert report._cpu_kernel_row(main, "2026-12-02")[-1] is True  # 60/66 and 61/66 both meet it


def test_an_interrupted_report_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    """Files are staged and moved in only when every section is done: Ctrl-C in the middle of a re-run leaves the
    earlier report.md, report.json and plots as they were, other files untouched, and no staging folder behind."""
    from perfmodel import report as R

    out = tmp_path / "rep"
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.roofline_section))
    R.write_report(out, log=lambda s: None)
    (out / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert {"report.md", "report.json", "roofline.png"} <= before.keys()

    def interrupted(out_dir, chips, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.roofline_section, interrupted))
    with pytest.raises(KeyboardInterrupt):
        R.write_report(out, chips=["v4"], log=lambda s: None)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # staging folder removed too

    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.roofline_section))
    R.write_report(out, chips=["v4"], log=lambda s: None)  # a finished run replaces the report
    assert "for chips: v4." in (out / "report.md").read_text() and (out / "notes.txt").read_text() == "mine"


def test_a_rerun_for_other_chips_removes_the_plots_only_the_earlier_report_wrote(tmp_path, monkeypatch):
    """The v5e fusion map of a first run is not left, unlinked, beside a report for v4; the user's files stay."""
    from perfmodel import report as R

    out = tmp_path / "rep"
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.fusion_section))
    R.write_report(out, chips=["v5e"], log=lambda s: None)
    assert (out / "fusion_map_v5e.png").exists()
    (out / "notes.txt").write_text("mine")
    (out / "fusion_map_mine.png").write_bytes(b"not the report's")
    R.write_report(out, chips=["v4"], log=lambda s: None)
    names = {f.name for f in out.iterdir()}
    assert "fusion_map_v4.png" in names and "fusion_map_v5e.png" not in names
    assert {"notes.txt", "fusion_map_mine.png"} <= names
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text()))
    assert {n for n in names if n.endswith(".png")} - {"fusion_map_mine.png"} <= linked
    (out / R.MANIFEST).write_text('["../outside.txt", "/etc/passwd", 3]')  # a damaged manifest names nothing
    (tmp_path / "outside.txt").write_text("x")
    R.write_report(out, chips=["v4"], log=lambda s: None)
    assert (tmp_path / "outside.txt").exists()


def test_on_a_tpu_the_report_times_the_kernel_into_the_report_folder_and_adds_its_row(tmp_path, monkeypatch):
    """Issue 8.2 end to end with a stand-in TPU: ``write_report`` runs the quick sweep into ``--out/kernel_<chip>``
    (the final folder, which keeps the timed points if the report stops, not the staging one) and the validation
    table gains its row."""
    import types

    from perfmodel import report as R
    from perfmodel import tpu_compile
    from validation import kernel_harness

    calls = []

    def fake_run(*, sweep, out, device, progress, command):
        calls.append((sweep, pathlib.Path(out), command))
        pathlib.Path(out).mkdir(parents=True)
        (pathlib.Path(out) / "results.json").write_text(json.dumps({
            "info": {"chip": "v5e", "device_kind": device.device_kind, "sweep": sweep, "command": command},
            "summary_tpu": {"points": 13, "winner_correct": 12, "extra": [["output_correct", 13.0]],
                            "median_abs_rel_err": [["fused", 0.2], ["ragged_dot", 0.1], ["speedup", 0.25]]}}))

    monkeypatch.setattr(tpu_compile, "default_device",
                        lambda: types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite"))
    monkeypatch.setattr(kernel_harness, "run", fake_run)
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.validation_section))
    out = tmp_path / "rep"
    md = R.write_report(out, log=lambda s: None).read_text()
    assert calls == [("quick", out / "kernel_v5e", f"perfmodel validate kernel --sweep quick --out {out / 'kernel_v5e'}")]
    assert (out / "kernel_v5e" / "results.json").exists()
    assert "| fused vs ragged_dot measured on v5e | timed on TPU v5 lite (quick sweep) |" in md
    assert "winner right 12/13" in md


def test_chips_named_twice_or_by_alias_get_one_section_each(tmp_path, monkeypatch):
    """``--chips v5e,trillium,v5e,v6e`` is two chips: the fusion section and header name each once."""
    from perfmodel import report as R

    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.fusion_section))
    md = R.write_report(tmp_path / "rep", chips=["v5e", "trillium", "v5e", "v6e"], log=lambda s: None).read_text()
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["chips"] == ["v5e", "v6e"]
    assert list(data["sections"]["fusion"]["chips"]) == ["v5e", "v6e"]
    assert md.count("### v5e") == 1 and md.count("### v6e") == 1
    assert "for chips: v5e, v6e." in md


def test_a_report_for_gpus_says_why_it_has_no_fusion_prediction_and_marks_no_gpu_as_default(tmp_path, monkeypatch):
    """A GPU is not a default chip, and the TPU-only fusion section says it skipped it instead of staying empty."""
    from perfmodel import report as R
    from perfmodel.hardware import DEFAULT_CHIPS

    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section, R.fusion_section))
    md = R.write_report(tmp_path / "rep", chips=["h100"], log=lambda s: None).read_text()
    assert "h100" not in DEFAULT_CHIPS and "h100 (default)" not in md
    fusion = md.split("## When fusion beats ragged_dot", 1)[1]
    assert "h100" in fusion.split("**Crossover", 1)[0]
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["sections"]["fusion"]["chips"] == {} and data["sections"]["fusion"]["chips_skipped"] == ["h100"]


def test_kernel_aot_row_does_not_count_a_shape_without_tiles_as_a_failed_compile(tmp_path, monkeypatch):
    """A shape where no tiles fit the chip compiles nothing: '1/2 compile' next to 'met: yes' read as a failure."""
    from perfmodel import report as R

    base = dict(dtype="f32", T=16384, D=4096, F=14336, G=8, glu=True)
    (tmp_path / "kernel_aot.json").write_text(json.dumps([
        dict(base, chip="v5e", purpose="default", outcome="ok"),
        dict(base, chip="v4", purpose="default", outcome="no_tiles"),
        dict(base, chip="v5e", purpose="model_overflows", outcome="vmem")]))
    monkeypatch.setattr(R, "RESULTS_DIR", tmp_path)
    row = next(r for r in R.validation_rows() if r["check"].startswith("fused kernel: VMEM"))
    assert "default tiles compile 1/1 (1 shape where no candidate tiles fit" in row["result"]
    assert "2/2 configs" in row["result"] and row["ok"] is True


def test_a_measured_cpu_chip_gets_a_hardware_row_with_its_source(tmp_path, monkeypatch):
    """``--chips cpu`` is outside the catalog; the hardware table listed the catalog only, so the report's own
    chip had no row (its roofline was drawn from numbers the report never showed)."""
    from perfmodel import hardware
    from perfmodel import report as R

    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    hardware.save_cpu_calibration(hardware.measure_cpu(matmul_n=64, copy_mib=2, repeats=3))
    monkeypatch.setattr(R, "SECTIONS", (R.hardware_section,))
    md = R.write_report(tmp_path / "rep", chips=["cpu"], log=lambda s: None).read_text()
    (row,) = [line for line in md.splitlines() if line.startswith("| cpu (this report) |")]
    assert "perfmodel calibrate cpu" in row
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [c["chip"] for c in data["sections"]["hardware"]][-1] == "cpu"


def test_a_report_killed_with_sigterm_removes_its_staging_folder(tmp_path):
    """``kill`` (or a scheduler's time limit) used to leave a hidden .report.partial-* folder behind:
    SIGTERM is now handled like Ctrl-C, and the exit status says which signal stopped the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "rep"
    proc = subprocess.Popen([sys.executable, "-m", "perfmodel", "report", "--out", str(out), "--chips", "v5e"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".report.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and list(out.glob(".report.partial-*")), "the report never started staging"
        time.sleep(0.5)  # inside a section
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert list(out.iterdir()) == []
