"""Hardware catalog: one frozen record per chip, every number with its source.

Conventions
-----------
* Peak FLOP/s, HBM capacity and HBM bandwidth are **per chip** (field names say
  ``_per_chip`` where a per-TensorCore reading is plausible). VMEM is **per
  TensorCore** (``vmem_bytes_per_core``). Use :meth:`Chip.per_core_flops_per_s`
  and :meth:`Chip.per_core_hbm_bytes_per_s` for the share of one TensorCore.
* A jax "device" is a whole chip on megacore generations (v4, v5p: two
  TensorCores behind one device) and on single-core chips (v5e, v6e). On 7x each
  TensorCore is its own jax device (no megacore; jax ``tpu_info``).
* Where sources disagree (``../shared/FACTS.md`` section 4) we pick one on
  purpose; the alternative is kept in ``Chip.alternatives`` under the field name.
* ``f32`` matmul peaks equal the bf16 peaks on TPU: XLA's DEFAULT precision runs
  an f32 dot as one bf16 MXU pass (libtpu's cost model gives identical
  ``optimal_seconds`` for f32 and bf16 8192^3 matmuls on every generation, seen
  here). HIGHEST precision (6 bf16 passes) is recorded as the alternative.
* Overheads (per grid step of a Pallas kernel, per kernel launch) have no
  published constant; defaults are stated with their origin and are meant to be
  calibrated from named data by the validation commands.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping

import attrs

DTYPE_BYTES: Mapping[str, int] = {"f32": 4, "bf16": 2, "int8": 1, "fp8": 1}
"""Bytes per element of each dtype name perfmodel accepts."""

_DTYPE_ALIASES = {
    "float32": "f32", "fp32": "f32", "f32": "f32",
    "bfloat16": "bf16", "bf16": "bf16",
    "int8": "int8", "s8": "int8", "i8": "int8",
    "fp8": "fp8", "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
    "f8e4m3fn": "fp8", "f8e5m2": "fp8",
}


def canonical_dtype(dtype: object) -> str:
    """Map a dtype name or numpy/jax dtype to one of ``DTYPE_BYTES``'s keys."""
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    key = _DTYPE_ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(
            f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}"
        )
    return key


def dtype_bytes(dtype: object) -> int:
    """Bytes per element of ``dtype`` (e.g. 2 for bf16)."""
    return DTYPE_BYTES[canonical_dtype(dtype)]


# Default overheads, shared by every TPU record (one home).
_GRID_STEP_OVERHEAD_S = 0.35e-6
_GRID_STEP_SOURCE = (
    "assumed: a v5e Pallas matmul tutorial timing (128^3 tiles, 262,144 grid steps "
    "in 91.8 ms) implies ~0.35 us/step (jax docs pallas/tpu/matmul); to be "
    "calibrated"
)
_TPU_LAUNCH_OVERHEAD_S = 2e-6
_TPU_LAUNCH_SOURCE = "assumed default (no published constant); to be calibrated"
_GPU_LAUNCH_OVERHEAD_S = 4e-6
_GPU_LAUNCH_SOURCE = "assumed default: typical CUDA kernel launch latency; not calibrated"


