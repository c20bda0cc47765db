"""`perfmodel scaling optimal` tables (perfmodel/scaling/optimal.py)."""

import json
import math

import pytest

from perfmodel.scaling import laws, moe_laws, optimal, results


def test_dense_laws_match_their_closed_form():
    (row,) = optimal.optimal_rows(1e21, law="epoch")
    o = laws.chinchilla_epoch().optimal(1e21)
    assert math.isclose(row.params_active, float(o.params)) and math.isclose(row.tokens, float(o.tokens))
    assert math.isclose(6 * row.params_active * row.tokens, 1e21, rel_tol=1e-9)


def test_joint_moe_default_table_and_single_e():
    rows = optimal.optimal_rows(1e20, law="joint-moe")
    assert [r.n_experts for r in rows] == list(optimal.DEFAULT_EXPERTS)
    rows8 = optimal.optimal_rows(1e20, law="joint-moe", experts=8)
    assert [r.n_experts for r in rows8] == [1, 8]
    assert math.isclose(rows8[1].params_active, 990e6, rel_tol=0.02)
    assert rows8[1].params_total == pytest.approx(rows8[1].params_active * (1 + 16) / 3)


def test_fine_grained_active_from_total():
    (row,) = optimal.optimal_rows(1e20, law="fine-grained", experts=8, granularity=4)
    assert math.isclose(row.params_total / row.params_active, moe_laws.FineGrainedMoELaw.total_per_active(8))
    assert math.isclose(6 * row.params_active * row.tokens, 1e20, rel_tol=1e-9)


def test_fitted_recovers_generating_law(tmp_path):
    law = laws.ChinchillaLaw(E_irr=1.1, A=30.0, B=200.0, alpha=0.35, beta=0.3)
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): law}, (1e12, 1e13, 1e14))
    (row,) = optimal.optimal_rows(1e15, law="fitted", results=p)
    assert math.isclose(row.params_active, float(law.optimal(1e15).params), rel_tol=0.02)


