"""Worked problems (scaling book style) with the numbers plugged in."""

import re

import numpy as np
import pytest

from perfmodel import predict, roofline
from perfmodel.hardware import CATALOG


def test_big_bf16_matmul_on_v5e_is_compute_bound():
    # 8192^3 bf16: 2*8192^3 = 1.0995e12 FLOPs; 3*8192^2*2 B = 402.7 MB.
    # compute 1.0995e12/1.97e14 = 5.58 ms > memory 4.027e8/8.19e11 = 0.49 ms.
    p = predict("matmul", chip="v5e", M=8192, K=8192, N=8192)
    r = p.roofline
    assert r.flops == 2 * 8192**3
    assert r.hbm_bytes == 3 * 8192**2 * 2
    assert r.compute_s == pytest.approx(5.581e-3, rel=1e-3)
    assert r.memory_s == pytest.approx(4.9164e-4, rel=1e-3)
    assert r.lower_s == r.compute_s and r.upper_s == pytest.approx(r.compute_s + r.memory_s)
    assert r.bound == "compute"
    assert r.intensity_flops_per_byte == pytest.approx(8192 / 3)


def test_batch_matmul_intensity_crosses_the_ridge_near_240_tokens():
    # Scaling book: x[B,D] @ W[D,F] in bf16 has intensity ~B for B << D, F; on v5e
    # it turns compute-bound once B exceeds ~240.
    D = F = 16384
    below = predict("matmul", chip="v5e", M=200, K=D, N=F).roofline
    above = predict("matmul", chip="v5e", M=300, K=D, N=F).roofline
    assert below.bound == "memory" and above.bound == "compute"
    assert below.intensity_flops_per_byte == pytest.approx(2 * 200 * D * F / (2 * (200 * D + D * F + 200 * F)))


def test_int8_weights_move_the_v5e_ridge_to_about_480():
    chip = CATALOG["v5e"]
    assert chip.ridge_flops_per_byte("int8") == pytest.approx(481, rel=0.01)
    # an int8 matmul with intensity 400 is memory-bound on int8, compute-bound on bf16 peak.
    r = roofline(400e9, 1e9, "v5e", "int8")
    assert r.bound == "memory"
    assert roofline(400e9, 1e9, "v5e", "bf16").bound == "compute"


def test_decode_step_reading_weights_is_memory_bound_on_every_tpu():
    # One decode step of a 8B-parameter bf16 model at batch 1: 16 GB of weights, 2*8e9 FLOPs.
    for name in ("v4", "v5e", "v5p", "v6e", "tpu7x"):
        r = roofline(2 * 8e9, 16e9, name)
        assert r.bound == "memory"
        assert r.lower_s == pytest.approx(16e9 / CATALOG[name].hbm_bytes_per_s)


def test_array_inputs_give_array_results():
    r = roofline(np.array([1e9, 1e15]), np.array([1e9, 1e6]), "v6e")
    assert list(r.bound) == ["memory", "compute"]


def test_unfused_moe_time_sums_its_kernels():
    p = predict("moe_ffn_unfused", chip="v5e", T=4096, D=1024, F=4096, E=8, k=2, glu=True)
    assert [n for n, _ in p.parts] == ["up", "gate", "act", "down"]
    assert p.time_s == pytest.approx(sum(r.lower_s for _, r in p.parts))
    assert p.time_s >= p.roofline.lower_s


def test_predict_refuses_a_dtype_the_chip_lacks():
    with pytest.raises(ValueError, match="fp8"):
        predict("matmul", chip="v5e", dtype="fp8", M=1, K=1, N=1)


@pytest.mark.parametrize("kw, needle", [
    (dict(flops=-1.0, hbm_bytes=10.0), "flops must be finite and >= 0, got flops=-1.0"),
    (dict(flops=1.0, hbm_bytes=float("nan")), "hbm_bytes must be finite and >= 0"),
    (dict(flops=np.array([1.0, -2.0]), hbm_bytes=1.0), "flops must be finite and >= 0"),
])
def test_roofline_refuses_negative_or_non_finite_work(kw, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        roofline(chip="v5e", **kw)
    assert roofline(flops=0.0, hbm_bytes=0.0, chip="v5e").lower_s == 0.0  # no work is allowed


def test_roofline_plot_keeps_its_roofs_when_a_point_has_no_flops_or_no_bytes(monkeypatch, tmp_path):
    """decoder_forward's embed part has 0 FLOPs: log10(0) made every roof line NaN (none drawn); a point with
    0 bytes raised ZeroDivisionError."""
    import warnings

    from perfmodel import plots

    seen = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: seen.update(fig=fig) or path)
    pts = [plots.RooflinePoint("matmul", 2e12, 1e9), plots.RooflinePoint("embed", 0.0, 1e8),
           plots.RooflinePoint("in-register", 1e9, 0.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.roofline_plot(["v5e", "v6e"], pts, tmp_path / "r.png")
    ax = seen["fig"].axes[0]
    roofs = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
    assert len(roofs) == 2 and all(np.isfinite(line.get_ydata()).all() for line in roofs)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "embed (not drawn: 0 FLOPs)" in labels and "in-register (not drawn: 0 HBM bytes)" in labels
    with pytest.raises(ValueError, match="point 'bad': flops must be finite and >= 0, got flops=nan"):
        plots.roofline_plot(["v5e"], [plots.RooflinePoint("bad", float("nan"), 1.0)], tmp_path / "b.png")


def test_beyond_hbm_names_the_arguments_the_operand_bytes_and_the_hbm():
    # predict printed "HBM bytes 3.2e+286 PB" for this as if a v5e could run it
    from perfmodel.api import beyond_hbm

    assert beyond_hbm("matmul", chip="v5e", M=1e300, K=8, N=8) == (
        "M=1e+300, K=8, N=8 in bf16 needs 3.2e+286 PB of operands, more than v5e's 16 GB HBM")
    # the check tiling gmm makes, in its words: lhs, rhs (G groups of weights) and out of the ideal ragged_dot
    assert beyond_hbm("ragged_dot", chip="v5e", M=99999999999, K=2048, N=768, G=1) == (
        "M=99999999999, K=2048, N=768, G=1 in bf16 needs 563 TB of operands, more than v5e's 16 GB HBM")
    assert beyond_hbm("matmul", chip="v5e", M=8192, K=8192, N=8192) is None


def test_beyond_hbm_holds_one_kernel_not_the_whole_op_or_all_layers():
    """A 32-layer forward moves 295 GB through a 32 GB v6e and its layers.ffn.up entry stands for 32 kernels of
    1.1 GB: it fits. The train step's AdamW update holds params, grads and moments of 5.3e9 params at once."""
    from perfmodel.api import beyond_hbm

    d = dict(B=8, T=4096, D=4096, F=11008, H=32, Hkv=32, Dh=128, L=32, V=32000)
    p = predict("decoder_forward", chip="v6e", **d)
    assert p.roofline.hbm_bytes > CATALOG["v6e"].hbm_bytes < dict(p.kernels)["layers.ffn.up"].hbm_bytes
    assert beyond_hbm("decoder_forward", chip="v6e", **d) is None
    assert beyond_hbm("decoder_train_step", chip="v6e", **d).endswith(
        "in bf16 needs 117 GB of operands in kernel adamw, more than v6e's 32 GB HBM")
