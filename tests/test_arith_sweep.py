"""Sweep: study designs, atomic JSONL appends, resume, and a kill in the middle loses <= 1 run."""

import math
import os
import signal
import subprocess
import sys
import time

import pytest

from validation.arith import sweep


def test_full_study_design():
    full = sweep.STUDIES["full"]
    assert len(full.budgets_flops) >= 3 and max(full.budgets_flops) / min(full.budgets_flops) >= 10
    runs = sweep.plan(full)
    for c in full.budgets_flops:
        for arch in ("dense", "moe-E8k2"):
            rs = [r for r in runs if r.budget_flops == c and r.arch == arch]
            assert len(rs) >= 5
            for r in rs:  # tokens = C / FLOPs per token, to within one step
                fpt = r.config.model.shape.flops_per_token().train_exact
                assert abs(r.config.steps * r.config.tokens_per_step * fpt / c - 1) < 0.5 / min(r.config.steps, 100) + 0.01
    # dense and MoE at equal active parameters per token (MoE adds only the router, D E per layer)
    dense = {r.config.model.d_model: r.config.model for r in runs if r.arch == "dense"}
    for r in runs:
        if r.arch != "dense":
            m, d = r.config.model, dense[r.config.model.d_model]
            extra = m.shape.params().active - d.shape.params().active
            assert extra == m.n_layers * m.d_model * m.n_experts
    assert len({r.run_id for r in runs}) == len(runs)


def test_lr_scale_multiplies_the_recipe_lr_and_tags_the_run_id():
    import attrs

    base = sweep.plan(attrs.evolve(sweep.STUDIES["quick"], seeds=(0,)))
    half = sweep.plan(attrs.evolve(sweep.STUDIES["quick"], seeds=(0,), lr_scale=0.5))
    for a, b in zip(base, half):
        assert b.config.optim.peak_lr == pytest.approx(0.5 * a.config.optim.peak_lr)
        assert b.run_id == a.run_id + "/lr_x0.5"
        assert b.config.batch_size == a.config.batch_size and b.config.model == a.config.model


def test_append_is_line_atomic_and_torn_lines_are_ignored(tmp_path):
    p = tmp_path / "r.jsonl"
    sweep.append_record(p, {"run_id": "a", "x": 1})
    with open(p, "a") as f:
        f.write('{"run_id": "b", "x"')  # a writer killed mid-line
    assert set(sweep.read_done(p)) == {"a"}
    sweep.append_record(p, {"run_id": "c", "x": 3})
    assert set(sweep.read_done(p)) == {"a", "c"}
    assert all(line.endswith("\n") for line in p.read_text().splitlines(keepends=True))
    # the torn fragment is cut off, not kept as a garbage line that the fitter (read_runs) refuses
    assert [line[:14] for line in p.read_text().splitlines()] == ['{"run_id": "a"', '{"run_id": "c"']


@pytest.mark.parametrize("line, why", [('{"x": 1}', "no string 'run_id'"), ('[1, 2]', "expected a JSON object"),
                                        ('{"run_id": 7}', "no string 'run_id'"), ("not json", "not valid JSON")])
def test_a_complete_line_that_is_not_a_sweep_record_is_refused_with_its_line_number(tmp_path, line, why):
    p = tmp_path / "r.jsonl"
    sweep.append_record(p, {"run_id": "a", "x": 1})
    with open(p, "a") as f:
        f.write("\n" + line + "\n")  # a blank line (skipped), then the bad one on line 3
    with pytest.raises(ValueError, match=rf"--out .*r\.jsonl:3: {why}"):
        sweep.read_done(p)


def test_sweep_cli_stops_on_a_malformed_results_file_before_training(tmp_path, capsys):
    from perfmodel import cli

    p = tmp_path / "r.jsonl"
    p.write_text('{"x": 1}\n')
    assert cli.main(["train", "sweep", "--study", "quick", "--arch", "dense", "--out", str(p)]) == 2
    assert "r.jsonl:1: no string 'run_id'" in capsys.readouterr().err
    assert p.read_text() == '{"x": 1}\n'  # nothing appended on top of it


