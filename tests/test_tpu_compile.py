"""perfmodel.tpu_compile: ahead-of-time TPU compilation on a CPU host."""

import pytest

from perfmodel import tpu_compile
from perfmodel.tpu_compile import VmemExhausted, compile_for_tpu, parse_vmem_exhausted

needs_libtpu = pytest.mark.skipif(not tpu_compile.libtpu_available(), reason="libtpu not installed")

# The three shapes of the compiler's VMEM verdict, abridged from real libtpu 0.0.42 messages.
CAPACITY = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
            "space vmem. Used 192.00M of 128.00M vmem. Exceeded vmem capacity by 64.00M.")
SCOPED = ("RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom:\nRan out of memory in memory space "
          "vmem while allocating on stack for %f.1 = ... Scoped allocation with size 96.00M and "
          "limit 16.00M exceeded scoped vmem limit by 80.00M.")
ALLOCATION = ("RESOURCE_EXHAUSTED: Allocation (size=268435456) would exceed memory "
              "(size=67108864) :: #allocation2 [shape = 'u8[268435456]{0}', space=vmem, ...]")


@pytest.mark.parametrize("message, expected", [
    (CAPACITY, ("capacity", 192 * 2**20, 128 * 2**20)),
    (SCOPED, ("scoped_limit", 96 * 2**20, 16 * 2**20)),
    (ALLOCATION, ("allocation", 268435456, 67108864)),
])
def test_parse_vmem_verdicts(message, expected):
    assert parse_vmem_exhausted(message) == expected


def test_other_errors_are_not_vmem_verdicts():
    assert parse_vmem_exhausted("RESOURCE_EXHAUSTED: out of HBM memory") is None
    assert parse_vmem_exhausted("INVALID_ARGUMENT: Used 1.00M of 2.00M vmem") is None


def test_every_tpu_chip_has_a_topology():
    from perfmodel.hardware import CATALOG

    tpus = {name for name, c in CATALOG.items() if c.vendor == "google"}
    assert set(tpu_compile.TOPOLOGIES) == tpus


def test_non_tpu_chip_is_refused():
    with pytest.raises(ValueError, match="chip="):
        compile_for_tpu(lambda a: a, [((8, 128), "f32")], chip="h100")


@needs_libtpu
@pytest.mark.tpu_compile
def test_matmul_compiles_with_xla_flops():
    m, k, n = 1024, 512, 256
    prog = compile_for_tpu(lambda a, b: a @ b, [((m, k), "bf16"), ((k, n), "bf16")], chip="v5e")
    assert prog.device_kind == "TPU v5 lite"
    assert prog.flops == 2 * m * k * n
    assert prog.optimal_seconds > 0
    assert prog.argument_bytes == 2 * (m * k + k * n)
    assert prog.output_bytes == 2 * m * n
    assert prog.operand("1") > 0 and "HloModule" in prog.hlo_text


@needs_libtpu
@pytest.mark.tpu_compile
def test_oversized_pallas_block_is_vmem_verdict():
    import jax
    import jax.numpy as jnp
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 2

    bm = 4096  # f32 [4096, 4096] block = 64 MiB, double-buffered in and out: 256 MiB > 16 MiB on v4

    def f(x):
        spec = pl.BlockSpec((bm, 4096), lambda i: (i, 0))
        return pl.pallas_call(kernel, grid=(2,), in_specs=[spec], out_specs=spec,
                              out_shape=jax.ShapeDtypeStruct((2 * bm, 4096), jnp.float32))(x)

    with pytest.raises(VmemExhausted) as info:
        compile_for_tpu(f, [((2 * bm, 4096), "f32")], chip="v4")
    assert info.value.chip == "v4"
    assert info.value.used_bytes > info.value.limit_bytes


_PROBE = ("import sys; sys.path.insert(0, {root!r}); {call}; "
          "print('platform', d.platform)")


def _probe(call: str) -> tuple[str, str]:
    import os
    import pathlib
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", _PROBE.format(root=root, call=call)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


@needs_libtpu
def test_default_device_keeps_libtpu_startup_noise_off_a_cpu_host():
    # What a user of `perfmodel report` saw before: jax's first backend probe loads libtpu,
    # which writes warnings and an INVALID_ARGUMENT line to fd 2, then jax falls back to CPU.
    out, err = _probe("import jax; d = jax.devices()[0]")
    if "platform tpu" in out:
        pytest.skip("this host has a TPU")
    if "TPU" not in err:
        pytest.skip("this libtpu prints nothing when no TPU is found")
    out, err = _probe("from perfmodel.tpu_compile import default_device; d = default_device()")
    assert "platform cpu" in out
    assert "TPU" not in err and "INVALID_ARGUMENT" not in err, err
