"""Timings validation: parsing tokamax caches, predicting rows, re-timing and fitting constants."""

import json
import pathlib
import re

import attrs
import numpy as np
import pytest

from perfmodel.tiling.params import DEFAULT, FITTED, TimingParams
from validation import timings as V

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokamax" / "tpu_v5_lite"
PALLAS = DATA / "pallas_mosaic_tpu_ragged_dot.json"
needs_data = pytest.mark.skipif(not PALLAS.exists(), reason="shared tokamax data not present")


def _key(lhs, rhs, gs, dn, res=False):
    return json.dumps({"lhs": lhs, "rhs": rhs, "group_sizes": gs,
                       "ragged_dot_dimension_numbers": {"dot_dimension_numbers": [dn, [[], []]],
                                                        "lhs_ragged_dimensions": [0], "rhs_group_dimensions": [0]},
                       "return_residuals": res})


def test_parse_array():
    assert V.parse_array("bf16[4096,1024]") == ("bf16", (4096, 1024))
    with pytest.raises(ValueError, match="text"):
        V.parse_array("bf16(4096)")


@pytest.mark.parametrize("rhs,dn,kind,n", [
    ("bf16[8,512,768]", [[1], [1]], "forward", 768),
    ("bf16[8,768,512]", [[1], [2]], "dlhs", 768),
    ("bf16[1024,768]", [[0], [0]], "drhs", 768),
])
def test_parse_call_kinds(rhs, dn, kind, n):
    c = V.parse_call(_key("bf16[1024,512]", rhs, [128] * 8, dn))
    assert (c.kind, c.m, c.k, c.n, c.num_groups) == (kind, 1024, 512, n, 8)


def test_random_split_becomes_even_split():
    c = V.parse_call(_key("bf16[1000,512]", "bf16[3,512,256]", {"num_groups": 3, "total_size": 1000}, [[1], [1]]))
    assert c.random_split and sum(c.group_sizes) == 1000 and max(c.group_sizes) - min(c.group_sizes) <= 1


def test_unknown_dimension_numbers_rejected():
    with pytest.raises(ValueError, match="dimension numbers"):
        V.parse_call(_key("bf16[8,8]", "bf16[8,8]", [8], [[0], [1]]))


def test_unknown_file_name_rejected(tmp_path):
    p = tmp_path / "other.json"
    p.write_text("{}")
    with pytest.raises(ValueError, match="other.json"):
        V.load_rows(p)


@needs_data
def test_rows_are_medians_of_samples():
    data = json.loads(PALLAS.read_text())
    rows = V.load_rows(PALLAS)
    assert rows and all(r.implementation == "tokamax_pallas" for r in rows)
    r = rows[0]
    (samples,) = [v["evaluation_times_ms"] for ck, v in data[r.call.key].items()
                  if tuple(sorted(json.loads(ck).items())) == r.config]
    assert r.measured_s == pytest.approx(np.median(samples) * 1e-3)


@needs_data
def test_tokamax_forward_within_target_with_fitted_constants():
    rows = [r for r in V.load_rows(PALLAS) if r.call.kind == "forward" and not r.call.return_residuals]
    results = V.retimed_results(V.evaluate(rows, "v5e"), FITTED)
    (s,) = [s for s in V.summarize(results) if s.kind == "forward"]
    assert s.median_abs_err <= 0.15


@needs_data
def test_retiming_equals_fresh_prediction():
    rows = V.load_rows(PALLAS)[:4]
    base = V.evaluate(rows, "v5e", DEFAULT)
    fresh = V.evaluate(rows, "v5e", FITTED)
    for r, f in zip(V.retimed_results(base, FITTED), fresh):
        assert r.predicted_s == pytest.approx(f.predicted_s, rel=1e-12)


@needs_data
def test_fit_recovers_constants_from_synthetic_measurements():
    true = TimingParams(mxu_fill_rows=20.0, vpu_ops_per_cycle=300.0,
                        grid_step_overhead_s=0.5e-6)
    rows = [r for r in V.load_rows(PALLAS) if r.call.kind in ("forward", "dlhs")]
    base = V.evaluate(rows, "v5e")
    synthetic = [attrs.evolve(res, row=attrs.evolve(res.row, measured_s=res.pred.retimed(true).time_s))
                 for res in base]
    fitted, loss = V.fit_params(synthetic, "v5e")
    assert loss < 1e-3
    after = V.retimed_results(synthetic, fitted)
    assert max(abs(a.ratio - 1) for a in after) < 0.02


@needs_data
def test_cli_writes_reports(tmp_path):
    from perfmodel.cli import main

    rc = main(["validate", "timings", str(PALLAS), "--chip", "v5e", "--out", str(tmp_path), "--no-compile"])
    assert rc == 0
    report = json.loads((tmp_path / "timings_v5e.json").read_text())
    assert report["chip"] == "v5e" and report["rows"]
    assert (tmp_path / "timings_v5e.md").read_text().startswith("# Predicted vs measured")


def test_cli_bad_chip_is_an_error(capsys):
    from perfmodel.cli import main

    assert main(["validate", "timings", str(PALLAS), "--chip", "nochip"]) == 2
    assert "nochip" in capsys.readouterr().err