_CHILD = """
import sys
from validation.arith import sweep
study = sweep.Study(name="t", budgets_flops=(1e8,), sizes_per_budget=2, task="add2")
sweep.run_study(study, __import__("pathlib").Path(sys.argv[1]), archs=("dense",))
"""


def test_kill_loses_at_most_the_run_in_progress_and_rerun_skips(tmp_path):
    p = tmp_path / "kill.jsonl"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(p)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(sweep.read_done(p)) < 1:
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = sweep.read_done(p)
    assert len(done) == 1
    study = sweep.Study(name="t", budgets_flops=(1e8,), sizes_per_budget=2, task="add2")
    ran = []
    recs = sweep.run_study(study, p, archs=("dense",), log=lambda s: None, after_run=lambda i, r: ran.append(r["run_id"]))
    assert len(ran) == 1 and not set(ran) & set(done)
    assert len(recs) == 2 and len(p.read_text().splitlines()) == 2
    rec = recs[0]
    for key in ("params_total", "params_active_non_embedding", "flops", "tokens", "train_loss", "held_out_loss",
                "curve_train_loss", "wall_time_s", "tokens_per_s", "device", "versions", "config"):
        assert key in rec
    assert math.isfinite(rec["held_out_loss"])


def test_a_budget_below_one_batch_is_refused_not_overspent():
    # the token budget had a floor of one batch, so a 1e6-FLOP run spent 3.3e6 and was recorded as 1e6
    import attrs

    with pytest.raises(ValueError, match=r"budget 1e\+06 FLOPs is below one batch of dense D=8 .* got budgets_flops=1e\+06"):
        sweep.plan(attrs.evolve(sweep.STUDIES["quick"], budgets_flops=(1e6,)))
    for r in sweep.plan(sweep.STUDIES["quick"]):  # every run spends its budget to within one step
        fpt = r.config.model.shape.flops_per_token().train_exact
        assert r.config.steps * r.config.tokens_per_step * fpt <= r.budget_flops * (1 + 1 / r.config.steps)


def test_budgets_sharing_a_run_id_are_refused():
    """1e8 and 1.4e8 both print as C1e+08: both budgets were trained under one id each, and the fitter refused
    the file as a run recorded twice."""
    import attrs

    with pytest.raises(ValueError, match=r"budgets 1e\+08 and 1.4e\+08 FLOPs get the same run id"):
        sweep.plan(attrs.evolve(sweep.STUDIES["quick"], budgets_flops=(1e8, 1.4e8)), archs=("dense",))


def test_an_output_that_cannot_be_created_is_refused_before_training(tmp_path, capsys):
    from perfmodel.cli import main

    (tmp_path / "afile").write_text("")
    for out, needle in ((str(tmp_path / "afile" / "x.jsonl"), "afile' is a file, not a folder"),
                        ("", "must name a file, got ''")):  # "" appended to the repository's own results file
        with pytest.raises(SystemExit) as exit_:  # argparse refuses it: before the device line or any run
            main(["train", "sweep", "--out", out])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "argument --out: " in err and needle in err


@pytest.mark.parametrize("argv, name", [
    (["--study", "huge"], "study='huge'"), (["--arch", "both2"], "arch='both2'"),
    (["--moe-impl", "magic"], "moe_impl='magic'"), (["--budgets", "1e9,x"], "budgets='1e9,x'"),
    (["--seeds", "0,a"], "seeds='0,a'"), (["--lr-scale", "-1"], "--lr-scale=-1"),
    (["--dtype", "float16"], "dtype='float16'"), (["--task", "foo"], "task='foo'"),
])
def test_cli_rejects_bad_input_naming_the_argument(argv, name, capsys):
    from perfmodel.cli import main

    assert main(["train", "sweep", *argv]) == 2
    out, err = capsys.readouterr()
    assert name in err and out == ""  # refused before the device line or any run


