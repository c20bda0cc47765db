"""Dense vs MoE study on synthetic sweeps drawn from known laws (perfmodel/scaling/study.py + CLI)."""

import json

import attrs
import numpy as np
import pytest

from perfmodel.scaling import fit as F
from perfmodel.scaling import laws, moe_laws, results, study

JOINT = moe_laws.JointMoELaw()
BUDGETS = (1e17, 3e17, 1e18, 3e18)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    p = tmp_path_factory.mktemp("sweep") / "runs.jsonl"
    return results.write_synthetic(p, {("dense", 1, 1): JOINT.at_experts(1), ("moe", 8, 1): JOINT.at_experts(8)},
                                   BUDGETS, noise=0.002, seed=3)


@pytest.fixture(scope="module")
def fitted(sweep):
    return study.run_study(sweep, n_resamples=15, grid=F.TINY_GRID)


def test_recovers_generating_exponents(fitted):
    by = {g.label: g for g in fitted.groups}
    for label, e in (("dense", 1), ("moe E=8 k=1", 8)):
        true = JOINT.at_experts(e)
        a_true = true.beta / (true.alpha + true.beta)
        assert abs(by[label].approach3.a.point - a_true) < 0.05
        assert abs(by[label].approach2.a.point - a_true) < 0.08


def test_moe_more_tokens_per_active_param_and_lower_loss(fitted):
    (cmp,) = fitted.comparisons
    for td, tm, adv in zip(cmp.tokens_per_param_dense, cmp.tokens_per_param_moe, cmp.loss_advantage):
        assert tm.point > td.point
        assert adv.point > 0
    # truth at the largest budget
    c = BUDGETS[-1]
    true_adv = float(JOINT.optimal(c, 1).loss - JOINT.optimal(c, 8).loss)
    assert abs(cmp.loss_advantage[-1].point - true_adv) < 0.02


def test_heldout_prediction_of_largest_budget(fitted):
    for g in fitted.groups:
        h = g.heldout
        assert h.budget_flops == BUDGETS[-1]
        assert abs(h.best_loss_error_percent) < 5
        assert abs(h.params_opt_error_percent_approach3) < 30
        assert h.runs_loss_mape_percent < 2
        # the same law against the best run at each budget it was fitted on: one entry per fitted budget
        assert [c for c, _ in h.insample_best_loss_error_percent] == list(BUDGETS[:-1])
        assert all(abs(v) < 5 for _, v in h.insample_best_loss_error_percent)  # low-noise synthetic sweep
        # the baseline through the best runs extrapolates too (no floor: it errs on the low side of a law with E > 0)
        assert h.best_loss_error_percent_frontier == pytest.approx(
            100 * (h.best_loss_predicted_frontier / h.best_loss_observed - 1))
        assert -25 < h.best_loss_error_percent_frontier < 5


def test_insample_best_loss_error_grows_with_run_noise(tmp_path):
    # with noisy runs the best run of a budget sits below the smooth law's L*(C) even in-sample
    law = JOINT.at_experts(1)
    quiet = results.write_synthetic(tmp_path / "q.jsonl", {("dense", 1, 1): law}, BUDGETS, noise=0.002, seed=1)
    noisy = results.write_synthetic(tmp_path / "n.jsonl", {("dense", 1, 1): law}, BUDGETS, noise=0.08, seed=1)
    err = {}
    for name, path in (("quiet", quiet), ("noisy", noisy)):
        h = study.heldout_check(results.read_runs(path), grid=F.TINY_GRID)
        err[name] = max(abs(v) for _, v in h.insample_best_loss_error_percent)
    assert err["noisy"] > 2 * err["quiet"]


def test_fewer_than_three_budgets_is_an_error(tmp_path):
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS[:2])
    with pytest.raises(ValueError, match="at least 3 compute budgets.*got 2"):
        study.run_study(p, n_resamples=2)