@attrs.frozen(kw_only=True)
class Chip:
    """One accelerator generation.

    Peak rates are dense (no structured sparsity). ``None`` means the chip has
    no such datapath (e.g. fp8 on v5e) and :meth:`peak_flops_per_s` refuses it.
    """

    name: str
    vendor: str  # "google", "nvidia" or "host"
    device_kinds: tuple[str, ...]
    bf16_flops_per_s: float
    f32_flops_per_s: float
    int8_ops_per_s: float | None
    fp8_flops_per_s: float | None
    hbm_bytes: float
    hbm_bytes_per_s: float
    tensor_cores_per_chip: int
    megacore: bool
    vmem_bytes_per_core: int | None
    mxu_shape: tuple[int, int] | None
    mxus_per_core: int | None
    ici_bytes_per_s_per_link: float | None
    grid_step_overhead_s: float | None
    launch_overhead_s: float
    # Host only: rate at which the OS maps fresh pages on first touch (bytes / s). A runtime that
    # takes a buffer from the OS at every call pays it; accelerator runtimes reserve device memory
    # up front, so None there.
    page_fault_bytes_per_s: float | None = None
    sources: Mapping[str, str] = attrs.field(factory=dict)
    alternatives: Mapping[str, str] = attrs.field(factory=dict)

    # -- derived quantities -------------------------------------------------
    @property
    def dtypes(self) -> tuple[str, ...]:
        """Dtype names this chip has a matmul peak for."""
        return tuple(d for d in DTYPE_BYTES if self._peak_or_none(d) is not None)

    def _peak_or_none(self, dtype: str) -> float | None:
        return {
            "bf16": self.bf16_flops_per_s,
            "f32": self.f32_flops_per_s,
            "int8": self.int8_ops_per_s,
            "fp8": self.fp8_flops_per_s,
        }[dtype]

    def peak_flops_per_s(self, dtype: object = "bf16") -> float:
        """Dense matmul peak of the whole chip for ``dtype`` (FLOP/s or OP/s)."""
        key = canonical_dtype(dtype)
        peak = self._peak_or_none(key)
        if peak is None:
            raise ValueError(
                f"chip {self.name!r} has no {key} matmul peak; "
                f"dtypes it supports: {list(self.dtypes)}"
            )
        return peak

    def ridge_flops_per_byte(self, dtype: object = "bf16") -> float:
        """Arithmetic intensity where compute and HBM time are equal: peak / bandwidth."""
        return self.peak_flops_per_s(dtype) / self.hbm_bytes_per_s

    def per_core_flops_per_s(self, dtype: object = "bf16") -> float:
        """One TensorCore's share of the chip peak (peak / TensorCores per chip)."""
        return self.peak_flops_per_s(dtype) / self.tensor_cores_per_chip

    def per_core_hbm_bytes_per_s(self) -> float:
        """One TensorCore's share of HBM bandwidth."""
        return self.hbm_bytes_per_s / self.tensor_cores_per_chip

    @property
    def mxu_tile(self) -> int | None:
        """Side of the MXU systolic array (operands are padded to multiples of it)."""
        return None if self.mxu_shape is None else self.mxu_shape[0]

    def sourced_fields(self) -> dict[str, object]:
        """Numeric fields that are set (not None), by name."""
        skip = {"name", "vendor", "device_kinds", "sources", "alternatives", "megacore"}
        return {
            f.name: getattr(self, f.name)
            for f in attrs.fields(Chip)
            if f.name not in skip and getattr(self, f.name) is not None
        }


_GOOGLE_V4 = "Google Cloud TPU v4 page; scaling book (jax-ml.github.io/scaling-book) hardware table"
_GOOGLE_V5E = "Google Cloud TPU v5e page"
_GOOGLE_V5P = "Google Cloud TPU v5p page"
_GOOGLE_V6E = "Google Cloud TPU v6e (Trillium) page"
_GOOGLE_7X = "Google Cloud Ironwood (TPU7x) page"
_TPU_INFO = "jax/_src/pallas/mosaic/tpu_info.py (jax 0.10.2)"
_BOOK_ICI = "scaling book hardware table (one-way per link)"
_PALLAS_DOCS = "jax docs pallas/tpu/details; " + _TPU_INFO
_F32_SOURCE = (
    "= bf16 peak: XLA DEFAULT precision runs f32 dot as one bf16 pass (libtpu "
    "cost_analysis: equal optimal_seconds for f32 and bf16 8192^3, seen here)"
)
_F32_ALT = "HIGHEST precision: 6 bf16 passes, ~bf16 peak / 6"


