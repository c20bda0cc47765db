"""Worker processes for the scaling fits (perfmodel/scaling/parallel.py): same results as one process,
usable from a script without a main guard, bad settings named."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from perfmodel.cli import main
from perfmodel.scaling import fit as F
from perfmodel.scaling import moe_laws, parallel, results, study

JOINT = moe_laws.JointMoELaw()
BUDGETS = (1e17, 3e17, 1e18, 3e18)


@pytest.fixture
def jobs_reset():
    yield
    parallel.set_jobs(None)


def _two_groups_two_seeds(tmp_path):
    laws = {("dense", 1, 1): JOINT.at_experts(1), ("moe", 8, 1): JOINT.at_experts(8)}
    text = "".join(results.write_synthetic(tmp_path / f"s{s}.jsonl", laws, BUDGETS, noise=0.01, seed=20 + s)
                   .read_text() for s in range(2))
    path = tmp_path / "runs.jsonl"
    path.write_text(text)
    return path


def test_study_is_identical_with_one_and_two_worker_processes(tmp_path, jobs_reset):
    # Every refit the report runs: the grid fits (spread over workers), Approach 3 / Approach 2 /
    # joint-law bootstraps and the held-out seed interval (resamples spread); the JSON must match exactly.
    path = _two_groups_two_seeds(tmp_path)
    grid = F.SMALL_GRID.points()[::4]  # 18 starts: enough to be spread over the workers
    assert len(grid) >= F.PARALLEL_MIN_STARTS
    out = {}
    for jobs in (1, 2):
        parallel.set_jobs(jobs)
        s = study.run_study(path, n_resamples=6, n_resamples_approach2=12, n_resamples_joint=3, grid=grid,
                            average_seeds=True)
        out[jobs] = json.dumps(study.report_json(s), sort_keys=True)
        if jobs == 2:
            assert parallel._pool is not None  # the workers did run
    assert out[1] == out[2]
    assert '"heldout"' in out[1] and '"joint' in out[1]


def test_a_script_without_main_guard_runs_the_fits_once(tmp_path):
    # spawn would re-run an unguarded script in every worker before its first task (and the workers'
    # own pmap would then fail); the workers start without the main module
    script = tmp_path / "quick.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from perfmodel.scaling import fit as F, parallel
        from perfmodel.scaling.laws import ChinchillaLaw
        print("script body ran")
        law = ChinchillaLaw(E_irr=1.2, A=40.0, B=300.0, alpha=0.4, beta=0.3)
        n = np.logspace(6, 8, 12); d = 1e15 / (6 * n)
        parallel.set_jobs(2)
        f = F.fit_approach3(n, d, law.loss(n, d))  # 72 starts: over the workers
        print("alpha", round(f.law.alpha, 3), parallel._pool is not None)
    """))
    env = {k: v for k, v in os.environ.items() if k != parallel.JOBS_ENV}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["script body ran", "alpha 0.4 True"]


def test_bad_jobs_are_named(tmp_path, monkeypatch, jobs_reset, capsys):
    with pytest.raises(ValueError, match=r"jobs must be a positive integer .*jobs=0"):
        parallel.set_jobs(0)
    with pytest.raises(ValueError, match=r"jobs=2.5"):
        parallel.set_jobs(2.5)
    monkeypatch.setenv(parallel.JOBS_ENV, "two")
    # not a ValueError: the fits catch those as 'this group cannot be fitted'
    with pytest.raises(parallel.ParallelError, match=r"PERFMODEL_JOBS must be a positive integer .*'two'"):
        parallel.pmap(abs, [1, -2, 3])
    path = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS)
    assert main(["scaling", "fit", str(path), "--resamples", "2", "--no-plots"]) == 2  # a one-line error
    err = capsys.readouterr().err
    assert "perfmodel scaling fit: error: PERFMODEL_JOBS must be" in err and "cannot be fitted" not in err
    monkeypatch.delenv(parallel.JOBS_ENV)
    with pytest.raises(SystemExit):
        main(["scaling", "fit", str(path), "--jobs", "0"])
    assert "argument --jobs: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_cli_jobs_option_sets_the_worker_count(tmp_path, jobs_reset, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(parallel, "set_jobs", lambda n: seen.append(n))
    path = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS)
    assert main(["scaling", "fit", str(path), "--resamples", "2", "--grid", "tiny", "--no-plots", "--jobs", "1"]) == 0
    assert seen == [1]