def test_cli_fit_writes_markdown_json_and_plots(sweep, tmp_path, capsys):
    from perfmodel.cli import main

    rc = main(["scaling", "fit", str(sweep), "--out", str(tmp_path), "--resamples", "5", "--grid", "tiny"])
    assert rc == 0
    data = json.loads((tmp_path / "scaling_fit.json").read_text())
    assert [g["label"] for g in data["groups"]] == ["dense", "moe E=8 k=1"]
    assert data["groups"][0]["heldout"]["budget_flops"] == BUDGETS[-1]
    for name in ("scaling_isoflops.png", "scaling_law_vs_data.png", "scaling_frontier.png",
                 "scaling_loss_frontier.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "Held-out check" in capsys.readouterr().out


def test_cli_bad_file_is_a_clear_error(tmp_path, capsys):
    from perfmodel.cli import main

    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"params": {"active_non_embedding": 1e5}, "tokens": 1e6, "budget_flops": 1e12,
                             "final_eval_loss": float("inf")}) + "\n")
    assert main(["scaling", "fit", str(p), "--out", str(tmp_path)]) == 2
    assert "non-finite eval loss" in capsys.readouterr().err


def test_joint_law_fitted_across_expert_counts(fitted):
    assert fitted.joint is not None and fitted.joint.experts == (1, 8)
    ci = fitted.joint_bootstrap.constants["alpha"]
    assert ci.low <= ci.point <= ci.high
    for e in (1, 8):
        true = float(JOINT.optimal(BUDGETS[-1], e).loss)
        assert abs(float(fitted.joint.law.optimal(BUDGETS[-1], e).loss) - true) < 0.02


def test_heldout_uses_the_runs_flops_per_param_token(tmp_path):
    # Runs that spend c_f = 8 FLOPs per parameter-token (attention, embeddings on top of 6 N D): the
    # held-out optimum must be taken on C = 8 N D, else L*(C) is read at the wrong token count.
    law = JOINT.at_experts(1)
    p = results.write_synthetic(tmp_path / "runs.jsonl", {("dense", 1, 1): law}, BUDGETS, flops_per_param_token=8.0)
    runs = results.read_runs(p)
    h = study.heldout_check(runs, grid=F.TINY_GRID)
    assert abs(h.best_loss_error_percent) < 0.5


def test_rolling_origin_checks_each_budget_from_the_budgets_below_it(tmp_path):
    law = JOINT.at_experts(1)
    budgets = BUDGETS + (1e19,)
    p = results.write_synthetic(tmp_path / "runs.jsonl", {("dense", 1, 1): law}, budgets, noise=0.002, seed=5)
    runs = results.read_runs(p)
    (g,) = study.run_study(p, n_resamples=3, grid=F.TINY_GRID).groups
    assert (g.heldout.budget_flops, g.heldout.fitted_budgets) == (1e19, 4)
    (e,) = g.heldout_earlier  # 3e18 is the only earlier budget with 3 budgets below it
    assert (e.budget_flops, e.fitted_budgets) == (3e18, 3)
    assert e == study.heldout_check(runs, budget_flops=3e18, grid=F.TINY_GRID)
    # runs above the held-out budget play no part: drop them and the check is the same
    assert study.heldout_check(runs.select(runs.budget_flops <= 3e18), grid=F.TINY_GRID) == e
    assert abs(e.best_loss_error_percent) < 5
    with pytest.raises(ValueError, match="budget_flops=2e\\+18 is not one of the runs' budgets"):
        study.heldout_check(runs, budget_flops=2e18)
    with pytest.raises(ValueError, match="budget_flops=3e\\+17 needs at least 2 budgets below it, got 1"):
        study.heldout_check(runs, budget_flops=3e17)


def _seeds(tmp_path, name, noise, n_seeds=4):
    """``n_seeds`` repeats of one synthetic grid (same configurations, independent noise) in one file."""
    law = JOINT.at_experts(1)
    text = "".join(results.write_synthetic(tmp_path / f"{name}{s}.jsonl", {("dense", 1, 1): law}, BUDGETS,
                                           noise=noise, seed=10 + s).read_text() for s in range(n_seeds))
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text)
    return results.read_runs(path)


