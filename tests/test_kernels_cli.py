"""``perfmodel kernel-table`` and the VMEM-boundary choice of ``perfmodel validate kernel-aot`` (no compiles)."""

from __future__ import annotations

import re

import pytest

from kernels.fused_moe import fused_moe_spec
from perfmodel.cli import main
from perfmodel.hardware import get_chip
from validation import kernel_aot


def test_kernel_table_prints_fused_and_ragged_times(capsys, tmp_path):
    out = tmp_path / "table.md"
    rc = main(["kernel-table", "--chips", "v5e", "--tokens-per-expert", "32", "--D", "512", "--ratios", "2",
               "--out", str(out)])
    assert rc == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| v5e |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    fused_us, ragged_us, speedup = float(cells[5]), float(cells[6]), float(cells[7])
    assert fused_us > 0 and ragged_us > 0 and abs(speedup - ragged_us / fused_us) < 0.01


def test_kernel_table_on_stdout_is_one_markdown_table(capsys):
    """Without --out, stdout is the table (``perfmodel kernel-table > t.md``): each row once, after the header."""
    rc = main(["kernel-table", "--chips", "v5e", "--tokens-per-expert", "32", "--D", "512", "--ratios", "2"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| v5e |")]
    header = [i for i, line in enumerate(lines) if line.startswith("| chip |")]
    assert len(rows) == 1 and len(header) == 1 and header[0] < rows[0]


def test_kernel_table_rows_keep_the_whole_reason_and_an_all_na_table_exits_1(capsys):
    # reasons were cut at 80 characters ("... dtype=bf16, GL"), and a table of only n/a rows exited 0
    args = ["kernel-table", "--chips", "v5e", "--tokens-per-expert", "4096", "--ratios", "8"]
    rc = main([*args, "--D", "65536"])
    out, err = capsys.readouterr()
    (row,) = [line for line in out.splitlines() if line.startswith("| v5e |")]
    assert rc == 1 and "no row has a prediction (1 of 1 n/a" in err
    assert "needs 212.1 MiB of the 128 MiB per TensorCore" in row and row.count("|") == 10
    assert main([*args, "--D", "512,65536"]) == 0  # one row answered: the table is the answer, n/a rows included


def test_boundary_tiles_straddle_the_chip_vmem():
    T, D, F, G, glu = kernel_aot.BOUNDARY_SHAPE
    for chip in ("v4", "v5p", "tpu7x"):
        fits, over = kernel_aot.boundary_tiles(chip, T=T, D=D, F=F, G=G, glu=glu, dtype="bf16")
        size = lambda t: fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=t, glu=glu, chip=chip).vmem_bytes
        cap = get_chip(chip).vmem_bytes_per_core
        assert size(fits) <= cap < size(over)


@pytest.mark.parametrize("argv, match", [
    (["--dtypes", "xx"], r"--dtypes: unknown dtype 'xx'"),
    (["--dtypes", "fp8"], r"--dtypes: chip 'v5e' has no fp8"),
    (["--dtypes", ","], r"--dtypes must be a comma-separated list of dtypes, got dtypes=','"),
    (["--dtypes", "bf16,bfloat16"], r"--dtypes lists a dtype more than once"),
    (["--chips", "a100"], r"--chips: .*needs a TPU.*'a100'"),
    (["--chips", "v5e,nope"], r"--chips: unknown chip 'nope'"),
])
def test_kernel_aot_refuses_bad_chips_and_dtypes_before_compiling(argv, match, capsys, tmp_path, monkeypatch):
    """Each used to become outcome "no_tiles" for every shape, counted as agreement: "4/4", exit 0."""
    monkeypatch.setattr(kernel_aot, "compile_one", lambda *a, **k: pytest.fail("compiled"))
    rc = main(["validate", "kernel-aot", "--chips", "v5e", "--no-boundary", "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_kernel_aot_run_refuses_a_pair_default_tiles_refuses():
    with pytest.raises(ValueError, match="no fp8 matmul peak"):
        kernel_aot.run(chips=("v5e",), dtypes=("fp8",), boundary=False, log=lambda s: None)
    with pytest.raises(ValueError, match="needs a TPU"):
        kernel_aot.run(chips=("a100",), boundary=False, log=lambda s: None)


_ONE_SHAPE = ["--tokens-per-expert", "32", "--D", "512", "--ratios", "2"]


@pytest.mark.parametrize("chips", ["v5e,v5e", "v5e,v5litepod"])
def test_kernel_table_lists_each_chip_once(chips, capsys):
    """Chips are canonicalised like plot roofline's: v5e,v5e printed every v5e row twice."""
    assert main(["kernel-table", "--chips", chips, *_ONE_SHAPE]) == 0
    assert sum(line.startswith("| v5e |") for line in capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize("option, value, match", [
    ("--D", "512,512", "--D lists a width more than once, got D='512,512'"),
    ("--tokens-per-expert", "32,32", "--tokens-per-expert lists a token count more than once"),
    ("--ratios", "2,2", "--ratios lists a ratio more than once"),
    ("--chips", "v5e,a100", "--chips: .*needs a TPU.*'a100'"),  # was a row of n/a per shape
])
def test_kernel_table_refuses_repeated_values_and_non_tpus(option, value, match, capsys):
    argv = ["kernel-table", "--chips", "v5e", *_ONE_SHAPE, option, value]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(match, captured.err) and "| v5e |" not in captured.out