def test_errors_and_cli(capsys):
    from perfmodel.cli import main

    with pytest.raises(ValueError, match="needs --results"):
        optimal.optimal_rows(1e21, law="fitted")
    with pytest.raises(ValueError, match="dense law"):
        optimal.optimal_rows(1e21, law="chinchilla", experts=8)
    assert main(["scaling", "optimal", "--compute", "1e21", "--law", "joint-moe", "--experts", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["n_experts"] for r in out] == [1.0, 8.0]
    assert main(["scaling", "optimal", "--compute", "-5"]) == 2
    assert "--compute must be" in capsys.readouterr().err


def test_cli_prints_derived_formula(capsys):
    from perfmodel.cli import main

    assert main(["scaling", "optimal", "--compute", "1e21", "--law", "chinchilla", "--formula"]) == 0
    out = capsys.readouterr().out
    assert "a = beta/(alpha + beta)" in out and "params = (A*C**beta*alpha/(B*beta*c_f**beta))" in out


@pytest.mark.parametrize("law, compute", [("chinchilla", 1.0), ("epoch", 10.0), ("fine-grained", 1e-3)])
def test_a_budget_that_buys_less_than_one_parameter_or_token_is_refused(law, compute):
    # --compute 1 printed N_act 574 m (0.574 parameters) and exited 0
    with pytest.raises(ValueError, match=rf"--compute {compute:g} is too small for --law {law}: .* less than one "
                                         "parameter or token"):
        optimal.optimal_rows(compute, law=law)


def test_dense_laws_warn_outside_chinchillas_runs_and_only_there():
    inside = optimal.optimal_rows(1e21, law="chinchilla")  # 2.2 G parameters, 75 G tokens
    assert not any(n.startswith("extrapolated") for n in optimal.notes("chinchilla", inside))
    for c in (1e15, 1e26):
        (warn,) = [n for n in optimal.notes("chinchilla", optimal.optimal_rows(c, law="chinchilla"))
                   if n.startswith("extrapolated")]
        assert "70 M..16 G parameters on 5 G..500 G tokens" in warn


def test_fitted_law_leaves_out_a_group_scaling_fit_would_skip_and_says_so(tmp_path, capsys):
    # a group with 2 budgets made the whole command fail although `scaling fit` fits the other and skips it
    from perfmodel.cli import main

    law = laws.ChinchillaLaw(E_irr=1.1, A=30.0, B=200.0, alpha=0.35, beta=0.3)
    dense = results.write_synthetic(tmp_path / "d.jsonl", {("dense", 1, 1): law}, (1e12, 1e13, 1e14))
    moe = results.write_synthetic(tmp_path / "m.jsonl", {("moe", 8, 1): law}, (1e12, 1e13))
    p = tmp_path / "r.jsonl"
    p.write_text(dense.read_text() + moe.read_text())
    skipped = []
    (row,) = optimal.optimal_rows(1e15, law="fitted", results=p, skipped=skipped)
    assert row.n_experts == 1 and len(skipped) == 1 and "has 2 compute budget(s)" in skipped[0]
    assert main(["scaling", "optimal", "--compute", "1e15", "--law", "fitted", "--results", str(p)]) == 0
    out, err = capsys.readouterr()
    assert "fitted dense" in out and "skipped group: " in err and "has 2 compute budget(s)" in err
    # asked for by --experts, the skipped group is an error, not a table of the others
    with pytest.raises(ValueError, match="no group can be fitted at E=8: .* has 2 compute budget"):
        optimal.optimal_rows(1e15, law="fitted", results=p, experts=8)


@pytest.mark.parametrize("law, why", [("fine-grained", "less than one parameter"), ("joint-moe", "beyond the float range")])
def test_an_expert_count_that_breaks_the_allocation_is_blamed_on_experts(capsys, law, why):
    # fine-grained blamed --compute 1e+21, which is fine at E=1; joint-moe printed N_total inf and exited 0
    from perfmodel.cli import main

    with pytest.raises(ValueError, match=rf"--experts is too large for --law {law} at --compute 1e\+21, got "
                                         rf"--experts=1e\+300: .*{why}"):
        optimal.optimal_rows(1e21, law=law, experts=1e300)
    assert main(["scaling", "optimal", "--compute", "1e21", "--law", law, "--experts", "1e300", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "got --experts=1e+300" in err and "--compute 1e+21 is too small" not in err


def test_joint_moe_experts_is_a_whole_number():
    with pytest.raises(ValueError, match=r"--experts must be a whole number of experts for --law joint-moe, "
                                         r"got --experts=8\.5"):
        optimal.optimal_rows(1e21, law="joint-moe", experts=8.5)


def test_joint_moe_warns_beyond_the_papers_runs_and_only_there():
    inside = optimal.optimal_rows(1e20, law="joint-moe", experts=2)  # 1.73 G and 1.47 G active, 2.45 G total
    assert not any(n.startswith("extrapolated") for n in optimal.notes("joint-moe", inside))
    (warn,) = [n for n in optimal.notes("joint-moe", optimal.optimal_rows(1e300, law="joint-moe"))
               if n.startswith("extrapolated")]
    assert "up to 2.7 G active and 5 G total parameters" in warn and "E = 1, 2, 4, 8, 16, 32, 64" in warn


def test_fitted_law_warns_outside_the_budgets_of_its_runs_and_only_there(tmp_path, capsys):
    # `--law fitted --compute 1e300` printed L* 0.0000 with no word that the fit saw 3e10..3e12 FLOPs
    from perfmodel.cli import main

    law = laws.ChinchillaLaw(E_irr=1.1, A=30.0, B=200.0, alpha=0.35, beta=0.3)
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): law}, (1e12, 1e13, 1e14))
    inside = optimal.optimal_rows(1e13, law="fitted", results=p)
    assert not any(n.startswith("extrapolated") for n in optimal.notes("fitted", inside))
    assert main(["scaling", "optimal", "--compute", "1e20", "--law", "fitted", "--results", str(p)]) == 0
    assert ("extrapolated: fitted dense is fitted to runs at budgets of 1e+12..1e+14 FLOPs (the results file); "
            "C = 1e+20 is outside them") in capsys.readouterr().out