def test_heldout_seed_interval_is_a_point_without_noise_and_widens_with_it(tmp_path):
    widths = {}
    for name, noise in (("exact", 0.0), ("quiet", 0.005), ("noisy", 0.05)):
        runs = _seeds(tmp_path, name, noise)
        iv = study.heldout_error_interval(runs, average_seeds=True, n_resamples=60, grid=F.TINY_GRID)
        assert iv.low <= iv.point <= iv.high and iv.n_resamples == 60
        widths[name] = iv.high - iv.low
    assert widths["exact"] < 1e-6  # identical seeds: resampling them changes nothing
    assert widths["noisy"] > 3 * widths["quiet"] > 0


def test_study_reports_the_heldout_seed_interval_around_its_own_point(tmp_path):
    runs = _seeds(tmp_path, "r", 0.02)
    path = tmp_path / "r.jsonl"
    s = study.run_study(path, n_resamples=20, grid=F.TINY_GRID, average_seeds=True)
    h = s.groups[0].heldout
    assert h.best_loss_error_interval_percent.point == pytest.approx(h.best_loss_error_percent)
    assert all(e.best_loss_error_interval_percent is None for e in s.groups[0].heldout_earlier)
    assert "seed CI" in study.report_markdown(s)
    js = study.report_json(s)["groups"][0]["heldout"]["best_loss_error_interval_percent"]
    assert js["low"] == h.best_loss_error_interval_percent.low and len(runs) == 4 * len(runs.average_repeats())


class _Steepening:
    """A law whose loss frontier steepens: the Chinchilla loss times exp(-k ln(C / C0)^2), C = 6 N D."""

    def __init__(self, base, k, c0=1e17):
        self.base, self.k, self.c0 = base, k, c0

    def optimal(self, compute_flops):
        return self.base.optimal(compute_flops)

    def loss(self, n, d):
        return self.base.loss(n, d) * np.exp(-self.k * np.log(6.0 * n * d / self.c0) ** 2)


def test_frontier_check_matches_a_chinchilla_law_and_collapses_without_seed_noise(tmp_path):
    runs = _seeds(tmp_path, "exact", 0.0)
    law = JOINT.at_experts(1)
    f = study.frontier_check(runs.average_repeats(), runs, law, average_seeds=True, n_resamples=30)
    true = law.optimal(np.array(f.budgets_flops)).loss
    # each budget's sampled sizes are centred on the law's optimum, so the best run is L*(C) itself
    np.testing.assert_allclose([x.point for x in f.exponents], np.diff(np.log(true)) / np.diff(np.log(BUDGETS)),
                               rtol=1e-9)
    np.testing.assert_allclose([x.point for x in f.exponents], f.law_exponents, rtol=1e-9)
    assert all(x.high - x.low < 1e-12 for x in (*f.exponents, f.overall, f.curvature))
    assert f.law_curvature >= 0 and f.curvature.point == pytest.approx(f.law_curvature, abs=1e-9)


def test_frontier_check_finds_a_steepening_frontier_the_fitted_law_cannot_follow(tmp_path):
    k = 0.02  # curvature d g / d ln C = -2k on top of the base law's (small, >= 0)
    steep = _Steepening(JOINT.at_experts(1), k)
    text = "".join(results.write_synthetic(tmp_path / f"s{s}.jsonl", {("dense", 1, 1): steep}, BUDGETS,
                                           noise=0.003, seed=20 + s).read_text() for s in range(4))
    path = tmp_path / "steep.jsonl"
    path.write_text(text)
    s = study.run_study(path, n_resamples=40, grid=F.TINY_GRID, average_seeds=True)
    f = s.groups[0].frontier
    assert f.curvature.high < 0 and study.bend_text(f.curvature) == "steepens"
    assert f.curvature.point == pytest.approx(-2 * k, abs=0.01)
    assert f.law_curvature >= -1e-9  # the Chinchilla fit's frontier cannot bend down
    assert f.exponents[-1].point < f.exponents[0].point
    md = study.report_markdown(s)
    assert "## Loss frontier" in md and "| steepens |" in md
    js = study.report_json(s)["groups"][0]["frontier"]
    assert js["curvature"]["high"] == f.curvature.high and len(js["exponents"]) == len(BUDGETS) - 1


