"""``perfmodel predict`` and ``perfmodel bench predict`` on input they cannot price."""

import json

import pytest

from perfmodel.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, needle", [
    # an OverflowError traceback (exit 1) from the lambdified formula's T**2
    (["attention", "B=1", "D=8", "Dh=4", "H=2", "Hkv=1", "T=1e300"],
     "B=1, D=8, Dh=4, H=2, Hkv=1, T=1e+300 give flops=inf"),
    (["transformer_layer", "B=1", "D=8", "Dh=4", "F=8", "H=2", "Hkv=1", "T=1e160"], "T=1e+160 give flops=inf"),
    # "flops must be finite and >= 0, got flops=inf": an internal quantity, none of the inputs
    (["matmul", "M=1e300", "K=1e300", "N=1e300"], "M=1e+300, K=1e+300, N=1e+300 give flops=inf"),
    (["dense_ffn", "D=1e200", "F=1e200", "M=1e200"], "D=1e+200, F=1e+200, M=1e+200 give flops=inf"),
])
def test_dimensions_whose_cost_overflows_are_named(capsys, argv, needle):
    code, out, err = run(capsys, "predict", *argv)
    assert code == 2 and out == ""
    assert needle + ": beyond the float range (max 1.8e+308); use smaller dimensions" in err


def test_a_shape_beyond_the_chip_hbm_is_said_to_be_no_run_on_it(capsys):
    # printed "HBM bytes 3.2e+286 PB" and a lower bound of 3.91e+274 Ps as a prediction, without a word
    note = ("note: M=1e+300, K=8, N=8 in bf16 needs 3.2e+286 PB of operands, more than v5e's 16 GB HBM: "
            "no v5e can run this shape; the numbers are the formulas', not a prediction")
    code, out, _ = run(capsys, "predict", "matmul", "M=1e300", "K=8", "N=8")
    assert code == 0 and out.splitlines()[:2] == ["matmul on v5e (bf16) M=1e+300 K=8 N=8", note]
    code, out, err = run(capsys, "predict", "matmul", "M=1e300", "K=8", "N=8", "--json")
    assert code == 0 and json.loads(out)["hbm_bytes"] == pytest.approx(3.2e301) and err.strip() == note
    code, out, _ = run(capsys, "predict", "decoder_train_step", "B=1e100", "D=1e100", "Dh=4", "F=8", "H=2", "Hkv=1",
                       "L=2", "T=8", "V=10")
    assert code == 0 and "of operands in kernel decoder_forward.layers.residual1, more than v5e's 16 GB HBM" in out
    code, out, err = run(capsys, "predict", "matmul", "M=8192", "K=8192", "N=8192")  # fits: no note
    assert code == 0 and "note" not in out + err


def test_predict_list_refuses_dimensions(capsys):
    # extra=1 was silently ignored (exit 0)
    code, out, err = run(capsys, "predict", "list", "extra=1", "M=8")
    assert code == 2 and out == ""
    assert "predict list takes no NAME=VALUE arguments (it lists every op), got extra=1 M=8" in err


def test_bench_predict_refuses_more_configurations_than_memory_before_allocating(capsys, monkeypatch):
    # --n 99999999999999 was a numpy ArrayMemoryError traceback (728 TiB)
    from perfmodel import hardware
    from validation import bench_predict

    def no_run(**_):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 2**30)
    monkeypatch.setattr(bench_predict, "run", no_run)
    code, out, err = run(capsys, "bench", "predict", "--n", "10000000")
    assert code == 2 and out == ""
    assert "--n=10000000 (1000 bytes per configuration) needs about 9,537 MiB, more than half of this machine's " \
           "1,024 MiB available memory; use --n <= 536,870" in err
