"""VMEM verdict: scoped limits, and (libtpu AOT) agreement with the compiler on clear cases."""

import pytest

from perfmodel.tiling.gmm import gmm_spec
from perfmodel.tiling.vmem import DEFAULT_SCOPED_VMEM_BYTES, scoped_vmem_limit_bytes, vmem_verdict

MIB = 2**20


def test_scoped_limit_default_and_requested():
    assert scoped_vmem_limit_bytes("v5e") == DEFAULT_SCOPED_VMEM_BYTES["v5e"]
    assert scoped_vmem_limit_bytes("v5e", 100 * MIB) == 100 * MIB
    with pytest.raises(ValueError, match="requested"):
        scoped_vmem_limit_bytes("v5e", 0)
    with pytest.raises(ValueError, match="h100"):
        scoped_vmem_limit_bytes("h100")


def test_verdict_respects_capacity_even_with_a_larger_request():
    v = vmem_verdict(80 * MIB, "v5p", requested_limit=100 * MIB)
    assert not v.fits and v.capacity_bytes == 64 * MIB


def test_megablox_footprint_is_buffers_plus_accumulator():
    spec = gmm_spec([512] * 4, 2048, 2048, tm=512, tk=1024, tn=1024, out_dtype="f32")
    assert spec.vmem_bytes == 2 * (512 * 1024 * 2 + 1024 * 1024 * 2 + 512 * 1024 * 4) + 512 * 1024 * 4


@pytest.mark.tpu_compile
@pytest.mark.parametrize("tiles", [(128, 512, 512), (512, 512, 2048)])
def test_compiler_agrees_on_clear_cases(tiles):
    from perfmodel.tpu_compile import libtpu_available
    from validation.vmem_fit import run_case

    if not libtpu_available():
        pytest.skip("libtpu not available")
    case = run_case("v5e", tiles)
    assert case.compiled is not None, case.message
    assert case.agrees


def test_spill_estimate_only_on_128_wide_mxu_chips():
    from perfmodel.tiling.vmem import SPILL_FACTOR, mosaic_spill_bytes, spec_vmem_verdict

    spec = gmm_spec([512] * 4, 2048, 2048, tm=1024, tk=2048, tn=256, out_dtype="f32")
    assert mosaic_spill_bytes(spec, "v5e") == int(SPILL_FACTOR * 1024 * 2048 * 2)
    assert mosaic_spill_bytes(spec, "v6e") == 0
    # 13 MiB of buffers fit 16 MiB, the spill does not (libtpu refuses this config on v5e).
    assert spec.vmem_bytes == 13 * MIB
    assert not spec_vmem_verdict(spec, "v5e").fits
    assert spec_vmem_verdict(spec, "v6e").fits


@pytest.mark.parametrize("chips, match", [
    ("v5e,nope", "--chips: unknown chip 'nope'"),  # compiled v5e for 14 s first
    ("", "--chips must be a comma-separated list of chip names, got chips=''"),  # was 0/0, exit 0
    ("v5e,a100", "--chips: .*needs a TPU"),
])
def test_cli_refuses_bad_chips_before_compiling(chips, match, capsys, tmp_path, monkeypatch):
    import re

    from perfmodel.cli import main
    from validation import vmem_fit

    monkeypatch.setattr(vmem_fit, "run_case", lambda *a, **k: pytest.fail("compiled"))
    rc = main(["validate", "vmem", "--chips", chips, "--quick", "--out", str(tmp_path / "o")])
    assert rc == 2 and re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_main_resolves_every_chip_before_compiling(monkeypatch, tmp_path):
    from validation import vmem_fit

    monkeypatch.setattr(vmem_fit, "run_case", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match="chip='a100'"):
        vmem_fit.main(["v5e", "a100"], out_dir=tmp_path, quick=True)
    with pytest.raises(ValueError, match="no chips"):
        vmem_fit.main([], out_dir=tmp_path, quick=True)