def test_one_step_run_reports_rate_unknown_not_nan(tmp_path):
    """A budget so small that the run is one step (the compile) has no steady-state rate: the log and the table say
    n/a, and the record holds null so the JSONL stays strict JSON."""
    import json

    p = tmp_path / "one.jsonl"
    lines = []
    seq_len = sweep.task_lib.TaskConfig.parse("add2").seq_len
    smallest = sweep.dense_model(sweep.WIDTHS[0], seq_len=seq_len).shape.flops_per_token().train_exact
    one_batch = 16 * seq_len * smallest  # batch_for's floor is 16 sequences
    study = sweep.Study(name="t", budgets_flops=(1.2 * one_batch,), sizes_per_budget=1, task="add2")
    (rec,) = sweep.run_study(study, p, archs=("dense",), log=lines.append)
    assert rec["steps"] == 1 and rec["tokens_per_s"] is None and rec["flops_per_s"] is None
    log, table = "\n".join(lines), sweep.markdown_summary([rec])
    assert "n/a" in log and "n/a" in table
    assert "nan" not in log.lower() and "nan" not in table.lower()

    def refuse(c):
        raise ValueError(c)
    json.loads(p.read_text(), parse_constant=refuse)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the lr 1e298 update itself
def test_a_diverged_run_is_recorded_as_diverged_in_strict_json_and_the_fitter_skips_it(tmp_path):
    """--lr-scale 1e300 used to record held_out_loss NaN (a non-JSON token) with no mark, and exit 0."""
    import json

    from perfmodel.scaling import results

    p = tmp_path / "div.jsonl"
    lines = []
    seq_len = sweep.task_lib.TaskConfig.parse("add2").seq_len
    smallest = sweep.dense_model(sweep.WIDTHS[0], seq_len=seq_len).shape.flops_per_token().train_exact
    study = sweep.Study(name="t", budgets_flops=(4 * 16 * seq_len * smallest,), sizes_per_budget=1, task="add2",
                        lr_scale=1e300)
    (rec,) = sweep.run_study(study, p, archs=("dense",), log=lines.append)
    assert sweep.diverged(rec) and rec["held_out_loss"] is None
    assert "DIVERGED" in lines[-1] and "status 'diverged'" in lines[-1]

    def refuse(c):
        raise ValueError(c)
    json.loads(p.read_text(), parse_constant=refuse)
    with pytest.raises(ValueError, match="no finished runs"):
        results.read_runs(p)
    # a resumed sweep keeps it (a rerun would diverge again) instead of training it again
    assert sweep.run_study(study, p, archs=("dense",), log=lines.append) == [rec]


def test_sweep_cli_exits_nonzero_when_runs_diverged(tmp_path, monkeypatch, capsys):
    from perfmodel import cli

    def fake_run_study(study, out, **_):
        ok = {"run_id": "a", "arch": "dense", "budget_flops": 1e10, "status": "ok", "held_out_loss": 0.5,
              "params_active": 10, "params_total": 10, "tokens": 100, "config": {"optim": {"peak_lr": 1e-2}}}
        bad = {**ok, "run_id": "b", "status": "diverged", "held_out_loss": None,
               "config": {"optim": {"peak_lr": 1e298}}}
        return [ok, bad]

    monkeypatch.setattr(sweep, "run_study", fake_run_study)
    code = cli.main(["train", "sweep", "--study", "quick", "--arch", "dense", "--lr-scale", "1e300",
                     "--out", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert code == 1 and "loss=0.5000" in out
    assert "1 of 2 runs diverged (non-finite loss), e.g. b" in err and "peak lr 1e+298 at --lr-scale 1e+300" in err
