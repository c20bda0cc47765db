"""Epoch AI's Chinchilla refit reproduced (validation/chinchilla.py, `perfmodel validate chinchilla`)."""

import json

import numpy as np
import pytest

from validation import chinchilla as V

try:
    V.data_path()
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False

needs_data = pytest.mark.skipif(not HAVE_DATA, reason="../shared/data/chinchilla_epoch_svg_extracted.csv absent")


@needs_data
def test_protocol_drops_five_highest_losses():
    p = V.load_points()
    assert p.n_read == 245 and p.loss.size == 240
    full = V.load_points(drop_highest=0)
    assert p.loss.max() <= sorted(full.loss)[-6]


@needs_data
def test_refit_reproduces_epoch_within_their_intervals():
    r = V.refit(n_resamples=20)
    checks = {c.name: c for c in r.checks}
    lo, hi = V.EPOCH_CI95["alpha"]
    assert lo <= checks["alpha"].ours.point <= hi
    lo, hi = V.EPOCH_CI95["beta"]
    assert lo <= checks["beta"].ours.point <= hi
    assert abs(checks["E_irr"].ours.point - V.EPOCH_ESTIMATES["E_irr"][0]) <= V.E_TOLERANCE
    assert r.ok
    assert r.bootstrap.alpha.n_resamples == 20
    assert r.bootstrap.alpha.low <= r.bootstrap.alpha.point <= r.bootstrap.alpha.high


@needs_data
def test_cli_writes_reports(tmp_path, capsys):
    from perfmodel.cli import main

    rc = main(["validate", "chinchilla", "--resamples", "5", "--grid", "tiny", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "chinchilla_refit.json").read_text())
    assert data["ok"] and data["n_fitted"] == 240
    md = (tmp_path / "chinchilla_refit.md").read_text()
    assert "all targets met" in md and "Held-out check on Chinchilla's own runs" in md
    assert [h["cut_flops"] for h in data["heldout"]] == list(V.HELDOUT_CUTS_FLOPS)
    png = tmp_path / "chinchilla_heldout.png"  # the held-out errors, referenced by the markdown
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".svg").stat().st_size > 0
    assert "](chinchilla_heldout.png)" in md
    assert "alpha" in capsys.readouterr().out


def test_missing_data_dir_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFMODEL_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PERFMODEL_SHARED_DATA"):
        V.data_path()


@needs_data
def test_heldout_cut_fits_below_and_judges_at_or_above_it():
    p = V.load_points()
    h = V.heldout_cut(p, 1e21)
    above = p.compute_flops >= 1e21
    assert (h.n_fitted, h.n_heldout) == (int((~above).sum()), int(above.sum()))
    assert h.n_fitted + h.n_heldout == p.loss.size
    # the lowest held-out point, predicted by the law fitted below the cut
    i = np.argmin(np.where(above, p.loss, np.inf))
    assert (h.lowest_observed, h.lowest_compute_flops) == (p.loss[i], p.compute_flops[i])
    assert h.lowest_predicted == pytest.approx(float(h.law.loss(p.params[i], p.tokens[i])))
    assert h.lowest_error_percent == pytest.approx(100 * (h.lowest_predicted / h.lowest_observed - 1))
    # Chinchilla's floor is most of the loss: the excess error is the larger one
    assert h.law.E_irr > 1.5
    assert abs(h.lowest_excess_error_percent) > 3 * abs(h.lowest_error_percent)
    assert h.loss_max_abs_percent >= h.loss_mape_percent


@needs_data
def test_heldout_cut_that_leaves_nothing_is_an_error():
    p = V.load_points()
    with pytest.raises(ValueError, match=r"cut_flops=1e\+30 leaves 240 points to fit and 0 to predict"):
        V.heldout_cut(p, 1e30)
    with pytest.raises(ValueError, match=r"cut_flops=1 leaves 0 points"):
        V.heldout_cut(p, 1.0)
