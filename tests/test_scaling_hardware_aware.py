"""Time-optimal vs FLOP-optimal allocation on a chip (perfmodel/scaling/hardware_aware.py)."""

import math

import pytest

from perfmodel.api import predict
from perfmodel.hardware import get_chip
from perfmodel.scaling import hardware_aware as H

DEPTHS = tuple(range(2, 25, 2))


def test_roofline_time_never_beats_6n_at_peak():
    peak = get_chip("v5e").peak_flops_per_s("bf16")
    for L in (2, 8, 24):
        s = H.size_cost(L, chip="v5e")
        assert 0 < s.mfu(peak) <= 1.0
        assert s.params_active == s.params_total


def test_moe_counts_active_and_total_and_fused_is_not_slower():
    dense = H.size_cost(8, n_experts=1)
    unfused = H.size_cost(8, n_experts=8)
    fused = H.size_cost(8, n_experts=8, ffn="ideal-fused")
    assert unfused.params_active == pytest.approx(dense.params_active + 8 * 8 * 1024)  # + router D E per layer
    assert unfused.params_total > 5 * dense.params_total
    assert fused.seconds_per_token <= unfused.seconds_per_token


def test_moe_ffn_hook_replaces_the_ffn_time():
    L, tps = 4, 16384
    base = H.size_cost(L, n_experts=8, tokens_per_step=tps)
    extra = 1e-3
    calls = []

    def slow_ffn(chip, dtype, *, T, D, F, E, k):
        calls.append((chip, T, D, F, E, k))
        return 3 * predict("moe_ffn_unfused", chip=chip, dtype=dtype, T=T, D=D, F=F, E=E, k=k).time_s + extra

    hooked = H.size_cost(L, n_experts=8, tokens_per_step=tps, moe_ffn_train_time_s=slow_ffn)
    assert calls == [("v5e", tps, 512, 2048, 8, 1)]
    assert math.isclose(hooked.seconds_per_token - base.seconds_per_token, L * extra / tps, rel_tol=1e-9)


def test_xla_ragged_dot_tiling_model_is_slower_than_ideal():
    # XLA's drhs is a dense masked matmul (E x FLOPs): the tiling model must cost more than the ideal roofline.
    ideal = H.size_cost(8, n_experts=8)
    xla = H.size_cost(8, n_experts=8, ffn="xla-ragged-dot")
    assert xla.seconds_per_token > ideal.seconds_per_token
    with pytest.raises(ValueError, match="ffn must be"):
        H.size_cost(8, n_experts=8, ffn="magic")


def test_time_optimal_is_never_worse_and_flop_optimal_is_a_fixed_point():
    for e in (1, 8):
        t_opt, f_opt = H.allocate(chip="v5e", time_s=3600.0, n_experts=e, depths=DEPTHS)
        assert t_opt.loss <= f_opt.loss
        assert t_opt.tokens == pytest.approx(3600.0 / t_opt.size.seconds_per_token)
        assert f_opt.compute_flops == pytest.approx(6 * f_opt.size.params_active * f_opt.tokens)


def test_bad_inputs():
    with pytest.raises(ValueError, match="time_s"):
        H.allocate(time_s=-1.0)
    with pytest.raises(ValueError, match="tokens_per_step"):
        H.size_cost(4, tokens_per_step=1000)
    with pytest.raises(ValueError, match="n_experts"):
        H.compare(time_s=10.0, n_experts=1)
    # library callers get the balanced-groups rule in the caller's terms, not the kernel model's T*k message
    for call in (lambda: H.size_cost(4, n_experts=3, ffn="xla-ragged-dot"),
                 lambda: H.compare(time_s=10.0, n_experts=3, ffn="xla-ragged-dot")):
        with pytest.raises(ValueError, match="tokens_per_step=16384, n_experts=3"):
            call()
    # a caller-supplied FFN time has no balanced-groups rule
    H.size_cost(4, n_experts=3, ffn="xla-ragged-dot", moe_ffn_train_time_s=lambda *a, **k: 0.0)


