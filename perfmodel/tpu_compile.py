"""Compile a jax function ahead of time for a TPU generation, on a CPU-only host.

libtpu (installed by ``jax[tpu]``) can describe a TPU topology without a TPU
and compile for it: ``jax.experimental.topologies.get_topology_desc`` hands out
abstract devices, and ``jit(f).trace(...).lower(lowering_platforms=("tpu",))``
``.compile()`` runs the real TPU compiler (XLA:TPU and Mosaic for Pallas). What
comes back is the compiler's own view of the program:

* ``cost_analysis()``: XLA's FLOPs, bytes accessed (total and per operand) and
  ``optimal_seconds`` (XLA's own roofline estimate);
* ``memory_analysis()``: argument / output / temp bytes in HBM;
* the optimized HLO text, Mosaic custom calls (Pallas kernels, and the kernel
  XLA itself uses for ``ragged_dot``) included;
* the compiler's verdict on VMEM fit: a kernel that needs more VMEM than it may
  use fails with ``RESOURCE_EXHAUSTED``, raised here as :class:`VmemExhausted`
  with the used and limit bytes parsed from the message.

Nothing is executed. The runtime stays on CPU (set ``JAX_PLATFORMS=cpu`` before
jax is imported; this module sets it if jax is not imported yet).

Topologies: the smallest that libtpu 0.0.42 accepts per generation
(``v5e:1x1`` and ``v6e:1x1`` are refused). We compile for one device of it:
on v4 and v5p a device is a megacore chip (two TensorCores), on v5e and v6e a
single-core chip, on 7x one TensorCore (``TOPOLOGIES``).

>>> prog = compile_for_tpu(lambda a, b: a @ b, [((1024, 512), "bf16"), ((512, 256), "bf16")],
...                        chip="v5e")                                  # doctest: +SKIP
>>> prog.flops                                                          # doctest: +SKIP
268435456.0
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from perfmodel.hardware import get_chip

TOPOLOGIES: Mapping[str, str] = {
    "v4": "v4:2x2x1",
    "v5e": "v5e:2x2",
    "v5p": "v5p:2x2x1",
    "v6e": "v6e:2x2",
    "tpu7x": "tpu7x:2x2x1",
}
"""libtpu topology name per perfmodel chip name (smallest accepted topology)."""

TPU_CHIPS: tuple[str, ...] = tuple(TOPOLOGIES)
"""Chips this module can compile for."""

_DTYPES = {"bf16": "bfloat16", "f32": "float32", "int8": "int8", "fp8": "float8_e4m3fn"}


class VmemExhausted(RuntimeError):
    """The TPU compiler refused the program: it needs more VMEM than allowed.

    Attributes
    ----------
    chip: perfmodel chip name.
    used_bytes: VMEM the compiler says the program (or one allocation) needs.
    limit_bytes: the limit it ran into.
    kind: which limit - ``"capacity"`` (the core's whole VMEM: "Used X of Y
      vmem"), ``"scoped_limit"`` (the scoped VMEM limit, default 16-32 MiB,
      raised with ``pltpu.CompilerParams(vmem_limit_bytes=...)``), or
      ``"allocation"`` (a single buffer larger than VMEM: "Allocation (size=X)
      would exceed memory (size=Y)").
    message: the compiler's full message.
    """

    def __init__(self, *, chip: str, used_bytes: int, limit_bytes: int, kind: str, message: str):
        self.chip = chip
        self.used_bytes = used_bytes
        self.limit_bytes = limit_bytes
        self.kind = kind
        self.message = message
        super().__init__(
            f"{chip}: VMEM exhausted ({kind}): needs {used_bytes} bytes, limit {limit_bytes} bytes"
        )


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_NUM = r"([0-9.]+)([KMG]?)"
# Three message shapes seen from libtpu 0.0.42 (all RESOURCE_EXHAUSTED):
_VMEM_PATTERNS = (
    ("capacity", re.compile(rf"Used {_NUM} of {_NUM} vmem")),
    ("scoped_limit", re.compile(rf"Scoped allocation with size {_NUM} and limit {_NUM}")),
    ("allocation", re.compile(r"Allocation \(size=(\d+)()\) would exceed memory \(size=(\d+)()\)")),
)


def _size(num: str, unit: str) -> int:
    # libtpu prints "96.00M" meaning MiB (96.00M = 100663296 bytes in the same message).
    return int(round(float(num) * _SIZE_UNITS[unit]))


def parse_vmem_exhausted(message: str) -> tuple[str, int, int] | None:
    """``(kind, used_bytes, limit_bytes)`` from a compiler error, or None if it is no VMEM verdict."""
    if "RESOURCE_EXHAUSTED" not in message or "vmem" not in message.lower():
        return None
    for kind, pattern in _VMEM_PATTERNS:
        m = pattern.search(message)
        if m:
            used, limit = _size(m.group(1), m.group(2)), _size(m.group(3), m.group(4))
            return kind, used, limit
    return None


@functools.cache
def libtpu_available() -> bool:
    """True when libtpu is installed and can describe a TPU topology on this host."""
    try:
        topology("v5e")
    except Exception:  # noqa: BLE001 - any failure means "cannot compile for TPU here"
        return False
    return True


@contextlib.contextmanager
def _quiet_stderr():
    """Swallow libtpu's C++ start-up warnings (TPU_ACCELERATOR_TYPE, TPU_WORKER_HOSTNAMES).

    They are written straight to file descriptor 2 when libtpu initialises and
    are harmless when compiling ahead of time. On an exception the captured
    text is attached to it so nothing useful is lost. Yields a function that
    returns the text captured so far.
    """
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)

        def captured() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read().decode(errors="replace")

        try:
            yield captured
        except Exception as err:
            os.dup2(saved, 2)
            err.add_note("libtpu stderr:\n" + captured()[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def default_device():
    """``jax.devices()[0]``, without libtpu's start-up noise on a machine that has no TPU.

    With the ``tpu`` extra installed on a CPU-only host, jax's first backend
    initialisation loads libtpu, which writes warnings and an ``INVALID_ARGUMENT``
    line to file descriptor 2 before jax falls back to CPU. That text is
    captured here and dropped when the device found is not a TPU; on a TPU it
    is written back to stderr unchanged. Later ``jax.devices()`` calls reuse the
    initialised backends and print nothing.
    """
    import jax

    with _quiet_stderr() as captured:
        device = jax.devices()[0]
        text = captured()
    if device.platform == "tpu" and text:
        sys.stderr.write(text)
        sys.stderr.flush()
    return device


def _import_jax():
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # libtpu takes /tmp/libtpu_lockfile for exclusive use of a real TPU; with
    # several compiling processes on one host the second one aborts ("Internal
    # error when accessing libtpu multi-process lockfile"). Compiling touches
    # no TPU, so concurrent loads are safe.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax

    return jax


@functools.cache
def topology(chip: str):
    """libtpu's topology descriptor for ``chip`` (cached: building one takes ~0.4 s)."""
    name = aot_chip_name(chip)
    _import_jax()
    from jax.experimental import topologies

    with _quiet_stderr():
        return topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[name])


