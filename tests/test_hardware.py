import json
import math

import attrs

import pytest

from perfmodel import hardware
from perfmodel.hardware import CATALOG, get_chip


def test_lookup_by_name_alias_and_device_kind():
    assert get_chip("v5e") is CATALOG["v5e"]
    assert get_chip("TPU v5 lite") is CATALOG["v5e"]
    assert get_chip("TPU v6 lite") is CATALOG["v6e"]
    assert get_chip("TPU7x") is CATALOG["tpu7x"]
    assert get_chip("7x") is CATALOG["tpu7x"]
    assert get_chip("TPU v5") is CATALOG["v5p"]
    assert get_chip("TPU v4") is CATALOG["v4"]


def test_unknown_chip_error_lists_known_chips():
    with pytest.raises(ValueError) as e:
        get_chip("v9z")
    msg = str(e.value)
    assert "'v9z'" in msg
    for name in ("v4", "v5e", "v5p", "v6e", "tpu7x", "h100", "cpu"):
        assert name in msg


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_number_has_a_source(name):
    chip = CATALOG[name]
    for field in chip.sourced_fields():
        assert chip.sources.get(field), f"{name}.{field} has no source"


def test_disagreeing_sources_keep_the_alternative():
    # FACTS section 4: v5p bandwidth 2.765e12 (Google) vs 2.8e12 (book) vs 2.46e12 (jax).
    assert CATALOG["v5p"].hbm_bytes_per_s == 2.765e12
    assert "2.46e12" in CATALOG["v5p"].alternatives["hbm_bytes_per_s"]
    assert "tpu_info" in CATALOG["v6e"].alternatives["mxus_per_core"]


def test_v5e_bf16_ridge_is_about_240_flops_per_byte():
    # Scaling book: v5e ridge ~240 FLOP/B (1.97e14 / 8.2e11).
    assert CATALOG["v5e"].ridge_flops_per_byte("bf16") == pytest.approx(240, rel=0.01)


def test_int8_ridges_double_bf16_where_int8_is_twice_as_fast():
    for name in ("v5e", "v5p", "v6e"):
        chip = CATALOG[name]
        assert chip.ridge_flops_per_byte("int8") == pytest.approx(
            chip.int8_ops_per_s / chip.hbm_bytes_per_s)
        assert chip.ridge_flops_per_byte("int8") == pytest.approx(2 * chip.ridge_flops_per_byte("bf16"), rel=0.01)


def test_dtype_the_chip_lacks_is_refused_with_the_supported_list():
    with pytest.raises(ValueError, match=r"v5e.*fp8.*bf16"):
        CATALOG["v5e"].peak_flops_per_s("fp8")
    with pytest.raises(ValueError, match="unknown dtype"):
        CATALOG["v5e"].peak_flops_per_s("int3")
    assert CATALOG["tpu7x"].peak_flops_per_s("fp8") == 4.614e15


def test_per_core_values_split_megacore_chips():
    v5p = CATALOG["v5p"]
    assert v5p.megacore and v5p.tensor_cores_per_chip == 2
    assert v5p.per_core_flops_per_s() == v5p.bf16_flops_per_s / 2
    assert CATALOG["v5e"].per_core_flops_per_s() == CATALOG["v5e"].bf16_flops_per_s


def test_vmem_and_mxu_match_pallas_docs():
    mib = 1024**2
    assert {n: CATALOG[n].vmem_bytes_per_core // mib for n in ("v4", "v5e", "v5p", "v6e", "tpu7x")} == {
        "v4": 16, "v5e": 128, "v5p": 64, "v6e": 128, "tpu7x": 64}
    assert CATALOG["v5e"].mxu_tile == 128 and CATALOG["v6e"].mxu_tile == 256