def test_answer_first_states_the_largest_budget_comparison_from_the_tables(fitted):
    md = study.report_markdown(fitted)
    answer = md[md.index("## Answer"):md.index("## Fitted laws")]
    cmp = fitted.comparisons[0]
    adv, tm, td = cmp.loss_advantage[-1], cmp.tokens_per_param_moe[-1], cmp.tokens_per_param_dense[-1]
    assert f"{cmp.label} vs dense at {cmp.budgets_flops[-1]:.0e} FLOPs" in answer
    assert adv.n_resamples == 15  # the fixture's: too few for a 95% interval, so the line says so
    assert (f"{adv.point:.3f} [{adv.low:.3f}, {adv.high:.3f}] (only 15 resamples) nats "
            "(not resolved: only 15 resamples)") in answer
    assert f"({tm.point / td.point:.2g}x dense's)" in answer
    moe = next(g for g in fitted.groups if g.label == cmp.label)
    assert f"a = {moe.approach3.a.point:.2f} [{moe.approach3.a.low:.2f}, {moe.approach3.a.high:.2f}]" in answer
    for g in fitted.groups:
        assert f"{g.heldout.best_loss_error_percent:+.1f}% ({g.label})" in answer


def test_advantage_verdict_follows_the_interval():
    def iv(lo, hi, n=100):
        return F.Interval(point=(lo + hi) / 2, low=lo, high=hi, level=0.95, n_resamples=n)
    assert study.advantage_text(iv(0.01, 0.2)) == "MoE lower, resolved at 95%"
    assert study.advantage_text(iv(-0.2, -0.01)) == "dense lower, resolved at 95%"
    assert study.advantage_text(iv(-0.01, 0.2)) == "not resolved at 95%"
    # ends interpolated between 10 resamples are no 95% interval: no verdict from them
    assert study.advantage_text(iv(0.01, 0.2, n=10)) == "not resolved: only 10 resamples"
    assert study.bend_text(iv(-0.2, -0.01, n=10)) == "no bend resolved: only 10 resamples"


def test_heldout_seed_interval_every_run_holds_the_observed_minimum_seed_means_resample_it(tmp_path):
    # Seeds differ only at the held-out budget: the fit never changes. Every run: the observed best is held
    # (a resampled minimum of runs could only rise), so the interval is a point. Seed means: the held-out
    # budget's means are resampled, so the interval has width.
    import json

    law = JOINT.at_experts(1)
    files = [results.write_synthetic(tmp_path / f"s{s}.jsonl", {("dense", 1, 1): law}, BUDGETS, noise=0.05,
                                     seed=10 + s).read_text().splitlines() for s in range(4)]
    first = [json.loads(x) for x in files[0]]
    out = []
    for lines in files:
        for ref, line in zip(first, lines):
            r = json.loads(line)
            if r["budget_flops"] < max(BUDGETS):
                r["held_out_loss"] = ref["held_out_loss"]
            out.append(json.dumps(r))
    path = tmp_path / "top_noise.jsonl"
    path.write_text("\n".join(out) + "\n")
    runs = results.read_runs(path)
    every = study.heldout_error_interval(runs, average_seeds=False, n_resamples=30, grid=F.TINY_GRID)
    assert every.high - every.low < 1e-6 and every.low <= every.point + 1e-9 <= every.high + 2e-9
    means = study.heldout_error_interval(runs, average_seeds=True, n_resamples=30, grid=F.TINY_GRID)
    assert means.high - means.low > 0.1 and means.low <= means.point <= means.high


def test_one_run_per_configuration_claims_no_seed_interval_or_resolved_bend(tmp_path):
    # a single seed: resampling seeds changes nothing, so there is no interval to report (it used to print
    # "seed CI +x% to +x%" and a curvature "steepens" from zero-width intervals)
    steep = _Steepening(JOINT.at_experts(1), 0.02)
    path = results.write_synthetic(tmp_path / "one.jsonl", {("dense", 1, 1): steep}, BUDGETS, noise=0.003, seed=20)
    s = study.run_study(path, n_resamples=40, grid=F.TINY_GRID)
    g = s.groups[0]
    assert g.heldout is not None and g.heldout.best_loss_error_interval_percent is None
    assert g.frontier is None
    md = study.report_markdown(s)
    assert "seed CI" not in md.split("*Same law")[0] and "steepens" not in md