def _tpu(
    *, name, device_kinds, bf16, int8, fp8, hbm_bytes, hbm_bw, cores, megacore,
    vmem, mxu, mxus, ici, sources, alternatives=None,
) -> Chip:
    src = {
        "f32_flops_per_s": _F32_SOURCE,
        "vmem_bytes_per_core": _PALLAS_DOCS,
        "tensor_cores_per_chip": _TPU_INFO,
        "mxu_shape": _PALLAS_DOCS,
        "ici_bytes_per_s_per_link": _BOOK_ICI,
        "grid_step_overhead_s": _GRID_STEP_SOURCE,
        "launch_overhead_s": _TPU_LAUNCH_SOURCE,
        **sources,
    }
    alt = {"f32_flops_per_s": _F32_ALT, **(alternatives or {})}
    return Chip(
        name=name, vendor="google", device_kinds=device_kinds,
        bf16_flops_per_s=bf16, f32_flops_per_s=bf16, int8_ops_per_s=int8,
        fp8_flops_per_s=fp8, hbm_bytes=hbm_bytes, hbm_bytes_per_s=hbm_bw,
        tensor_cores_per_chip=cores, megacore=megacore, vmem_bytes_per_core=vmem,
        mxu_shape=(mxu, mxu), mxus_per_core=mxus, ici_bytes_per_s_per_link=ici,
        grid_step_overhead_s=_GRID_STEP_OVERHEAD_S,
        launch_overhead_s=_TPU_LAUNCH_OVERHEAD_S,
        sources=src, alternatives=alt,
    )


_MIB = 1024**2
_GIB = 1024**3

V4 = _tpu(
    name="v4", device_kinds=("TPU v4",), bf16=2.75e14, int8=None, fp8=None,
    hbm_bytes=32 * _GIB, hbm_bw=1.2e12, cores=2, megacore=True, vmem=16 * _MIB,
    mxu=128, mxus=4, ici=4.5e10,
    sources={
        "bf16_flops_per_s": _GOOGLE_V4, "hbm_bytes": _GOOGLE_V4,
        "hbm_bytes_per_s": _GOOGLE_V4, "mxus_per_core": _TPU_INFO,
    },
    alternatives={"hbm_bytes_per_s": "1.23e12 (jax tpu_info)",
                  "int8_ops_per_s": "v4 MXU has no int8 mode (jax tpu_info: 0)"},
)
V5E = _tpu(
    name="v5e", device_kinds=("TPU v5 lite", "TPU v5e"), bf16=1.97e14, int8=3.94e14,
    fp8=None, hbm_bytes=16e9, hbm_bw=8.19e11, cores=1, megacore=False,
    vmem=128 * _MIB, mxu=128, mxus=4, ici=4.5e10,
    sources={
        "bf16_flops_per_s": _GOOGLE_V5E, "int8_ops_per_s": _GOOGLE_V5E,
        "hbm_bytes": _GOOGLE_V5E, "hbm_bytes_per_s": _GOOGLE_V5E + " (819 GB/s)",
        "mxus_per_core": _TPU_INFO,
    },
    alternatives={"hbm_bytes_per_s": "8.1e11 (scaling book table); 8.2e11 (jax tpu_info)"},
)
V5P = _tpu(
    name="v5p", device_kinds=("TPU v5", "TPU v5p"), bf16=4.59e14, int8=9.18e14,
    fp8=None, hbm_bytes=95e9, hbm_bw=2.765e12, cores=2, megacore=True,
    vmem=64 * _MIB, mxu=128, mxus=4, ici=9e10,
    sources={
        "bf16_flops_per_s": _GOOGLE_V5P, "int8_ops_per_s": _GOOGLE_V5P,
        "hbm_bytes": _GOOGLE_V5P, "hbm_bytes_per_s": _GOOGLE_V5P,
        "mxus_per_core": _TPU_INFO,
    },
    alternatives={"hbm_bytes_per_s": "2.8e12 (scaling book); 2.46e12 (jax tpu_info)"},
)
V6E = _tpu(
    name="v6e", device_kinds=("TPU v6 lite", "TPU v6e"), bf16=9.18e14, int8=1.84e15,
    fp8=None, hbm_bytes=32e9, hbm_bw=1.64e12, cores=1, megacore=False,
    vmem=128 * _MIB, mxu=256, mxus=4, ici=9e10,
    sources={
        "bf16_flops_per_s": _GOOGLE_V6E, "int8_ops_per_s": _GOOGLE_V6E,
        "hbm_bytes": _GOOGLE_V6E, "hbm_bytes_per_s": _GOOGLE_V6E,
        "mxus_per_core": "4: the count that fits 918 TFLOP/s at ~1.75 GHz with 256x256 MXUs",
    },
    alternatives={
        "bf16_flops_per_s": "9.2e14 (scaling book; jax tpu_info)",
        "hbm_bytes_per_s": "1.6e12 (scaling book)",
        "mxus_per_core": "2 (jax tpu_info); Google pages disagree",
        "fp8_flops_per_s": "jax tpu_info lists 9.2e14 fp8 (same as bf16); no Google figure, left unset",
    },
)
TPU7X = _tpu(
    name="tpu7x", device_kinds=("TPU7x", "TPU7"), bf16=2.307e15, int8=None,
    fp8=4.614e15, hbm_bytes=192 * _GIB, hbm_bw=7.37e12, cores=2, megacore=False,
    vmem=64 * _MIB, mxu=256, mxus=4, ici=None,
    sources={
        "bf16_flops_per_s": _GOOGLE_7X, "fp8_flops_per_s": _GOOGLE_7X,
        "hbm_bytes": _GOOGLE_7X, "hbm_bytes_per_s": _GOOGLE_7X + " (7.2-7.4 TB/s reported)",
        "mxus_per_core": ("inferred: 4 MXUs of 256^2 fit 1.15e15 FLOP/s per TensorCore at ~2.2 GHz; "
                          "2 would imply an implausible 4.4 GHz clock"),
    },
    alternatives={
        "mxus_per_core": "2 (jax tpu_info num_mxus)",
        "hbm_bytes_per_s": "7.4e12 (jax tpu_info, 3.7e12 per TensorCore)",
        "bf16_flops_per_s": "2.31e15 (jax tpu_info)",
    },
)