def test_cpu_chip_from_a_saved_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    cal = hardware.measure_cpu(matmul_n=128, copy_mib=4, repeats=3)
    assert cal.f32_flops_per_s > 1e8 and cal.hbm_bytes_per_s > 1e8
    hardware.save_cpu_calibration(cal)
    chip = get_chip("cpu")
    assert chip.f32_flops_per_s == cal.f32_flops_per_s
    assert "perfmodel calibrate cpu" in chip.sources["f32_flops_per_s"]
    assert math.isfinite(chip.ridge_flops_per_byte("f32"))
    assert chip.page_fault_bytes_per_s == cal.page_fault_bytes_per_s > 1e6
    assert "freshly mmapped" in chip.sources["page_fault_bytes_per_s"]
    assert "donated" in chip.sources["hbm_bytes_per_s"]


def test_a_calibration_file_of_the_old_format_is_measured_again(tmp_path, monkeypatch):
    # files written before the page-fault field timed x+1 into a fresh buffer (mostly page faults)
    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    cal = hardware.measure_cpu(matmul_n=64, copy_mib=2, repeats=3)
    old = {k: v for k, v in attrs.asdict(cal).items() if k not in ("page_fault_bytes_per_s", "page_fault_bytes")}
    (tmp_path / "cpu_calibration.json").write_text(json.dumps(old))
    assert hardware.load_cpu_calibration() is None


def test_in_place_bandwidth_is_not_slowed_by_page_faults():
    # the calibrated bandwidth uses a donated buffer: no fresh pages, so it beats the first-touch rate
    cal = hardware.measure_cpu(matmul_n=64, copy_mib=64, repeats=3)
    assert cal.hbm_bytes_per_s > cal.page_fault_bytes_per_s


def test_bad_page_fault_sizes_name_the_argument():
    with pytest.raises(ValueError, match="n_bytes=0"):
        hardware.measure_page_fault_bytes_per_s(0)


def test_bad_calibration_sizes_name_the_argument():
    with pytest.raises(ValueError, match="matmul_n=0"):
        hardware.measure_cpu(matmul_n=0)


def _no_measuring(**_):
    raise AssertionError("measured the CPU for a model that only accepts TPUs")


@pytest.mark.parametrize("argv", [
    ["fusion", "--tokens", "4096", "--D", "2048", "--F", "8192", "--E", "8", "--chip", "cpu"],
    ["tiling", "gmm", "--chip", "CPU", "M=1024", "K=256", "N=512", "G=8"],
    ["plot", "fusion-map", "--chip", "cpu"],
])
def test_tpu_only_commands_refuse_cpu_before_measuring_it(argv, tmp_path, monkeypatch, capsys):
    # With no saved calibration, get_chip("cpu") measures the machine (seconds) and writes a cache file;
    # a TPU-only model must refuse the name first.
    from perfmodel.cli import main

    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "measure_cpu", _no_measuring)
    if argv[0] == "plot":
        argv = [*argv, "--out", str(tmp_path / "plots")]
    assert main(argv) != 0
    assert "chip must be a TPU, got chip='cpu'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["a100", "h100", "cpu"])
def test_get_tpu_chip_names_what_needs_the_tpu(name, monkeypatch):
    monkeypatch.setattr(hardware, "measure_cpu", _no_measuring)
    with pytest.raises(ValueError, match=f"the tiling walker needs a TPU; chip must be a TPU, got chip='{name}'"):
        hardware.get_tpu_chip(name, what="the tiling walker")
    assert hardware.get_tpu_chip("trillium", what="x").name == "v6e"


def _calibration(**kw):
    base = dict(f32_flops_per_s=5e10, bf16_flops_per_s=5e10, hbm_bytes_per_s=2e10, launch_overhead_s=1e-5,
                page_fault_bytes_per_s=1e9, matmul_n=1024, copy_bytes=256 * 2**20, page_fault_bytes=256 * 2**20,
                repeats=7, cpu_count=2, measured_at="2026-12-04T00:00:00+00:00", jax_version="x")
    return hardware.CpuCalibration(**{**base, **kw})


