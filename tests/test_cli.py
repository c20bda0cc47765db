import json
import os

import pytest

from perfmodel.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_chips_table_and_sources(capsys):
    code, out, _ = run(capsys, "chips", "--sources")
    assert code == 0
    for name in ("v4", "v5e", "v5p", "v6e", "tpu7x", "a100", "h100", "h200", "b200"):
        assert name in out
    assert "MISSING SOURCE" not in out
    assert "alternative: 8.1e11" in out


def test_predict_json_matches_the_formula(capsys):
    code, out, _ = run(capsys, "predict", "matmul", "--chip", "v6e", "M=1024", "K=2048", "N=512", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["flops"] == 2 * 1024 * 2048 * 512
    assert d["hbm_bytes"] == 2 * (1024 * 2048 + 2048 * 512 + 1024 * 512)
    assert d["bound"] in ("compute", "memory")


def test_predict_with_options_prints_per_kernel_table(capsys):
    code, out, _ = run(capsys, "predict", "moe_ffn_unfused", "T=512", "D=256", "F=1024", "E=4", "k=2", "glu=true")
    assert code == 0
    assert "per kernel" in out and "gate" in out


@pytest.mark.parametrize("argv, needle", [
    (["predict", "matmul", "--chip", "v9", "M=1", "K=1", "N=1"], "known chips"),
    (["predict", "matmul", "M=0", "K=1", "N=1"], "M=0"),
    (["predict", "matmul", "M=1", "K=1"], "missing"),
    (["predict", "matmul", "--dtype", "fp8", "M=1", "K=1", "N=1"], "fp8"),
    (["predict", "matmul", "M"], "NAME=VALUE"),
    (["predict", "matmul", "M=1", "K=1", "N=1", "=3"], "expected NAME=VALUE, got '=3'"),  # was "unknown argument(s) ;"
    (["predict", "matmul", "M=1", "K=1", "N=1", "q=3"], "set by dtype"),
    (["predict", "matmul", "M=1", "M=2", "K=1", "N=1"], "M given twice"),
    (["predict", "moe_ffn_fused", "T=64", "D=128", "F=256", "E=4", "k=2", "glu=off"], "glu='off'"),
    (["formula", "transformer_layer", "moe=maybe"], "moe='maybe'"),
    # the option the user typed is named (both used to say activation='...')
    (["predict", "activation", "M=8", "F=16", "kind=swish"], "kind must be one of the activations"),
    (["predict", "moe_ffn_fused", "T=64", "D=128", "F=256", "E=4", "k=2", "activation_kind=swish"],
     "got activation_kind='swish'"),
    (["predict", "router", "D=16", "E=4", "T=8", "k=5"], "k must not exceed E"),
    (["predict", "attention", "B=1", "D=1024", "Dh=64", "H=16", "Hkv=5", "T=128"], "Hkv must divide H"),
    # checked as numbers before k <= E and Hkv | H compare them (a string was a numpy traceback, 0 "must divide")
    (["predict", "moe_ffn_fused", "T=64", "D=128", "F=256", "E=4", "k=two"], "k must be a number, got k='two'"),
    (["predict", "attention", "B=1", "D=1024", "Dh=64", "H=16", "Hkv=x", "T=128"], "Hkv must be a number"),
    (["predict", "attention", "B=1", "D=1024", "Dh=64", "H=16", "Hkv=0", "T=128"],
     "Hkv must be a positive integer, got Hkv=0"),
    (["tiling", "gmm", "--impl", "xla", "M=0", "K=128", "N=128", "G=2"], "M must be a positive integer, got M=0"),
    # was handed to libtpu's compiler, which ran for over 10 minutes
    (["tiling", "gmm", "--chip", "v5e", "--impl", "xla", "M=99999999999", "K=2048", "N=768", "G=1"],
     "needs 563 TB of operands, more than v5e's 16 GB HBM"),
    (["tiling", "gmm", "--impl", "xla", "M=256", "K=128", "N=128", "G=2", "glu=true"], "unknown dimension 'glu'"),
    (["tiling", "gmm", "--impl", "xla", "M=256", "K=128", "N=128", "G=2", "M=8"], "M given twice (M=256 and M=8)"),
    (["tiling", "gmm", "--impl", "xla", "M=256", "K=128", "N=128", "G=2", "tm=128"], "uses the tiles XLA picks"),
    (["kernel-table", "--chips", "bogus"], "unknown chip 'bogus'"),
    (["kernel-table", "--tokens-per-expert", "0"], "--tokens-per-expert"),
    (["kernel-table", "--ratios", "32,,64"], "--ratios"),
    (["kernel-table", "--dtype", "f64"], "f64"),
    # every row was 'n/a: no fp8 matmul peak' (exit 1; exit 0 when another chip had fp8)
    (["kernel-table", "--chips", "v5e,v6e", "--dtype", "fp8"], "--dtype: chip 'v5e' has no fp8 matmul peak"),
    (["kernel-table", "--dtype", "bf16,f32"], "--dtype takes one dtype, got dtype='bf16,f32'"),
    # compiled every point for minutes, each an error record: the kernel takes bf16 and f32 only
    (["validate", "kernel-aot", "--chips", "v5e", "--dtypes", "bf16,int8"],
     "--dtypes: the fused kernel takes bf16, f32, got dtypes='bf16,int8'"),
    (["plot", "roofline", "--chips", "v9"], "--chips: unknown chip 'v9'"),
    (["plot", "roofline", "--chips", "a100"], "--chips: the MoE kernels' roofline (Pallas TPU) needs a TPU"),
    # the kernel's BlockSpec check named block_shape=(7, 128), not the tm=7 the user typed
    (["tiling", "gmm", "--impl", "tokamax", "M=1024", "K=512", "N=512", "G=8", "tm=7", "tk=128", "tn=128"],
     "tm=7, tk=128, tn=128 for M=1024, K=512, N=512, G=8 (tokamax forward): operand 'lhs': block dim 0"),
    # --render times nothing: the timing options were silently ignored
    (["validate", "kernel", "--render", "validation/results/kernel_cpu", "--repeats", "-5", "--sweep", "bogus"],
     "--render DIR re-renders a saved run and times nothing; drop --sweep, --repeats"),
    (["train", "sweep", "--budgets", "0"], "--budgets"),
    (["train", "sweep", "--seeds=-1"], "--seeds"),
])
def test_bad_input_is_a_clear_error(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err


@pytest.mark.parametrize("option, value, needle", [
    ("--budgets", "", "--budgets must be comma-separated numbers, got budgets=''"),
    ("--seeds", "", "--seeds must be comma-separated integers, got seeds=''"),
    ("--task", "", "got task=''"),
    ("--budgets", "1e10,1e10", "--budgets lists a budget more than once"),
    ("--seeds", "0,1,0", "--seeds lists a seed more than once"),
])
def test_train_sweep_refuses_empty_or_repeated_lists_before_training(capsys, monkeypatch, tmp_path, option, value,
                                                                     needle):
    # an empty value used to fall back to the study's defaults and start the sweep; a repeat trained runs twice
    from validation.arith import sweep

    def no_training(*args, **kwargs):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(sweep, "run_study", no_training)
    code, _, err = run(capsys, "train", "sweep", "--out", str(tmp_path / "s.jsonl"), f"{option}={value}")
    assert code == 2 and needle in err


def test_formula_pretty_and_latex(capsys):
    code, out, _ = run(capsys, "formula", "moe_ffn_fused", "glu=true", "--kind", "hbm_bytes", "--latex")
    assert code == 0 and "q" in out and "\\" in out


def test_predict_list_shows_every_op(capsys):
    from perfmodel.ops import OPS

    code, out, _ = run(capsys, "predict", "list")
    assert code == 0 and all(name in out for name in OPS)
    matmul = next(line for line in out.splitlines() if line.startswith("matmul "))
    assert matmul.split()[1:4] == ["K", "M", "N"] and " q " not in matmul  # q is refused: it comes from --dtype


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


RUN = {"arch": "dense", "budget_flops": 1e12, "params_active_non_embedding": 1000, "tokens": 1e8, "held_out_loss": 1.5}


@pytest.mark.parametrize("rows, needle", [
    ([[1, 2]], "r.jsonl:1: expected a JSON object"),
    ([RUN, {**RUN, "held_out_loss": -1.0}], "r.jsonl:2: eval loss must be positive"),
    ([RUN, {**RUN, "budget_flops": -3e10}], "r.jsonl:2: budget_flops must be finite and positive"),
    ([RUN, {**RUN, "held_out_loss": True}], "r.jsonl:2: eval loss is not a number: True"),
    ([{**RUN, "tokens": False}], "r.jsonl:1: tokens is not a number: False"),
])
def test_bad_results_file_names_the_line(capsys, tmp_path, rows, needle):
    code, _, err = run(capsys, "scaling", "fit", _jsonl(tmp_path / "r.jsonl", rows), "--out", str(tmp_path / "o"))
    assert code == 2 and needle in err


def test_fitted_optimal_names_missing_experts_and_too_few_budgets(capsys, tmp_path):
    rows = [{**RUN, "budget_flops": c, "params_active_non_embedding": n, "tokens": c / (6 * n),
             "held_out_loss": 1.0 + 30 / n ** 0.3 + 300 / (c / (6 * n)) ** 0.3}
            for c in (1e12, 3e12) for n in (1e3, 3e3, 1e4)]
    path = _jsonl(tmp_path / "two.jsonl", rows)
    code, _, err = run(capsys, "scaling", "optimal", "--compute", "1e21", "--law", "fitted", "--results", path)
    assert code == 2 and "dense has 2 compute budget(s)" in err
    code, _, err = run(capsys, "scaling", "optimal", "--compute", "1e21", "--law", "fitted", "--results", path,
                       "--experts", "8")
    assert code == 2 and "no group with experts=8; the file has E=1" in err


def test_fitted_optimal_whose_fit_fails_is_an_error_not_a_traceback(capsys, tmp_path):
    # loss rising with both N and D: no law with positive exponents fits, and fit_approach3 raises RuntimeError
    rows = [{**RUN, "budget_flops": c, "params_active_non_embedding": n, "tokens": c / (6 * n),
             "held_out_loss": 0.5 * (n / 1e3) ** 0.2 * (c / (6 * n) / 1e3) ** 0.2}
            for c in (1e10, 1e11, 1e12) for n in (1e3, 3e3, 1e4, 3e4, 1e5)]
    path = _jsonl(tmp_path / "rising.jsonl", rows)
    code, _, err = run(capsys, "scaling", "optimal", "--compute", "1e13", "--law", "fitted", "--results", path)
    assert code == 2 and "rising.jsonl: no group can be fitted: dense: Approach 3 converged to non-positive exponents" in err


def test_timings_cache_that_is_not_an_object_is_named(capsys, tmp_path):
    (tmp_path / "ragged_dot.json").write_text("[]")
    code, _, err = run(capsys, "validate", "timings", str(tmp_path), "--chip", "v5e", "--no-compile")
    assert code == 2 and "ragged_dot.json: expected a tokamax autotuning cache" in err


@pytest.mark.parametrize("argv, needle", [
    (["validate", "chinchilla", "--seed=-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["plot", "fusion-map", "--chip", "v5e", "--n", "100000"], "argument --n: must be an integer in [2, 2000]"),
    (["plot", "fusion-map", "--chip", "v5e", "--check", "-3"], "argument --check: must be an integer in [0, 2000]"),
    (["scaling", "time-optimal", "--tokens-per-chip-step", "0"], "argument --tokens-per-chip-step"),
    (["scaling", "time-optimal", "--experts", "1"], "argument --experts: must be an integer >= 2, got 1"),
    # refused by argparse, before the rule scoring (and, with --sweep, minutes of compiles) it used to follow
    (["validate", "xla-tiling", "--holdout", "-1"], "argument --holdout: must be an integer >= 0, got -1"),
    # was "measuring: 0^3 matmul ... median of -1 runs ..." and then an error without the option's name
    (["calibrate", "cpu", "--matmul-n", "0"], "argument --matmul-n: must be an integer >= 1, got 0"),
    (["calibrate", "cpu", "--repeats", "-1"], "argument --repeats: must be an integer >= 1, got -1"),
    (["tiling", "bench", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
])
def test_integer_options_are_range_checked_by_name(capsys, argv, needle):
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    assert done.value.code == 2 and needle in out.err and out.out == ""


def test_tiling_bench_refuses_a_walk_larger_than_memory_before_allocating(capsys, monkeypatch):
    # was a numpy ArrayMemoryError traceback ("Unable to allocate 46.6 GiB") at --steps 100000000000
    from perfmodel import hardware

    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 2**30)
    code, out, err = run(capsys, "tiling", "bench", "--steps", "10000000")
    assert code == 2 and out == ""
    assert "--steps=10000000 (300 bytes per step) needs about 2,861 MiB" in err and "use --steps <= 1,789,569" in err


@pytest.mark.parametrize("law, value", [("joint-moe", "0"), ("fine-grained", "-2"), ("joint-moe", "nan")])
def test_optimal_experts_below_one_is_named_as_the_option(capsys, law, value):
    code, _, err = run(capsys, "scaling", "optimal", "--compute", "1e21", "--law", law, "--experts", value)
    assert code == 2 and "--experts must be a finite number >= 1" in err and f"--experts={float(value)!r}" in err


def test_roofline_plot_with_a_bad_chip_writes_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "plot", "roofline", "--chips", "v4,bogus", "--out", str(tmp_path / "plots"))
    assert code == 2 and "unknown chip 'bogus'" in err
    assert not (tmp_path / "plots").exists()


def test_roofline_plot_places_the_activation_pass_at_its_own_flops(capsys, tmp_path, monkeypatch):
    """The activation kernel has no MXU FLOPs; it was drawn at 1 FLOP (~1e-9 FLOP/B), squashing the plot."""
    import perfmodel.plots
    from perfmodel.ops import ACTIVATIONS

    seen = {}
    monkeypatch.setattr(perfmodel.plots, "roofline_plot", lambda chips, pts, path, **kw: seen.update(
        {p.label: p for p in pts}) or path)
    code, _, _ = run(capsys, "plot", "roofline", "--chips", "v5e", "--tokens", "256", "--D", "256", "--F", "512",
                     "--E", "4", "--k", "1", "--out", str(tmp_path))
    act = seen["act kernel"]
    elements = 256 * 512
    assert code == 0 and act.flops == ACTIVATIONS["gelu"][0] * elements  # gelu without --glu
    assert act.hbm_bytes == 2 * 2 * elements  # reads up, writes h, bf16


def test_plot_dtype_reaches_the_roofline_and_the_fusion_map(capsys, tmp_path, monkeypatch):
    """--dtype int8 drew v5e's bf16 roofline (197 TFLOP/s, not 394) and the map had no --dtype at all."""
    import perfmodel.fusion_map
    import perfmodel.plots

    seen = {}
    monkeypatch.setattr(perfmodel.plots, "roofline_plot", lambda chips, pts, path, **kw: seen.update(kw) or path)
    code, _, _ = run(capsys, "plot", "roofline", "--chips", "v5e", "--tokens", "256", "--D", "256", "--F", "512",
                     "--E", "4", "--dtype", "int8", "--out", str(tmp_path))
    assert code == 0 and seen["dtype"] == "int8"
    real = perfmodel.fusion_map.speedup_map
    monkeypatch.setattr(perfmodel.fusion_map, "speedup_map", lambda *a, **kw: seen.update(map=kw) or real(*a, **kw))
    code, _, _ = run(capsys, "plot", "fusion-map", "--chip", "v5e", "--n", "3", "--dtype", "int8",
                     "--out", str(tmp_path))
    assert code == 0 and seen["map"]["dtype"] == "int8"


@pytest.mark.parametrize("argv, needle", [
    (["--chips", ""], "--chips must be a comma-separated list of chip names, got chips=''"),
    (["--chips", "v5e,,v6e"], "got chips='v5e,,v6e'"),  # an empty item was dropped silently
    (["--chips", "v5e,v99"], "unknown chip 'v99'"),
])
def test_report_refuses_bad_chips_before_any_work(capsys, tmp_path, argv, needle):
    code, _, err = run(capsys, "report", "--out", str(tmp_path / "rep"), *argv)
    assert code == 2 and needle in err and not (tmp_path / "rep").exists()


@pytest.mark.parametrize("argv", [
    ["report"], ["scaling", "fit", "validation/results/arith_full.jsonl"], ["validate", "chinchilla"],
    ["plot", "roofline"], ["validate", "compiler"], ["validate", "kernel-aot"], ["validate", "vmem"],
])
def test_an_out_folder_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, argv):
    """Outputs are written last: a file where the folder should be used to fail after minutes of fitting."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as done:
        main([*argv, "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"argument --out: '{tmp_path / 'f'}' is an existing file, not a folder" in err
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_folder_that_the_parent_refuses_names_out(capsys):
    """/proc passes os.access(W_OK) for root but creates nothing: the error was a bare '[Errno 2] No such file or
    directory: '/proc/nope'' after the work, without naming --out."""
    with pytest.raises(SystemExit) as done:
        main(["plot", "fusion-map", "--out", "/proc/perfmodel-nope"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert "argument --out: '/proc/perfmodel-nope' cannot be created in '/proc': No such file or directory" in err


@pytest.mark.parametrize("argv, needle", [
    (["scaling", "optimal", "--compute", "-1e20"], "got --compute=-1e+20"),
    (["scaling", "optimal", "--compute", "-inf"], "got --compute=-inf"),
    (["scaling", "time-optimal", "--hours", "-1E3"], "got --hours=-1000.0"),
    (["scaling", "optimal", "--compute", "1e21", "--experts", "-8e0"], "got --experts=-8.0"),
])
def test_a_negative_number_in_e_notation_is_a_value_named_in_the_error(capsys, argv, needle):
    """argparse took -1e20 for an option and said only 'argument --compute: expected one argument'."""
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err and "expected one argument" not in err


@pytest.mark.parametrize("argv", [["train", "sweep"], ["kernel-table"]])
def test_an_out_file_that_is_a_folder_is_refused(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--out", str(tmp_path)])
    assert done.value.code == 2 and "is a folder, not a file" in capsys.readouterr().err


def test_bench_predict_runs(capsys):
    # Its random shapes once drew top-k above the expert count, which predict refuses (k <= E).
    from validation.bench_predict import run as bench

    r = bench(n=2000, repeats=1, cli_repeats=1, log=lambda *_: None)
    assert r.n_configs == 2000 and r.vectorised_median_s > 0 and r.cold_cli_median_s > 0


def test_fusion_prints_fractional_rows_per_expert(capsys):
    # 8 rows over 64 experts is 0.125 rows per expert on average; it was rounded to "0 rows per expert"
    code, out, _ = run(capsys, "fusion", "--tokens", "8", "--D", "4096", "--F", "256", "--E", "64")
    assert code == 0
    assert "(0.125 rows per expert on average)" in out


def test_a_time_optimal_plot_that_is_a_folder_is_refused(capsys, tmp_path):
    # the plot's stem took the folder's name: --plot DIR wrote DIR.png and DIR.svg beside the folder
    with pytest.raises(SystemExit) as done:
        main(["scaling", "time-optimal", "--plot", str(tmp_path)])
    assert done.value.code == 2 and "argument --plot:" in capsys.readouterr().err
    assert not tmp_path.with_suffix(".png").exists()


@pytest.mark.parametrize("argv, needle", [
    # options a law does not use were silently ignored (only --experts was refused for dense laws)
    (["--law", "chinchilla", "--granularity", "3"], "--granularity applies to --law fine-grained only"),
    (["--law", "epoch", "--results", "validation/results/arith_full.jsonl"], "--results applies to --law fitted only"),
    (["--law", "fine-grained", "--granularity", "0"], "--granularity must be a finite number >= 1, got --granularity=0.0"),
])
def test_scaling_optimal_refuses_options_its_law_does_not_use(capsys, argv, needle):
    code, out, err = run(capsys, "scaling", "optimal", "--compute", "1e20", *argv)
    assert code == 2 and needle in err and out == ""


def test_scaling_fit_names_a_bad_results_path_and_params(capsys, tmp_path):
    for path, needle in ((tmp_path, "is a folder, not a file"), (tmp_path / "none.jsonl", "does not exist")):
        with pytest.raises(SystemExit) as done:
            main(["scaling", "fit", str(path)])
        assert done.value.code == 2 and f"argument results: '{path}' {needle}" in capsys.readouterr().err
    code, _, err = run(capsys, "scaling", "fit", "validation/results/arith_full.jsonl", "--params", "bogus")
    assert code == 2 and "--params must be one of" in err and "--params='bogus'" in err


def test_time_optimal_names_the_options_when_groups_cannot_be_balanced(capsys):
    code, out, err = run(capsys, "scaling", "time-optimal", "--experts", "1000", "--ffn", "xla-ragged-dot")
    assert code == 2 and out == ""
    assert "(--tokens-per-chip-step)" in err and "(--experts)" in err
    assert "tokens_per_step=16384, n_experts=1000" in err


def test_errors_come_from_the_command_that_ran(capsys):
    # an unknown option printed the top-level usage ('perfmodel [-h] COMMAND ...'), and errors named only the group
    with pytest.raises(SystemExit) as done:
        main(["predict", "matmul", "M=1", "K=1", "N=1", "--chipp", "v5e"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("usage: perfmodel predict ")
    assert "perfmodel predict: error: unrecognized arguments: --chipp v5e" in err
    code, _, err = run(capsys, "scaling", "optimal", "--compute", "-1")
    assert code == 2 and err.startswith("perfmodel scaling optimal: error: --compute")


def test_roofline_plot_files_use_the_catalog_name_of_an_alias(capsys, tmp_path):
    """``--chips trillium`` is v6e: the file is roofline_moe_v6e.png, as fusion-map and the report name theirs."""
    code, out, _ = run(capsys, "plot", "roofline", "--chips", "trillium,v6e", "--tokens", "256", "--D", "256",
                       "--F", "512", "--E", "4", "--out", str(tmp_path))
    assert code == 0 and out.count("wrote") == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["roofline_moe_v6e.png", "roofline_moe_v6e.svg"]


def test_fusion_map_does_not_claim_fusion_wins_beyond_the_map(capsys, tmp_path, monkeypatch):
    """A row where ragged_dot still wins at the largest mapped tokens/expert has no crossover in the map:
    'fusion wins above 16384 tokens/expert' claimed one beyond it."""
    import types

    import numpy as np

    import perfmodel.fusion_map
    import perfmodel.plots

    g = np.array([8.0, 100.0, 16384.0])
    m = types.SimpleNamespace(chip="v6e", f_over_d=np.array([1.0, 2.0, 3.0]), tokens_per_expert=g,
                              last_loss_tokens_per_expert=np.array([np.nan, 100.0, 16384.0]),
                              speedup=np.array([[1.5, 1.5, 1.5], [0.9, 0.9, 1.2], [0.8, 0.9, 0.9]]))
    monkeypatch.setattr(perfmodel.fusion_map, "speedup_map", lambda *a, **kw: m)
    monkeypatch.setattr(perfmodel.plots, "fusion_map_plot", lambda m, path: path)
    code, out, _ = run(capsys, "plot", "fusion-map", "--chip", "v6e", "--n", "3", "--out", str(tmp_path))
    assert code == 0
    assert "F/D=1.00: fusion wins everywhere" in out and "F/D=2.00: fusion wins above 100 tokens/expert" in out
    assert "F/D=3.00: fusion wins" not in out and "F/D=3.00: ragged_dot still wins at 16384" in out
    assert "ragged_dot wins at 5 cells, in 2 of 3 F rows; the last per row at 100 to 16384 tokens/expert" in out


def test_optimal_help_lists_the_experts_the_default_table_shows(capsys):
    import re

    with pytest.raises(SystemExit):
        main(["scaling", "optimal", "-h"])
    helptext = " ".join(capsys.readouterr().out.split())
    listed = re.search(r"default: table over E = ([\d, ]+)\)", helptext)
    assert listed, helptext
    code, out, _ = run(capsys, "scaling", "optimal", "--compute", "1e21", "--law", "joint-moe", "--json")
    shown = [row["n_experts"] for row in json.loads(out)]
    assert code == 0 and shown == [float(e) for e in listed.group(1).split(",")]


def test_fusion_map_check_walks_cells_and_prints_the_agreement(capsys, tmp_path):
    code, out, err = run(capsys, "plot", "fusion-map", "--chip", "v5p", "--n", "3", "--check", "4", "--out",
                         str(tmp_path))
    assert code == 0 and (tmp_path / "fusion_map_v5p.png").exists()
    assert "closed forms vs walker on 4 random cells" in out and "verdict differs at" in out
    assert "walked 4/4 cells" in err


def test_tiling_gmm_gives_no_time_for_user_tiles_that_exceed_vmem(capsys):
    # it used to print "VMEM ... EXCEEDS" and then a time (22.7 ms) for a kernel the compiler would refuse, exit 0
    code, out, _ = run(capsys, "tiling", "gmm", "--chip", "v5e", "--impl", "tokamax", "M=4096", "K=8192", "N=8192",
                       "G=8", "tm=4096", "tk=8192", "tn=8192")
    assert code == 1 and "EXCEEDS" in out
    assert "time: none; with tiles (tm, tk, tn) = (4096, 8192, 8192)" in out
    assert not [line for line in out.splitlines() if line.startswith("time ")]
    code, out, _ = run(capsys, "tiling", "gmm", "--chip", "v5e", "--impl", "megablox", "M=4096", "K=2048", "N=2048",
                       "G=8", "tm=256", "tk=512", "tn=512")
    assert code == 0 and ": fits" in out and "\ntime " in out


@pytest.mark.parametrize("content, needle", [
    ("garbage", "is not a `perfmodel validate kernel` results.json: not valid JSON"),
    ("[1]", "is not a `perfmodel validate kernel` results.json: expected a JSON object, got list"),
])
def test_render_of_a_results_file_that_is_not_one_names_it(capsys, tmp_path, content, needle):
    # was a bare 'Expecting value: line 1 column 1 (char 0)' (or an AttributeError traceback for a list)
    (tmp_path / "results.json").write_text(content)
    code, _, err = run(capsys, "validate", "kernel", "--render", str(tmp_path))
    assert code == 2 and f"{tmp_path / 'results.json'} {needle}" in err


@pytest.mark.parametrize("argv", [
    ["scaling", "fit", "validation/results/arith_full.jsonl"], ["validate", "chinchilla"],
    ["scaling", "recipe-check", "validation/results/arith_full.jsonl", "validation/results/arith_lr.jsonl"],
])
@pytest.mark.parametrize("value", ["99999999999999", "0"])
def test_resamples_outside_a_sane_range_are_refused_before_any_work(capsys, argv, value):
    """1e14 resamples (one refit each) ran until killed; 0 was refused only after the data was read."""
    with pytest.raises(SystemExit) as done:
        main([*argv, "--resamples", value])
    err = capsys.readouterr().err
    assert done.value.code == 2 and f"argument --resamples: must be an integer in [1, 100000], got {value}" in err
