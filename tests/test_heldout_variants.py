"""validation.heldout_variants: variants of N and of fitted widths, chosen on earlier folds (synthetic runs)."""

import json

import numpy as np
import pytest

from perfmodel.scaling import fit as F
from perfmodel.scaling import moe_laws, results
from validation import heldout_variants as H

BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)


def _runs_with_bent_edges(tmp_path, factor=1.3):
    """Chinchilla-law runs, 7 widths per budget, whose 2 outermost widths on each side have ``factor`` x the loss."""
    law = moe_laws.JointMoELaw().at_experts(1)
    path = results.write_synthetic(tmp_path / "runs.jsonl", {("dense", 1, 1): law}, BUDGETS, per_budget=7,
                                   embedding_params=1e6)
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    for c in BUDGETS:
        at = [r for r in lines if r["budget_flops"] == c]
        ns = sorted(r["params_active_non_embedding"] for r in at)
        for r in at:
            if r["params_active_non_embedding"] in ns[:2] + ns[-2:]:
                r["held_out_loss"] *= factor
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return path


def test_window_keeps_the_widths_nearest_the_best_and_leaves_other_budgets(tmp_path):
    path = _runs_with_bent_edges(tmp_path)
    runs = results.read_runs(path)
    keep = H.window_mask(runs, 1e18, 3)
    at = runs.budget_flops == 1e18
    assert keep[~at].all()
    kept = np.sort(runs.params[at & keep])
    middle = np.sort(runs.params[at])[2:5]  # the law's optimum is the middle width of 7
    assert np.allclose(kept, middle)
    with pytest.raises(ValueError, match="window=1"):
        H.window_mask(runs, 1e18, 1)


def test_the_variant_that_extrapolates_on_earlier_folds_is_selected_and_judged_on_the_largest(tmp_path):
    path = _runs_with_bent_edges(tmp_path)
    r = H.run(path, grid=F.TINY_GRID, progress=lambda m: None)
    assert {s.budget_flops for s in r.earlier} == {1e18, 3e18}  # never the largest
    assert {s.budget_flops for s in r.final} == {1e19}
    assert r.selected.window == H.DEFAULT_WINDOW  # the bent edges spoil the all-widths fit only
    assert r.selected.params_key == "active_non_embedding"  # the law was drawn in non-embedding N
    sel = r.final_errors(r.selected)
    assert len(sel) == 2 and max(abs(s.best_loss_error_percent) for s in sel) < 1.0
    allw = r.final_errors(H.Variant(params_key="active_non_embedding", window=None))
    assert min(abs(s.best_loss_error_percent) for s in allw) > 2.0
    md = H.report_markdown(r, "cmd")
    assert "**(selected)**" in md and "within the 5% target" in md
    js = H.report_json(r)
    assert js["selected"] == {"params_key": "active_non_embedding", "window": 3}


def test_too_few_budgets_is_a_clear_error(tmp_path):
    path = results.write_synthetic(tmp_path / "r.jsonl", {("dense", 1, 1): moe_laws.JointMoELaw().at_experts(1)}, BUDGETS[:3])
    with pytest.raises(ValueError, match="at least 4 compute budgets, got 3"):
        H.run(path, grid=F.TINY_GRID, progress=lambda m: None)