def aot_chip_name(chip: str) -> str:
    """The catalog name of ``chip`` if libtpu can compile for it (:data:`TPU_CHIPS`), else ``ValueError``."""
    name = get_chip(chip).name
    if name not in TOPOLOGIES:
        raise ValueError(f"chip must be a TPU generation {list(TOPOLOGIES)}, got chip={chip!r}")
    return name


@functools.cache
def _sharding(chip: str):
    jax = _import_jax()
    import numpy as np

    mesh = jax.sharding.Mesh(np.array(topology(chip).devices[:1]), ("x",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def device_kind(chip: str) -> str:
    """jax ``device_kind`` of the compile target (e.g. "TPU v5 lite")."""
    return topology(aot_chip_name(chip)).devices[0].device_kind


def arg_spec(shape: Sequence[int], dtype: object, chip: str):
    """A ``jax.ShapeDtypeStruct`` placed on one device of ``chip``'s topology.

    ``dtype`` is a perfmodel name ("bf16", "f32", "int8", "fp8") or anything
    ``jnp.dtype`` accepts ("int32", ``jnp.bfloat16``).
    """
    jax = _import_jax()
    import jax.numpy as jnp

    dt = jnp.dtype(_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype)
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dt, sharding=_sharding(aot_chip_name(chip)))


@attrs.frozen(kw_only=True)
class CompiledProgram:
    """What the TPU compiler reports about one program (per device, see module doc).

    ``flops``, ``bytes_accessed`` and ``optimal_seconds`` are XLA's
    ``cost_analysis()`` totals; ``operand_bytes`` its per-operand bytes
    accessed (``"0{}"`` = argument 0, ``"out{}"`` = the output), ``raw_cost``
    every key it returned. Memory fields are ``memory_analysis()`` (HBM).
    """

    chip: str
    device_kind: str
    topology: str
    flops: float
    bytes_accessed: float
    optimal_seconds: float
    transcendentals: float
    operand_bytes: tuple[tuple[str, float], ...]
    raw_cost: tuple[tuple[str, float], ...]
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    generated_code_bytes: int
    compile_s: float
    hlo_text: str = attrs.field(repr=False)

    def operand(self, key: str) -> float:
        """Bytes accessed of one operand: ``operand("0")`` (argument 0) or ``operand("out")``."""
        for k, v in self.operand_bytes:
            if k == key or k == key + "{}":
                return v
        raise ValueError(f"no operand {key=}; known: {[k for k, _ in self.operand_bytes]}")

    @property
    def custom_call_targets(self) -> tuple[str, ...]:
        """``custom_call_target`` of every custom call in the optimized HLO, in order."""
        return tuple(re.findall(r'custom_call_target="([^"]+)"', self.hlo_text))


def compile_for_tpu(fn: Callable, args: Sequence, chip: str, *,
                    static_argnames: Sequence[str] = ()) -> CompiledProgram:
    """Compile ``fn(*args)`` for ``chip`` ahead of time and read the compiler's reports.

    ``args`` are ``(shape, dtype)`` pairs or ``jax.ShapeDtypeStruct`` (placed on
    ``chip`` with :func:`arg_spec` if they carry no sharding).

    Raises :class:`VmemExhausted` when the compiler runs out of VMEM, and
    ``ValueError`` for a chip that is not a TPU generation.
    """
    name = aot_chip_name(chip)
    jax = _import_jax()
    specs = []
    for a in args:
        if isinstance(a, jax.ShapeDtypeStruct):
            specs.append(a if a.sharding is not None else arg_spec(a.shape, a.dtype, name))
        else:
            shape, dtype = a
            specs.append(arg_spec(shape, dtype, name))
    jitted = jax.jit(fn, static_argnames=tuple(static_argnames))
    t0 = time.perf_counter()
    try:
        compiled = jitted.trace(*specs).lower(lowering_platforms=("tpu",)).compile()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is the VMEM verdict
        parsed = parse_vmem_exhausted(str(err))
        if parsed is None:
            raise
        kind, used, limit = parsed
        raise VmemExhausted(chip=name, used_bytes=used, limit_bytes=limit, kind=kind,
                            message=str(err)) from err
    compile_s = time.perf_counter() - t0
    return _program(compiled, name, compile_s)


def _program(compiled, name: str, compile_s: float) -> CompiledProgram:
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
        cost = cost[0] if cost else {}
    raw = tuple(sorted((str(k), float(v)) for k, v in cost.items()))
    prefix = "bytes accessed"
    operands = tuple((k[len(prefix):], v) for k, v in raw if k.startswith(prefix) and k != prefix)
    mem = compiled.memory_analysis()
    return CompiledProgram(
        chip=name, device_kind=device_kind(name), topology=TOPOLOGIES[name],
        flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get(prefix, 0.0)),
        optimal_seconds=float(cost.get("optimal_seconds", float("nan"))),
        transcendentals=float(cost.get("transcendentals", 0.0)),
        operand_bytes=operands, raw_cost=raw,
        argument_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
        output_bytes=int(getattr(mem, "output_size_in_bytes", 0)),
        temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
        alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
        generated_code_bytes=int(getattr(mem, "generated_code_size_in_bytes", 0)),
        compile_s=compile_s, hlo_text=compiled.as_text(),
    )
