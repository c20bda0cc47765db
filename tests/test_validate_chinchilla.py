"""Epoch AI's Chinchilla refit reproduced (validation/chinchilla.py, `perfmodel validate chinchilla`)."""

import json

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
    assert "all targets met" in (tmp_path / "chinchilla_refit.md").read_text()
    assert "alpha" in capsys.readouterr().out


def test_missing_data_dir_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("PERFMODEL_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PERFMODEL_SHARED_DATA"):
        V.data_path()
