"""Reading the training sweep's JSONL (perfmodel/scaling/results.py)."""

import json

import numpy as np
import pytest

from perfmodel.scaling import results
from perfmodel.scaling.laws import ChinchillaLaw

LAW = ChinchillaLaw(E_irr=1.0, A=20.0, B=100.0, alpha=0.35, beta=0.3)


def test_synthetic_round_trip(tmp_path):
    p = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): LAW, ("moe", 8, 1): LAW},
                                (1e12, 1e13), per_budget=5)
    runs = results.read_runs(p)
    assert len(runs) == 20
    groups = runs.groups()
    assert list(groups) == ["dense", "moe E=8 k=1"]
    g = groups["dense"]
    np.testing.assert_allclose(g.loss, LAW.loss(g.params, g.tokens))
    np.testing.assert_allclose(g.compute_flops, g.budget_flops)
    assert np.all(groups["moe E=8 k=1"].params_total == 8 * groups["moe E=8 k=1"].params)


def _line(**over):
    row = {"config": {"arch": "dense", "n_experts": 1, "top_k": 1},
           "params": {"active_non_embedding": 1e5, "total": 2e5}, "tokens": 1e7, "budget_flops": 6e12,
           "final_train_loss": 2.0, "final_eval_loss": 2.1}
    row.update(over)
    return json.dumps(row)


def test_missing_and_bad_fields_are_named(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line() + "\n" + _line(final_eval_loss=float("nan")) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:2: non-finite eval loss"):
        results.read_runs(p)
    p.write_text(json.dumps({"tokens": 1e7}) + "\n")
    with pytest.raises(ValueError, match="missing params"):
        results.read_runs(p)
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        results.read_runs(p)
    with pytest.raises(FileNotFoundError):
        results.read_runs(tmp_path / "absent.jsonl")


def test_a_run_recorded_twice_is_named_not_counted_as_another_seed(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line(run_id="a/seed0") + "\n" + _line(run_id="b/seed0") + "\n" + _line(run_id="a/seed0") + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:3: run_id 'a/seed0' is already on line 1"):
        results.read_runs(p)
    p.write_text(_line(run_id="a/seed0", status="running") + "\n" + _line(run_id="a/seed0") + "\n")
    assert len(results.read_runs(p)) == 1  # an unfinished record of the run is skipped, not a repeat


def test_train_loss_and_unfinished_runs(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line() + "\n" + _line(status="running", final_eval_loss=None) + "\n\n")
    runs = results.read_runs(p, loss="train")
    assert len(runs) == 1 and runs.loss[0] == 2.0
    with pytest.raises(ValueError, match="params_key"):
        results.read_runs(p, params_key="nonsense")


def test_reads_the_sweep_record_layout(tmp_path):
    # Keys as written by validation/arith/sweep.py::_record (flat RunResult fields + nested config.model).
    rec = {"run_id": "x/moe-E8k2/C1e+11/D64L2/float32/seed0", "arch": "moe-E8k2", "budget_flops": 1e11,
           "config": {"model": {"d_model": 64, "n_experts": 8, "top_k": 2}, "token_budget": 100},
           "tokens": 2_000_000, "params_total": 300_000, "params_active": 120_000,
           "params_non_embedding": 250_000, "params_active_non_embedding": 70_000,
           "flops_per_token_train": 50_000, "flops_per_token_six_n": 420_000, "flops": 1.0e11,
           "train_loss": 1.5, "held_out_loss": 1.6, "curve_held_out_loss": [3.0, 2.0, 1.6], "seed": 0}
    p = tmp_path / "arith.jsonl"
    p.write_text(json.dumps(rec) + "\n" + json.dumps(rec | {"arch": "dense", "run_id": "x/dense/C1e+11/D64L2/float32/seed0",
                                                     "config": {"model": {"n_experts": 1, "top_k": 1}}}) + "\n")
    runs = results.read_runs(p)
    assert list(runs.arch) == ["moe", "dense"]
    assert runs.n_experts[0] == 8 and runs.top_k[0] == 2
    assert runs.params[0] == 70_000 and runs.params_total[0] == 300_000
    assert runs.loss[0] == 1.6 and runs.compute_flops[0] == 1e11 and runs.tokens[0] == 2e6
    assert list(runs.groups()) == ["dense", "moe E=8 k=2"]
    assert results.read_runs(p, loss="train").loss[0] == 1.5


def test_average_repeats_means_seeds(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join([_line(seed=0, final_eval_loss=2.0), _line(seed=1, final_eval_loss=3.0),
                            _line(seed=0, final_eval_loss=5.0, params={"active_non_embedding": 2e5})]) + "\n")
    runs = results.read_runs(p)
    avg = runs.average_repeats()
    assert len(runs) == 3 and len(avg) == 2  # key (arch, E, k, budget, N)
    assert list(avg.loss) == [2.5, 5.0]


def test_an_moe_tag_gives_the_expert_count_and_a_moe_record_without_one_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    bare = {"params": {"active_non_embedding": 1e5}, "tokens": 1e7, "budget_flops": 6e12, "final_eval_loss": 2.1}
    p.write_text(json.dumps({**bare, "arch": "moe-E8k2"}) + "\n" + json.dumps({**bare, "arch": "dense"}) + "\n")
    runs = results.read_runs(p)
    assert list(runs.labels) == ["moe E=8 k=2", "dense"]  # not silently counted as dense
    p.write_text(json.dumps({**bare, "arch": "moe"}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: arch 'moe' is MoE but the record has no expert count"):
        results.read_runs(p)
    p.write_text(json.dumps({**bare, "arch": "moe-E8k2", "n_experts": 4}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: n_experts=4 disagrees with arch 'moe-E8k2'"):
        results.read_runs(p)


@pytest.mark.parametrize("field,value", [("n_experts", float("nan")), ("n_experts", float("inf")),
                                         ("n_experts", 2.5), ("top_k", 0), ("top_k", float("nan"))])
def test_a_bad_expert_count_is_named_with_its_line(tmp_path, field, value):
    p = tmp_path / "r.jsonl"
    row = json.loads(_line())
    row["config"] = {"arch": "moe", "n_experts": 8, "top_k": 2, field: value}
    p.write_text(_line() + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:2: {field} must be a positive integer, got {value!r}"):
        results.read_runs(p)


def test_top_k_above_the_expert_count_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line(config={"arch": "moe", "n_experts": 2, "top_k": 4}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: top_k=4 exceeds n_experts=2"):
        results.read_runs(p)


def test_a_null_field_is_named_null_and_a_later_alias_still_applies(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line(final_eval_loss=None) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: eval is null \(final_eval_loss\)"):
        results.read_runs(p)
    p.write_text(_line(held_out_loss=None) + "\n")  # held_out_loss is looked up before final_eval_loss
    assert results.read_runs(p).loss.tolist() == [2.1]


def test_a_non_finite_total_parameter_count_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(_line(params={"active_non_embedding": 1e5, "total": float("nan")}) + "\n")
    with pytest.raises(ValueError, match=r"r.jsonl:1: params total must be finite and positive, got nan"):
        results.read_runs(p)


def test_a_results_file_that_is_not_text_is_named(tmp_path):
    # was "'utf-8' codec can't decode byte 0xff in position 0", with neither file nor format named
    p = tmp_path / "bin.jsonl"
    p.write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(ValueError, match=r"results file .*bin.jsonl is not UTF-8 text \(byte 0"):
        results.read_runs(p)