def test_frontier_check_of_a_degenerate_law_names_the_law_not_the_runs(tmp_path):
    # N_opt = (alpha A / (beta B))^(1 / (alpha + beta)) (C/6)^(1/2) = 1e3^1000 ...: no float holds it, L* is not
    # finite; the error used to say the runs' loss was not finite
    runs = _seeds(tmp_path, "r", 0.01, n_seeds=2)
    law = laws.ChinchillaLaw(E_irr=3.5, A=1e3, B=1.0, alpha=5e-4, beta=5e-4)
    with pytest.raises(ValueError, match=r"law fitted on all budgets \(alpha=0.0005, beta=0.0005\) has no finite L\*"):
        study.frontier_check(runs.average_repeats(), runs, law, average_seeds=True, n_resamples=5)


def test_frontier_check_of_a_steep_law_reads_its_flat_frontier(tmp_path):
    # beta = 148.6 (a real degenerate fit): C^beta overflowed and the check refused the law; its optimum
    # is D_opt ~ 2 tokens with L* = E_irr, a flat frontier
    runs = _seeds(tmp_path, "r", 0.01, n_seeds=2)
    law = laws.ChinchillaLaw(E_irr=3.5, A=0.72, B=7.9e-6, alpha=2.53, beta=148.6)
    fr = study.frontier_check(runs.average_repeats(), runs, law, average_seeds=True, n_resamples=5)
    assert fr.law_overall == pytest.approx(0.0, abs=1e-12)
    assert all(g == pytest.approx(0.0, abs=1e-12) for g in fr.law_exponents)


def test_markdown_says_how_many_budgets_approach2_used_when_it_skips_some(tmp_path):
    p = tmp_path / "runs.jsonl"
    results.write_synthetic(p, {("dense", 1, 1): JOINT.at_experts(1), ("moe", 8, 1): JOINT.at_experts(8)},
                            BUDGETS, noise=0.0, seed=3)
    rows = [json.loads(line) for line in p.read_text().splitlines()]
    mid = [r for r in rows if r["arch"] == "dense" and r["budget_flops"] == BUDGETS[1]]
    mid.sort(key=lambda r: r["params_active_non_embedding"])
    for r, loss in zip(mid, np.linspace(5.0, 4.0, len(mid))):  # monotone in N: no minimum bracketed
        r["train_loss"] = r["held_out_loss"] = float(loss)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = study.run_study(p, n_resamples=4, grid=F.TINY_GRID)
    md = study.report_markdown(s)
    assert "dense, Approach 2 fitted on 3 of 4 budgets; skipped: budget 3e+17 FLOPs" in md
    assert "moe E=8 k=1, Approach 2 fitted on" not in md  # nothing skipped, no note