def test_calibration_problems_flag_a_dispatch_bound_matmul_and_a_cache_sized_copy():
    assert hardware.calibration_problems(_calibration(), llc_bytes=32 * 2**20) == []
    # 2 * 64^3 / 5e10 = 10.5 us, about one 10 us launch: the FLOP/s would time dispatch
    (p,) = hardware.calibration_problems(_calibration(matmul_n=64), llc_bytes=32 * 2**20)
    assert p.startswith("matmul_n=64: the f32 matmul took 10.5 us, under 10x the 10.0 us launch overhead")
    (p,) = hardware.calibration_problems(_calibration(copy_bytes=32 * 2**20), llc_bytes=32 * 2**20)
    assert p.startswith("copy_mib=32: the copy is under 2x this CPU's 32 MiB last-level cache")
    assert "copy_mib >= 64" in p


def test_without_a_known_cache_size_the_copy_is_not_judged(monkeypatch):
    monkeypatch.setattr(hardware, "last_level_cache_bytes", lambda: None)
    assert hardware.calibration_problems(_calibration(copy_bytes=2**20)) == []
    monkeypatch.setattr(hardware, "last_level_cache_bytes", lambda: 2**20)
    assert len(hardware.calibration_problems(_calibration(copy_bytes=2**20))) == 1


def test_calibration_sizes_beyond_the_machine_memory_are_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 8 * 2**30)
    hardware.check_calibration_sizes(matmul_n=4096, copy_mib=1024, repeats=3)  # 256 MiB, 2 GiB: fine
    with pytest.raises(ValueError, match="matmul_n=20000 needs about 6,104 MiB, more than half of this machine's "
                                         "8,192 MiB"):
        hardware.check_calibration_sizes(matmul_n=20000, copy_mib=1024, repeats=3)
    with pytest.raises(ValueError, match="--copy-mib=4096 needs about 8,192 MiB"):
        hardware.check_calibration_sizes(matmul_n=1024, copy_mib=4096, repeats=3,
                                         arg_name=lambda k: "--" + k.replace("_", "-"))


def test_calibrate_cpu_keeps_the_saved_calibration_when_the_new_one_is_unsound(tmp_path, monkeypatch, capsys):
    from perfmodel.cli import main

    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    good = _calibration()
    hardware.save_cpu_calibration(good)
    before = (tmp_path / "cpu_calibration.json").read_text()
    monkeypatch.setattr(hardware, "measure_cpu", lambda **kw: _calibration(matmul_n=kw["matmul_n"]))
    assert main(["calibrate", "cpu", "--matmul-n", "64", "--copy-mib", "256"]) == 2
    err = capsys.readouterr().err
    assert "calibration not saved: --matmul-n=64: the f32 matmul took 10.5 us" in err
    assert (tmp_path / "cpu_calibration.json").read_text() == before
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: 2**30)
    assert main(["calibrate", "cpu", "--matmul-n", "100000"]) == 2
    assert "--matmul-n=100000 needs about" in capsys.readouterr().err


@pytest.mark.parametrize("field, value", [("hbm_bytes_per_s", 0.0), ("bf16_flops_per_s", float("nan")),
                                          ("launch_overhead_s", -1e-5)])
@pytest.mark.parametrize("argv", [["chips"], ["predict", "matmul", "--chip", "cpu", "M=8", "K=8", "N=8"]])
def test_a_corrupt_calibration_file_is_named_with_its_field_and_how_to_fix_it(tmp_path, monkeypatch, capsys, argv,
                                                                             field, value):
    # hbm_bytes_per_s 0 was a ZeroDivisionError traceback from ridge_flops_per_byte; a NaN or a negative rate
    # became the cpu chip's numbers
    from perfmodel.cli import main

    monkeypatch.setenv("PERFMODEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "measure_cpu", _no_measuring)
    path = tmp_path / "cpu_calibration.json"
    path.write_text(json.dumps({**attrs.asdict(_calibration()), field: value}))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path}: {field}={value!r}: the calibration's rates, times and sizes must be finite and positive" in err
    assert "re-run `perfmodel calibrate cpu` (it overwrites the file) or delete the file" in err