def _gpu(*, name, device_kinds, bf16, int8, fp8, hbm_bytes, hbm_bw, source) -> Chip:
    compute = ["bf16_flops_per_s"] + [f for f, v in (("int8_ops_per_s", int8), ("fp8_flops_per_s", fp8)) if v]
    src = {f: source + " (dense, no sparsity)" for f in compute}
    src |= {f: source for f in ("hbm_bytes", "hbm_bytes_per_s")}
    src["f32_flops_per_s"] = "TF32 tensor-core dense peak = bf16 peak / 2 (" + source + ")"
    src["tensor_cores_per_chip"] = "one device per GPU (TensorCore notion does not apply)"
    src["launch_overhead_s"] = _GPU_LAUNCH_SOURCE
    return Chip(
        name=name, vendor="nvidia", device_kinds=device_kinds,
        bf16_flops_per_s=bf16, f32_flops_per_s=bf16 / 2, int8_ops_per_s=int8,
        fp8_flops_per_s=fp8, hbm_bytes=hbm_bytes, hbm_bytes_per_s=hbm_bw,
        tensor_cores_per_chip=1, megacore=False, vmem_bytes_per_core=None,
        mxu_shape=None, mxus_per_core=None, ici_bytes_per_s_per_link=None,
        grid_step_overhead_s=None, launch_overhead_s=_GPU_LAUNCH_OVERHEAD_S,
        sources=src,
        alternatives={"bf16_flops_per_s": "datasheets also quote 2x this with 2:4 sparsity; we use dense"},
    )


A100 = _gpu(name="a100", device_kinds=("NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB"),
            bf16=3.12e14, int8=6.24e14, fp8=None, hbm_bytes=80e9, hbm_bw=2.039e12,
            source="NVIDIA A100 datasheet (SXM 80GB)")
H100 = _gpu(name="h100", device_kinds=("NVIDIA H100 80GB HBM3", "NVIDIA H100"),
            bf16=9.89e14, int8=1.979e15, fp8=1.979e15, hbm_bytes=80e9, hbm_bw=3.35e12,
            source="NVIDIA H100 datasheet (SXM)")
H200 = _gpu(name="h200", device_kinds=("NVIDIA H200",),
            bf16=9.89e14, int8=1.979e15, fp8=1.979e15, hbm_bytes=141e9, hbm_bw=4.8e12,
            source="NVIDIA H200 datasheet (SXM)")
