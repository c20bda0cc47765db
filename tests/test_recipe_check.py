"""validation.recipe_check: lr-sensitivity comparison on synthetic sweep records (nothing trained)."""

import json

import pytest

from perfmodel.scaling import fit as F
from perfmodel.scaling import moe_laws, results
from validation import recipe_check as R

BUDGETS = (1e17, 3e17, 1e18, 3e18)


def _tag(src, dst, *, scale, factor_by_budget, seed=0):
    """Copy synthetic records as if run at ``lr x scale``: loss multiplied per budget, run id tagged."""
    out = []
    for line in src.read_text().splitlines():
        r = json.loads(line)
        r["seed"] = seed
        r["run_id"] = f"x/{r['arch']}/C{r['budget_flops']:.0e}/N{r['params_active_non_embedding']:.0f}" + (
            f"/lr_x{scale:g}" if scale != 1 else "")
        f = factor_by_budget[r["budget_flops"]]
        r["held_out_loss"] *= f
        r["train_loss"] *= f
        out.append(json.dumps(r))
    with dst.open("a") as fh:
        fh.write("\n".join(out) + "\n")


def test_lr_scale_from_run_id():
    assert R.lr_scale_of({"run_id": "add3/dense/C1e+11/D8L2/float32/seed0/lr_x0.5"}) == 0.5
    assert R.lr_scale_of({"run_id": "add3/dense/C1e+11/D8L2/float32/seed0"}) == 1.0


def test_undertuned_small_budgets_show_as_tuning_gain_and_fix_the_heldout(tmp_path):
    law = moe_laws.JointMoELaw().at_experts(1)
    clean = results.write_synthetic(tmp_path / "clean.jsonl", {("dense", 1, 1): law}, BUDGETS)
    # The recipe's lr is 10% too bad at the three small budgets, right at the largest; lr x2 fixes them.
    bad = {c: (1.1 if c < BUDGETS[-1] else 1.0) for c in BUDGETS}
    base, lr = tmp_path / "base.jsonl", tmp_path / "lr.jsonl"
    _tag(clean, base, scale=1, factor_by_budget=bad)
    _tag(clean, lr, scale=0.5, factor_by_budget={c: 1.3 for c in BUDGETS})
    _tag(clean, lr, scale=2, factor_by_budget={c: 1.0 for c in BUDGETS})
    r = R.run(base, lr, grid=F.TINY_GRID, n_resamples=5)
    (g,) = r.groups
    assert [round(b.gain_percent, 1) for b in g.budgets] == pytest.approx([9.1, 9.1, 9.1, 0.0], abs=0.05)
    assert abs(g.heldout_tuned.best_loss_error_percent) < 1 < abs(g.heldout_x1.best_loss_error_percent)
    a_true = law.beta / (law.alpha + law.beta)
    assert abs(g.law_tuned.a.point - a_true) < 0.03
    md, js = R.write_reports(r, tmp_path, "test")
    assert "tuning gain" in md.read_text() and json.loads(js.read_text())["groups"][0]["label"] == "dense"


def test_no_complete_configuration_is_a_clear_error(tmp_path):
    law = moe_laws.JointMoELaw().at_experts(1)
    clean = results.write_synthetic(tmp_path / "clean.jsonl", {("dense", 1, 1): law}, BUDGETS)
    base, lr = tmp_path / "base.jsonl", tmp_path / "lr.jsonl"
    _tag(clean, base, scale=1, factor_by_budget={c: 1.0 for c in BUDGETS})
    _tag(clean, lr, scale=0.5, factor_by_budget={c: 1.0 for c in BUDGETS})  # no x2 runs
    with pytest.raises(ValueError, match="every lr scale"):
        R.run(base, lr, grid=F.TINY_GRID, n_resamples=5)


def test_several_seeds_pick_lr_per_seed_then_average(tmp_path):
    law = moe_laws.JointMoELaw().at_experts(1)
    clean = results.write_synthetic(tmp_path / "clean.jsonl", {("dense", 1, 1): law}, BUDGETS)
    base, lr = tmp_path / "base.jsonl", tmp_path / "lr.jsonl"
    one = {c: 1.0 for c in BUDGETS}
    # seed 0: x2 is 10% better than x1 everywhere; seed 1: x0.5 is 20% better. Tuned mean = (1/1.1 + 1/1.2) / 2.
    _tag(clean, base, scale=1, factor_by_budget=one, seed=0)
    _tag(clean, base, scale=1, factor_by_budget=one, seed=1)
    _tag(clean, lr, scale=2, factor_by_budget={c: 1 / 1.1 for c in BUDGETS}, seed=0)
    _tag(clean, lr, scale=0.5, factor_by_budget={c: 1.05 for c in BUDGETS}, seed=0)
    _tag(clean, lr, scale=0.5, factor_by_budget={c: 1 / 1.2 for c in BUDGETS}, seed=1)
    _tag(clean, lr, scale=2, factor_by_budget={c: 1.05 for c in BUDGETS}, seed=1)
    (g,) = R.run(base, lr, seeds=(0, 1), grid=F.TINY_GRID, n_resamples=5).groups
    for b in g.budgets:
        assert b.best_loss_tuned / b.best_loss_x1 == pytest.approx((1 / 1.1 + 1 / 1.2) / 2)
        assert dict(b.wins) == {0.5: 7, 1.0: 0, 2.0: 7}  # 7 widths per budget and seed
    # a seed listed twice would weigh seed 0's x2 gain double in the average
    with pytest.raises(ValueError, match=r"seeds must not repeat a seed, got seeds=\(0, 1, 0\)"):
        R.run(base, lr, seeds=(0, 1, 0), grid=F.TINY_GRID, n_resamples=5)


def test_configurations_without_every_lr_are_left_out_and_counted(tmp_path):
    law = moe_laws.JointMoELaw().at_experts(1)
    budgets = BUDGETS + (1e19,)
    clean = results.write_synthetic(tmp_path / "clean.jsonl", {("dense", 1, 1): law}, budgets)
    short = tmp_path / "short.jsonl"  # the lr-scaled runs stop one budget short
    short.write_text("".join(line + "\n" for line in clean.read_text().splitlines()
                             if json.loads(line)["budget_flops"] < 1e19))
    base, lr = tmp_path / "base.jsonl", tmp_path / "lr.jsonl"
    _tag(clean, base, scale=1, factor_by_budget={c: 1.0 for c in budgets})
    for scale in (0.5, 2):
        _tag(short, lr, scale=scale, factor_by_budget={c: 1.0 for c in budgets})
    n_top = sum(json.loads(line)["budget_flops"] == 1e19 for line in clean.read_text().splitlines())
    r = R.run(base, lr, grid=F.TINY_GRID, n_resamples=5)
    assert len(r.missing) == n_top > 0 and all("C=1e+19" in m for m in r.missing)
    assert {b.budget_flops for b in r.groups[0].budgets} == set(BUDGETS)
    md, js = R.write_reports(r, tmp_path, "test")
    assert f"{n_top} dense run(s) at C=1e+19 (seeds 0)" in md.read_text()
    assert json.loads(js.read_text())["missing"] == list(r.missing)