def test_a_joint_law_without_intervals_says_why(sweep, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("resamples went nowhere")

    monkeypatch.setattr(F, "bootstrap_joint", fail)
    s = study.run_study(sweep, n_resamples=4, grid=F.TINY_GRID)
    assert s.joint is not None and s.joint_bootstrap is None and s.joint_error is None
    assert "no bootstrap intervals (resamples went nowhere):" in study.report_markdown(s)
    assert study.report_json(s)["joint_bootstrap_error"] == "resamples went nowhere"


def test_moe_without_a_budget_in_common_with_dense_is_reported_not_a_crash(tmp_path):
    dense = results.write_synthetic(tmp_path / "d.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS[:3],
                                    noise=0.002, seed=1)
    moe = results.write_synthetic(tmp_path / "m.jsonl", {("moe", 8, 1): JOINT.at_experts(8)},
                                  tuple(2 * c for c in BUDGETS[:3]), noise=0.002, seed=2)
    p = tmp_path / "runs.jsonl"
    p.write_text(dense.read_text() + moe.read_text())
    s = study.run_study(p, n_resamples=3, grid=F.TINY_GRID)
    assert s.comparisons == () and len(s.uncompared) == 1
    md, js = study.write_outputs(s, tmp_path / "out", plots=False)
    assert "Not compared with dense: moe E=8 k=1: no compute budget in common with dense" in md.read_text()
    assert json.loads(js.read_text())["uncompared"] == list(s.uncompared)


def test_report_json_is_strict_json_with_null_for_missing_numbers(sweep, tmp_path):
    s = study.run_study(sweep, n_resamples=3, grid=F.TINY_GRID)
    g = s.groups[0]
    empty = F.Interval(point=float("nan"), low=float("nan"), high=float("inf"), level=0.95, n_resamples=0)
    s = attrs.evolve(s, groups=(attrs.evolve(g, approach3=attrs.evolve(g.approach3, alpha=empty)),) + s.groups[1:])
    _, js = study.write_outputs(s, tmp_path / "out", plots=False)

    def reject(token):
        raise AssertionError(f"non-JSON token {token} in {js.name}")

    data = json.loads(js.read_text(), parse_constant=reject)
    alpha = data["groups"][0]["approach3"]["alpha"]
    assert alpha["point"] is None and alpha["high"] is None and alpha["n_resamples"] == 0


def test_runs_without_a_budget_field_are_counted_and_the_report_says_so(tmp_path):
    # each such run becomes its own budget (its compute), which made one-run IsoFLOP "curves" without a word
    src = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS)
    lines = [json.loads(line) for line in src.read_text().splitlines()]
    assert all("budget_flops" in r for r in lines)
    p = tmp_path / "nobudget.jsonl"
    p.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "budget_flops"}
                                    | {"flops": r["budget_flops"] * (1 + 1e-3 * i)}) + "\n"
                         for i, r in enumerate(lines)))
    runs = results.read_runs(p)
    assert runs.budget_inferred.all() and runs.budgets.size == len(lines)
    assert not results.read_runs(src).budget_inferred.any()
    assert runs.take([0, 0, 1]).budget_inferred.shape == (3,)
    md = study.report_markdown(study.run_study(p, n_resamples=2, grid=F.TINY_GRID))
    assert f"{len(lines)} of {len(lines)} runs have no budget field" in md
    assert "have no budget field" not in study.report_markdown(study.run_study(src, n_resamples=2, grid=F.TINY_GRID))


def test_excess_error_is_the_whole_loss_error_at_a_zero_floor_and_larger_above_it():
    pred, obs = np.array([2.2, 1.9, 0.5]), np.array([2.0, 2.0, 0.4])
    whole = 100 * (pred / obs - 1)
    np.testing.assert_allclose(study.excess_error_percent(pred, obs, 0.0), whole)
    above = study.excess_error_percent(pred, obs, 0.3)
    assert above[0] == pytest.approx(100 * (1.9 / 1.7 - 1)) and above[2] == pytest.approx(100 * (0.2 / 0.1 - 1))
    assert np.all(np.abs(above) > np.abs(whole))
    # no excess to compare where the observed loss is at or below the floor
    assert np.isnan(study.excess_error_percent(2.2, 2.0, 2.0)) and np.isnan(study.excess_error_percent(2.2, 2.0, 2.5))


def test_heldout_reports_the_best_loss_error_above_the_fitted_floor(fitted):
    for g in fitted.groups:
        h = g.heldout
        assert h.floor_loss > 0.5  # the generating joint law's floor is c = 1.36
        assert h.best_loss_excess_error_percent == pytest.approx(
            100 * ((h.best_loss_predicted - h.floor_loss) / (h.best_loss_observed - h.floor_loss) - 1))
        assert abs(h.best_loss_excess_error_percent) > abs(h.best_loss_error_percent)
        assert "best loss above the fitted floor E" in study.report_markdown(fitted)


def test_heldout_says_when_the_observed_optimum_is_a_vertex_outside_the_sampled_sizes(tmp_path):
    # the largest budget sampled only above its optimum: its parabola's vertex lies below every sampled N
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): JOINT.at_experts(1)}, BUDGETS, noise=0.0)
    runs = results.read_runs(p)
    top = runs.budget_flops == BUDGETS[-1]
    n_top = np.sort(runs.params[top])
    keep = ~top | (runs.params >= n_top[-3])
    h = study.heldout_check(runs.select(keep), grid=F.TINY_GRID)
    assert h.params_opt_observed < n_top[-3]
    assert h.params_opt_observed_from == "parabola (vertex outside the sampled sizes)"
    assert study.heldout_check(runs, grid=F.TINY_GRID).params_opt_observed_from == "parabola"
