import json

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
])
def test_bad_input_is_a_clear_error(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert needle in err


def test_formula_pretty_and_latex(capsys):
    code, out, _ = run(capsys, "formula", "moe_ffn_fused", "glu=true", "--kind", "hbm_bytes", "--latex")
    assert code == 0 and "q" in out and "\\" in out


def test_predict_list_shows_every_op(capsys):
    from perfmodel.ops import OPS

    code, out, _ = run(capsys, "predict", "list")
    assert code == 0 and all(name in out for name in OPS)
