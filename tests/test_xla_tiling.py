"""perfmodel.xla_tiling: XLA's ragged_dot tiling on TPU, extracted, cached and predicted."""

import math

import pytest

from perfmodel import tpu_compile, xla_tiling
from perfmodel.xla_tiling import (
    RULES, SOURCE_COMPILE, SOURCE_RULE, fallback_tiling, load_table, ragged_dot_tiling, rule_agreement,
    rule_tiles, save_table, shipped_table, xla_vmem_estimate_bytes,
)

needs_libtpu = pytest.mark.skipif(not tpu_compile.libtpu_available(), reason="libtpu not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(xla_tiling, "_MEMO", {})


def _mosaic_entries():
    return [t for t in shipped_table().values() if t.lowering == "mosaic"]


def test_shipped_table_covers_every_tpu_generation():
    chips = {t.chip for t in shipped_table().values()}
    assert set(tpu_compile.TOPOLOGIES) <= chips


def test_shipped_grids_and_metadata_follow_the_tiles():
    # grid = (n tiles, dynamic active row tiles, k tiles); megablox metadata sizes ceil(m/tm) + G - 1 slots.
    for t in _mosaic_entries():
        assert t.grid == (math.ceil(t.n / t.tn), None, math.ceil(t.k / t.tk)), t.key
        assert t.metadata_tile_slots == math.ceil(t.m / t.tm) + t.num_groups - 1, t.key
        assert t.dimension_semantics == ("parallel", "arbitrary", "arbitrary"), t.key
        assert t.lhs_block == (t.tm, t.tk) and t.rhs_block == (1, t.tk, t.tn), t.key


def test_rule_reproduces_every_extracted_tiling():
    report = rule_agreement(shipped_table())
    assert report.total > 0
    assert report.matches == report.total, report.text


def test_chosen_tiles_fit_the_budget():
    for t in _mosaic_entries():
        if t.chip in RULES:
            assert xla_vmem_estimate_bytes(t.tm, t.tk, t.tn, t.dtype) < RULES[t.chip].budget_bytes, t.key


def test_ragged_contracting_and_unaligned_rows_lower_densely():
    assert fallback_tiling("v5e", 4096, 1024, 4096, 8, variant="drhs").lowering == "dense"
    assert rule_tiles("v5e", 100, 1024, 4096, 8) is None


def test_row_tile_is_largest_power_of_two_dividing_m():
    assert rule_tiles("v5e", 24, 1024, 4096, 8)[0] == 8
    assert rule_tiles("v5e", 4096, 1024, 4096, 8)[0] == 128
    assert rule_tiles("v6e", 4096, 1024, 4096, 8)[0] == 256


def test_table_hit_without_libtpu():
    t = next(iter(_mosaic_entries()))
    got = ragged_dot_tiling(t.chip, t.m, t.k, t.n, t.num_groups, t.dtype, variant=t.variant,
                            allow_compile=False)
    assert got == t and got.source == SOURCE_COMPILE


def test_unknown_shape_without_compile_uses_rule():
    got = ragged_dot_tiling("v5e", 4104, 1000, 3000, 7, allow_compile=False)
    assert got.source == SOURCE_RULE
    assert (got.tm, got.tk, got.tn) == rule_tiles("v5e", 4104, 1000, 3000, 7)


def test_table_round_trip(tmp_path):
    tilings = _mosaic_entries()[:3] + [fallback_tiling("v6e", 512, 256, 256, 2, variant="dlhs")]
    save_table(tilings, tmp_path / "t.json")
    assert list(load_table(tmp_path / "t.json").values()) == sorted(tilings, key=lambda t: t.key)


@pytest.mark.parametrize("kwargs, match", [
    (dict(chip="h100"), "chip="), (dict(m=0), "m="), (dict(variant="sideways"), "variant="),
    (dict(num_groups=1.5), "num_groups="),
])
def test_bad_input_is_named(kwargs, match):
    args = dict(chip="v5e", m=256, k=256, n=256, num_groups=2, variant="forward") | kwargs
    with pytest.raises(ValueError, match=match):
        fallback_tiling(args.pop("chip"), args.pop("m"), args.pop("k"), args.pop("n"), args.pop("num_groups"),
                        **args)


def test_missing_table_is_empty_and_a_malformed_one_is_named(tmp_path):
    assert load_table(tmp_path / "none.json") == {}  # a sweep starts from it; no user cache yet
    (tmp_path / "bad.json").write_text("{bad")
    with pytest.raises(ValueError, match="bad.json' is not a tiling table"):
        load_table(tmp_path / "bad.json")


def test_zero_of_zero_calls_is_not_scored_as_zero_percent():
    report = rule_agreement({}, chips=["v5e"])
    assert report.total == 0
    assert "0.0%" not in report.text and "0.0%" not in report.markdown


def _cli_err(argv, capsys, tmp_path):
    from perfmodel.cli import main

    rc = main(["validate", "xla-tiling", "--chips", "v5e", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "o").exists(), err
    return err


@pytest.mark.parametrize("argv, match", [
    (["--table", "/nonexistent.json"], "--table: '/nonexistent.json' does not exist"),
    (["--dtypes", "bf16,xx"], "--dtypes: unknown dtype 'xx'"),
    (["--dtypes", "fp8"], "--dtypes: chip 'v5e' has no fp8"),
    (["--chips", "a100"], "--chips: .*needs a TPU"),
    (["--chips", "tpu7x", "--dtypes", "fp8"], "no extracted tilings of chips=tpu7x dtypes=fp8"),
    (["--dtype-holdout", "xx"], "--dtype-holdout: unknown dtype 'xx'"),
])
def test_cli_refuses_what_would_score_nothing(argv, match, capsys, tmp_path):
    """Each printed a score (0 of 0 as 0.0%, or bf16 alone for bf16,xx) and exited 0."""
    import re

    assert re.search(match, _cli_err(argv, capsys, tmp_path))


def test_cli_names_a_table_that_is_a_folder_or_not_json(capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{bad")
    err = _cli_err(["--table", str(tmp_path)], capsys, tmp_path)
    assert "--table: " in err and "is a folder" in err
    err = _cli_err(["--table", str(tmp_path / "bad.json")], capsys, tmp_path)
    assert "--table: " in err and "bad.json' is not a tiling table" in err


@needs_libtpu
@pytest.mark.tpu_compile
def test_extraction_from_a_real_compile_matches_the_rule():
    t = xla_tiling.extract_ragged_dot_tiling("v5e", 256, 512, 1024, 4)
    assert t.source == SOURCE_COMPILE and t.lowering == "mosaic"
    assert (t.tm, t.tk, t.tn) == rule_tiles("v5e", 256, 512, 1024, 4)
    assert t.grid == (math.ceil(1024 / t.tn), None, math.ceil(512 / t.tk))
    assert t.out_block == (t.tm, t.tn) and t.buffer_count == 2
    assert t.metadata_tile_slots == 256 // t.tm + 4 - 1
    assert t.xla_flops == 2 * 256 * 512 * 1024  # the kernel's CostEstimate: useful FLOPs only


@needs_libtpu
@pytest.mark.tpu_compile
def test_compiled_tiling_is_cached(tmp_path):
    first = ragged_dot_tiling("v6e", 264, 384, 640, 3)
    assert first.source == SOURCE_COMPILE
    assert load_table(xla_tiling.user_cache_path())[first.key] == first