def test_the_ragged_dot_time_model_and_the_early_check_apply_the_same_rule():
    # T*k = 2*3 rows: E=3 divides, E=4 does not; the kernel-model time and the caller check agree
    assert H.xla_ragged_dot_ffn_train_time_s("v5e", "bf16", T=2, D=128, F=512, E=3, k=3) > 0
    H.check_balanced_groups(ffn="xla-ragged-dot", n_experts=3, tokens_per_step=6)
    with pytest.raises(ValueError, match="T\\*k=6 should be divisible by E=4"):
        H.xla_ragged_dot_ffn_train_time_s("v5e", "bf16", T=2, D=128, F=512, E=4, k=3)
    with pytest.raises(ValueError, match="tokens_per_step=6, n_experts=4"):
        H.check_balanced_groups(ffn="xla-ragged-dot", n_experts=4, tokens_per_step=6)


def test_cli_time_optimal(capsys):
    import json

    from perfmodel.cli import main

    assert main(["scaling", "time-optimal", "--hours", "1", "--experts", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["arch"], r["choice"]) for r in rows] == [("dense", "time-optimal"), ("dense", "FLOP-optimal"),
                                                        ("moe E=8", "time-optimal"), ("moe E=8", "FLOP-optimal")]


def test_cli_time_optimal_says_when_the_choice_is_the_end_of_the_family(capsys):
    from perfmodel.cli import main

    # a billion chip-hours: the loss still falls at the deepest member searched, so its argmin is no optimum
    assert main(["scaling", "time-optimal", "--hours", "1e9", "--experts", "8"]) == 0
    out = capsys.readouterr().out
    assert f"note: dense time-optimal is the family's largest member (L={max(H.DEPTHS)}" in out
    assert main(["scaling", "time-optimal", "--hours", "24", "--experts", "8"]) == 0
    assert "note:" not in capsys.readouterr().out  # an interior optimum (L=16 dense on v5e) needs no note


def test_plot_time_budget(tmp_path):
    out = H.compare(time_s=3600.0, n_experts=8, plot_path=tmp_path / "t.png")
    assert len(out) == 4 and (tmp_path / "t.png").stat().st_size > 10_000


def test_a_chip_step_larger_than_the_global_batch_is_refused(capsys):
    # --tokens-per-chip-step 2048000000000 was costed (a 1e9-sequence step per chip) and exited 0
    from perfmodel.cli import main

    assert main(["scaling", "time-optimal", "--tokens-per-chip-step", str(2048 * 10**9)]) == 2
    assert "cannot exceed the global batch of 4,194,304 tokens" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tokens_per_step=8192"):
        H.size_cost(2, tokens_per_step=8192, global_batch_tokens=4096)


def test_a_time_budget_under_one_optimizer_step_is_flagged(capsys):
    from perfmodel.cli import main

    assert main(["scaling", "time-optimal", "--hours", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert out.count("fewer than one global batch of 4,194,304: less than one optimizer step") == 4
    assert main(["scaling", "time-optimal"]) == 0
    assert "fewer than one global batch" not in capsys.readouterr().out


def test_a_time_budget_whose_compute_overflows_is_named_as_hours(capsys):
    # --hours 1e300 failed on an internal quantity: "tokens must be positive and finite, got tokens=inf"
    from perfmodel.cli import main

    for hours in ("1e300", "1e306"):  # 1e306 h overflows already in seconds
        assert main(["scaling", "time-optimal", "--hours", hours]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "--hours is too large" in err and "more compute than a float holds" in err
        assert f"got --hours={float(hours)!r}" in err
    with pytest.raises(ValueError, match=r"time_s is too large: .* got time_s=1e\+300"):
        H.allocate(time_s=1e300, depths=DEPTHS)