B200 = _gpu(name="b200", device_kinds=("NVIDIA B200",),
            bf16=2.25e15, int8=4.5e15, fp8=4.5e15, hbm_bytes=180e9, hbm_bw=8e12,
            source="NVIDIA B200 / DGX B200 datasheet")

CATALOG: Mapping[str, Chip] = {c.name: c for c in (V4, V5E, V5P, V6E, TPU7X, A100, H100, H200, B200)}
"""Every built-in chip by canonical name (``cpu`` is measured, see :func:`cpu_chip`)."""

DEFAULT_CHIPS: tuple[str, ...] = ("v5e", "v6e")
"""Chips the report and plots use when the user names none."""

_NAME_ALIASES = {"v7x": "tpu7x", "7x": "tpu7x", "ironwood": "tpu7x", "v5litepod": "v5e",
                 "v5lite": "v5e", "trillium": "v6e", "tpu-v4": "v4"}


def canonical_chip_names(names) -> list[str]:
    """Catalog names of ``names``, each once, in order (``["trillium", "v6e", "v5e"] -> ["v6e", "v5e"]``)."""
    return list(dict.fromkeys(get_chip(n).name for n in names))


def get_tpu_chip(name: str | Chip, *, what: str) -> Chip:
    """Like :func:`get_chip`, but only a TPU (a chip with VMEM and an MXU) is accepted.

    ``what`` names what needs the TPU, for the message. ``cpu`` is refused
    by name before :func:`cpu_chip` would measure the machine (seconds of work whose
    result could only be thrown away).
    """
    key = name.strip().lower() if isinstance(name, str) else None
    chip = None if key == "cpu" else get_chip(name)
    if chip is None or chip.vendor != "google":
        label = "cpu" if chip is None else chip.name
        raise ValueError(f"{what} needs a TPU; chip must be a TPU, got chip={label!r}")
    return chip


def known_chip_names() -> list[str]:
    return [*CATALOG, "cpu"]


def get_chip(name: str | Chip) -> Chip:
    """Look a chip up by name ("v5e", "tpu7x", "h100", "cpu") or jax ``device_kind``.

    Raises ``ValueError`` naming the known chips when nothing matches.
    """
    if isinstance(name, Chip):
        return name
    if not isinstance(name, str):
        raise TypeError(f"chip must be a name or a Chip, got {name!r}")
    key = name.strip().lower()
    key = _NAME_ALIASES.get(key, key)
    if key in CATALOG:
        return CATALOG[key]
    if key == "cpu":
        return cpu_chip()
    for chip in CATALOG.values():
        if name.strip() in chip.device_kinds:
            return chip
    raise ValueError(
        f"unknown chip {name!r}; known chips: {', '.join(known_chip_names())} "
        f"(or a jax device_kind such as {', '.join(repr(k) for c in CATALOG.values() for k in c.device_kinds[:1] if c.vendor == 'google')})"
    )


def chip_for_device(device=None) -> Chip:
    """The catalog chip of a jax device (default: ``jax.devices()[0]``); ``cpu`` on CPU."""
    if device is None:
        from perfmodel.tpu_compile import default_device

        device = default_device()
    if device.platform == "cpu":
        return cpu_chip()
    return get_chip(device.device_kind)


# -- the measured host CPU ---------------------------------------------------

def _calibration_path() -> pathlib.Path:
    root = os.environ.get("PERFMODEL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perfmodel")
    return pathlib.Path(root) / "cpu_calibration.json"


@attrs.frozen(kw_only=True)
class CpuCalibration:
    """What ``perfmodel calibrate cpu`` measured on this machine (medians)."""

    f32_flops_per_s: float
    bf16_flops_per_s: float
    hbm_bytes_per_s: float
    launch_overhead_s: float
    page_fault_bytes_per_s: float
    matmul_n: int
    copy_bytes: int
    page_fault_bytes: int
    repeats: int
    cpu_count: int
    measured_at: str
    jax_version: str