def test_a_file_given_twice_is_refused_naming_it(tmp_path):
    """The same folder twice (or a folder and a file in it) used to double every row."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "ragged_dot.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(d / "ragged_dot.json")
    assert V.expand_paths([d]) == [d / "ragged_dot.json"]
    for paths in ([d, d], [d, d / "ragged_dot.json"], [d / "ragged_dot.json", tmp_path / "link.json"]):
        with pytest.raises(ValueError, match=r"ragged_dot.json' is given twice \(by "):
            V.expand_paths(paths)


def test_cli_refuses_a_folder_given_twice(capsys, tmp_path):
    from perfmodel.cli import main

    d = tmp_path / "d"
    d.mkdir()
    key = _key("bf16[1024,512]", "bf16[8,512,768]", [128] * 8, [[1], [1]])
    cfg = json.dumps({"tile_m": 128, "tile_k": 512, "tile_n": 256})
    (d / "pallas_mosaic_tpu_ragged_dot.json").write_text(json.dumps({key: {cfg: {"evaluation_times_ms": [0.1]}}}))
    assert len(V.load_rows(d / "pallas_mosaic_tpu_ragged_dot.json")) == 1
    assert main(["validate", "timings", str(d), str(d), "--chip", "v5e", "--no-compile",
                 "--out", str(tmp_path / "o")]) == 2
    assert "is given twice" in capsys.readouterr().err


_FWD = _key("bf16[1024,512]", "bf16[8,512,768]", [128] * 8, [[1], [1]])
_TILES = json.dumps({"tile_m": 128, "tile_k": 512, "tile_n": 256})


def _cache(tmp_path, configs, name="ragged_dot.json", key=_FWD):
    p = tmp_path / name
    p.write_text(json.dumps({key: configs}))
    return p


@pytest.mark.parametrize("configs,name,message", [
    ({"1": {"evaluation_times_ms": [0.1]}}, "ragged_dot.json", "'1': the config key: expected a JSON object, got int"),
    ({"notjson": {"evaluation_times_ms": [0.1]}}, "ragged_dot.json", "'notjson': the config key: not valid JSON"),
    ({"{}": {"evaluation_times_ms": ["a", "b"]}}, "ragged_dot.json", r"evaluation_times_ms .*, got \['a', 'b'\]"),
    ({"{}": {"evaluation_times_ms": [0.0]}}, "ragged_dot.json", r"evaluation_times_ms .*, got \[0.0\]"),
    ({"{}": {"evaluation_times_ms": [-1, -2]}}, "ragged_dot.json", r"evaluation_times_ms .*, got \[-1, -2\]"),
    ({"{}": {"evaluation_times_ms": 5}}, "ragged_dot.json", "evaluation_times_ms .*, got 5"),
    ({json.dumps({"tile_k": 512, "tile_n": 256}): {"evaluation_times_ms": [0.1]}},
     "pallas_mosaic_tpu_ragged_dot.json", "tile_m must be a positive integer, got tile_m=None"),
])
def test_a_malformed_config_names_file_entry_and_field(tmp_path, configs, name, message):
    """These used to be tracebacks (AttributeError, numpy TypeError, ZeroDivisionError), a message naming
    nothing, or a silent report of negative/NaN measured times."""
    p = _cache(tmp_path, configs, name)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(p))}: entry 1 '{{\"lhs\".*'\.\.\., config .*{message}"):
        V.load_rows(p)


def test_configs_without_a_finite_time_give_no_row(tmp_path):
    """Not timed (no or empty samples) or a failed measurement (inf, nan): no row, as for a call with no
    configs; the timed config beside them still gives its row. A NaN used to be reported as a nan% error."""
    configs = {json.dumps({"a": i}): v for i, v in enumerate(
        [{}, {"evaluation_times_ms": []}, {"evaluation_times_ms": [float("inf")]},
         {"evaluation_times_ms": [0.1, float("nan")]}, {"evaluation_times_ms": [0.1, 0.3, 0.2]}])}
    (row,) = V.load_rows(_cache(tmp_path, configs))
    assert row.config == (("a", 4),) and row.measured_s == pytest.approx(0.2e-3)


def test_a_non_utf8_file_is_named(tmp_path):
    p = tmp_path / "ragged_dot.json"
    p.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(p))}: not UTF-8 text"):
        V.load_rows(p)


def test_a_call_the_model_refuses_names_file_and_entry(tmp_path):
    """``bf16[0,512]`` parses but m=0 is refused when predicting: the message used to name neither."""
    key = _key("bf16[0,512]", "bf16[8,512,768]", [0] * 8, [[1], [1]])
    rows = V.load_rows(_cache(tmp_path, {"{}": {"evaluation_times_ms": [0.1]}}, key=key))
    p = re.escape(str(tmp_path / "ragged_dot.json"))
    with pytest.raises(ValueError, match=rf"^{p}: entry 1 .*config '{{}}': m must be a positive integer, got m=0"):
        V.evaluate(rows, "v5e", allow_compile=False)


def test_cli_fit_on_one_call_skips_the_held_out_check_saying_why(capsys, tmp_path):
    """It used to print the fitted constants, then fail with 'no forward/dlhs rows to fit on'."""
    from perfmodel.cli import main

    d = tmp_path / "d"
    d.mkdir()
    _cache(d, {"{}": {"evaluation_times_ms": [0.1]}})
    assert main(["validate", "timings", str(d), "--chip", "v5e", "--no-compile", "--fit",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "held-out check skipped: cross-validation (2-fold by call) needs forward/dlhs rows without residuals " \
           "from at least 2 calls in different folds, got 1 such row(s) from 1 call(s)" in out
    assert json.loads((tmp_path / "o" / "timings_v5e.json").read_text())["summary_held_out"] is None