def _median_time_s(fn, repeats: int) -> float:
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure_page_fault_bytes_per_s(n_bytes: int, repeats: int = 5) -> float:
    """First-touch rate of fresh anonymous memory: ``n_bytes / t``, median over ``repeats``.

    ``t`` is the time to map ``n_bytes`` anonymous bytes (``mmap``) and write one byte per page,
    so every page takes a minor fault and is zeroed by the kernel: the cost a program pays for a
    buffer its allocator takes from the OS at every call (glibc does so for blocks above its mmap
    threshold). Independent of the process's malloc settings.
    """
    import mmap

    import numpy as np

    if n_bytes <= 0 or repeats <= 0:
        raise ValueError(f"sizes must be positive, got {n_bytes=}, {repeats=}")
    page = mmap.PAGESIZE
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = mmap.mmap(-1, n_bytes)
        a = np.frombuffer(m, dtype=np.uint8)
        a[::page] = 1
        times.append(time.perf_counter() - t0)
        del a
        m.close()
    times.sort()
    return n_bytes / times[len(times) // 2]


def check_calibration_sizes(*, matmul_n: int, copy_mib: int, repeats: int,
                            arg_name: Callable[[str], str] = str) -> None:
    """Refuse sizes :func:`measure_cpu` cannot run: non-positive ones, and ones whose buffers need more than
    half of :func:`available_memory_bytes` (matmul: ``16 n^2`` bytes, the f64 draw, its f32 copy and the
    product; copy: ``2 x copy_mib`` MiB, the donated buffer and the page-fault mmap alive together).
    ``arg_name`` spells the arguments in the messages (the CLI's ``--matmul-n``)."""
    for k, v in (("matmul_n", matmul_n), ("copy_mib", copy_mib), ("repeats", repeats)):
        if v <= 0:
            raise ValueError(f"{arg_name(k)} must be positive, got {arg_name(k)}={v}")
    for k, v, need in (("matmul_n", matmul_n, 16 * matmul_n**2), ("copy_mib", copy_mib, 2 * copy_mib * _MIB)):
        check_memory(need, f"{arg_name(k)}={v}")


def check_memory(need_bytes: float, what: str, fix=lambda avail_bytes: "use a smaller value") -> None:
    """Refuse ``need_bytes`` above half of :func:`available_memory_bytes` (half: room for the process itself
    and the rest of the machine) before anything is allocated. The error names ``what`` and ends with
    ``fix(available bytes)``; nothing is checked where the available memory is unknown."""
    avail = available_memory_bytes()
    if avail is not None and need_bytes > avail / 2:
        raise ValueError(f"{what} needs about {need_bytes / _MIB:,.0f} MiB, more than half of this machine's "
                         f"{avail / _MIB:,.0f} MiB available memory; {fix(avail)}")


def measure_cpu(*, matmul_n: int = 1024, copy_mib: int = 256, repeats: int = 7) -> CpuCalibration:
    """Measure the host's matmul peak, memory bandwidth and page-fault rate with jax on CPU.

    * FLOP/s: median time of an ``n x n x n`` jitted ``jnp.dot`` -> ``2 n^3 / t``
      (f32 and bf16 separately).
    * Bandwidth: median time of a jitted, *donated* ``x + 1`` on ``copy_mib`` MiB of f32,
      which reads and writes every byte in place -> ``2 * bytes / t``. Donation keeps the output
      in the input's buffer: a fresh output of this size would be a new mmap under glibc's
      default heap, and its page faults (not memory traffic) would set the time.
    * Page-fault rate: :func:`measure_page_fault_bytes_per_s` on the same size.
    * Launch overhead: median time of a jitted op on 8 floats.
    """
    import datetime

    import numpy as np

    check_calibration_sizes(matmul_n=matmul_n, copy_mib=copy_mib, repeats=repeats)
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]  # committed inputs keep every timed op on the host even where a TPU is
    rng = np.random.default_rng(0)
    peaks = {}
    for dt in ("f32", "bf16"):
        jdt = jnp.float32 if dt == "f32" else jnp.bfloat16
        a = jax.device_put(rng.standard_normal((matmul_n, matmul_n)).astype(np.float32), cpu).astype(jdt)
        f = jax.jit(lambda x, y: x @ y)
        t = _median_time_s(lambda: f(a, a).block_until_ready(), repeats)
        peaks[dt] = 2 * matmul_n**3 / t
    n_el = copy_mib * _MIB // 4
    state = [jax.device_put(np.zeros((n_el,), np.float32), cpu)]
    g = jax.jit(lambda v: v + 1.0, donate_argnums=0)

    def step():
        state[0] = g(state[0])
        state[0].block_until_ready()

    t = _median_time_s(step, repeats)
    bw = 2 * n_el * 4 / t
    fault_rate = measure_page_fault_bytes_per_s(n_el * 4, repeats)
    h = jax.jit(lambda v: v + 1.0)
    small = jax.device_put(np.zeros((8,), np.float32), cpu)
    t_launch = _median_time_s(lambda: h(small).block_until_ready(), max(repeats, 21))
    return CpuCalibration(
        f32_flops_per_s=peaks["f32"], bf16_flops_per_s=peaks["bf16"], hbm_bytes_per_s=bw,
        launch_overhead_s=t_launch, page_fault_bytes_per_s=fault_rate, matmul_n=matmul_n,
        copy_bytes=n_el * 4, page_fault_bytes=n_el * 4,
        repeats=repeats, cpu_count=os.cpu_count() or 1,
        measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        jax_version=jax.__version__,
    )


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get without swapping: ``MemAvailable`` of ``/proc/meminfo`` (Linux),
    else physical pages x page size, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of cpu0 from Linux sysfs (``/sys/devices/system/cpu/cpu0/cache/index*/size``),
    or None where sysfs does not say."""
    sizes = []
    for p in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            txt = p.read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(txt[-1:].upper(), 1)
        digits = txt[:-1] if txt[-1:].isalpha() else txt
        if digits.isdigit():
            sizes.append(int(digits) * mult)
    return max(sizes) if sizes else None


#: a calibration's matmul must take this many launch overheads, or its FLOP/s measures dispatch
MIN_MATMUL_LAUNCHES = 10
#: the copy must span this many last-level caches, or its bandwidth measures the cache
MIN_COPY_CACHES = 2


def calibration_problems(cal: CpuCalibration, llc_bytes: int | None = None, *,
                         arg_name: Callable[[str], str] = str) -> list[str]:
    """Why a calibration would not measure what the cpu chip's fields claim; empty when it does.

    * matmul: ``2 n^3 / f32_flops_per_s`` (its measured time) below ``MIN_MATMUL_LAUNCHES`` x the launch
      overhead: the FLOP/s is set by dispatch, not by the matmul units.
    * copy: ``copy_bytes`` below ``MIN_COPY_CACHES`` x the last-level cache (``llc_bytes``, default
      :func:`last_level_cache_bytes`): the in-place ``x + 1`` runs from cache, not from memory.

    ``arg_name`` spells the size arguments in the messages (the CLI's ``--matmul-n``).
    """
    n_arg, copy_arg = arg_name("matmul_n"), arg_name("copy_mib")
    problems = []
    t_matmul = 2 * cal.matmul_n**3 / cal.f32_flops_per_s
    if t_matmul < MIN_MATMUL_LAUNCHES * cal.launch_overhead_s:
        problems.append(f"{n_arg}={cal.matmul_n}: the f32 matmul took {t_matmul * 1e6:.1f} us, under "
                        f"{MIN_MATMUL_LAUNCHES}x the {cal.launch_overhead_s * 1e6:.1f} us launch overhead, so "
                        f"its FLOP/s would measure dispatch; use a larger {n_arg} (default 1024)")
    llc = last_level_cache_bytes() if llc_bytes is None else llc_bytes
    if llc is not None and cal.copy_bytes < MIN_COPY_CACHES * llc:
        problems.append(f"{copy_arg}={cal.copy_bytes / _MIB:g}: the copy is under {MIN_COPY_CACHES}x this CPU's "
                        f"{llc / _MIB:g} MiB last-level cache, so its bandwidth would be the cache's, not "
                        f"memory's; use {copy_arg} >= {math.ceil(MIN_COPY_CACHES * llc / _MIB)} (default 256)")
    return problems


def save_cpu_calibration(cal: CpuCalibration, path: pathlib.Path | None = None) -> pathlib.Path:
    """Write the calibration atomically (temp file + rename) and return its path."""
    path = path or _calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(attrs.asdict(cal), indent=2))
    tmp.replace(path)
    return path


def load_cpu_calibration(path: pathlib.Path | None = None) -> CpuCalibration | None:
    """The saved calibration, or None if there is none or it lacks a field of the current format.

    A number that is not finite and positive (a hand-edited or corrupt file) raises ``ValueError`` naming the file,
    the fields and their values.

    (A file from before the page-fault field measured bandwidth with a fresh output buffer, i.e. mostly
    the page-fault rate; it is treated as missing, so the next use re-measures.)
    """
    path = path or _calibration_path()
    if not path.exists():
        return None
    try:
        cal = CpuCalibration(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    # a rate of 0 divided the ridge by zero; a NaN or negative one became the cpu chip of every command
    numbers = {f.name: getattr(cal, f.name) for f in attrs.fields(CpuCalibration)
               if f.type in ("float", "int", float, int)}  # annotations are strings under __future__, else types
    bad = [f"{k}={v!r}" for k, v in numbers.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"{path}: {', '.join(bad)}: the calibration's rates, times and sizes must be finite and "
                         "positive; re-run `perfmodel calibrate cpu` (it overwrites the file) or delete the file")
    return cal


def cpu_chip(calibration: CpuCalibration | None = None) -> Chip:
    """The host CPU as a chip, from a saved calibration or a fresh measurement.

    Without a saved calibration a quick measurement runs (~2 s) and is saved, so
    later calls are instant. ``perfmodel calibrate cpu`` re-measures on purpose.
    """
    cal = calibration or load_cpu_calibration()
    if cal is None:
        cal = measure_cpu(matmul_n=768, copy_mib=128, repeats=5)
        save_cpu_calibration(cal)
    src = (f"measured here by `perfmodel calibrate cpu` at {cal.measured_at} "
           f"(jax {cal.jax_version}, {cal.cpu_count} cores)")
    return Chip(
        name="cpu", vendor="host", device_kinds=("cpu",),
        bf16_flops_per_s=cal.bf16_flops_per_s, f32_flops_per_s=cal.f32_flops_per_s,
        int8_ops_per_s=None, fp8_flops_per_s=None,
        hbm_bytes=float(_host_memory_bytes()), hbm_bytes_per_s=cal.hbm_bytes_per_s,
        tensor_cores_per_chip=1, megacore=False, vmem_bytes_per_core=None,
        mxu_shape=None, mxus_per_core=None, ici_bytes_per_s_per_link=None,
        grid_step_overhead_s=None, launch_overhead_s=cal.launch_overhead_s,
        page_fault_bytes_per_s=cal.page_fault_bytes_per_s,
        sources={
            "bf16_flops_per_s": src + f": {cal.matmul_n}^3 bf16 jnp.dot",
            "f32_flops_per_s": src + f": {cal.matmul_n}^3 f32 jnp.dot",
            "hbm_bytes_per_s": src + f": donated (in-place) x+1 over {cal.copy_bytes} bytes (read+write)",
            "page_fault_bytes_per_s": src + f": first touch of {cal.page_fault_bytes} freshly mmapped bytes",
            "launch_overhead_s": src + ": jitted op on 8 floats",
            "hbm_bytes": "os.sysconf physical pages x page size",
            "tensor_cores_per_chip": "one jax CPU device",
        },
    )


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_si(value: float, unit: str = "") -> str:
    """Engineering formatting: 1.97e14 -> '197 T'."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}".strip()
    exp = int(math.floor(math.log10(abs(value)) / 3))
    exp = max(-4, min(5, exp))
    prefix = {-4: "p", -3: "n", -2: "u", -1: "m", 0: "", 1: "k", 2: "M", 3: "G", 4: "T", 5: "P"}[exp]
    return f"{value / 1000**exp:.3g} {prefix}{unit}".strip()
