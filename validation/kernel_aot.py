"""Ahead-of-time compile sweep of the fused MoE kernel for every TPU generation (libtpu, no TPU).

Two questions, answered by the TPU compiler itself (``perfmodel.tpu_compile``):

1. **Does the kernel compile with the model's default tiles?** For every chip,
   dtype and shape in :data:`SHAPES`, compile ``kernels.fused_moe`` with
   :func:`kernels.fused_moe.default_tiles` and record the outcome, the tiles,
   the model's VMEM footprint and limit, and XLA's FLOPs (which are our
   ``pl.CostEstimate``, i.e. the walked spec).
2. **Does the model's VMEM verdict agree with the compiler's?** For every chip,
   take the candidate tiles of :data:`BOUNDARY_SHAPE` ordered by the model's
   footprint, and compile the largest one the model says fits and the smallest
   one it says does not (``check_vmem=False``, limit = the chip's VMEM). The
   compiler must accept the first and refuse the second with
   ``RESOURCE_EXHAUSTED``; its "used" count is reported next to the model's.

Invoked by ``perfmodel validate kernel-aot``; never collected by pytest
(``tests/test_kernels_aot.py`` keeps 4 compiles).
"""

from __future__ import annotations

import pathlib
import time

import attrs

from perfmodel import jsonout

CHIPS = ("v4", "v5e", "v5p", "v6e", "tpu7x")
DTYPES = ("bf16", "f32")
SHAPES = (  # (T, D, F, G, glu): rows, width, hidden, experts
    (4096, 1024, 4096, 8, True),      # 512 rows per expert, SwiGLU
    (2000, 2048, 4096, 16, False),    # T not a multiple of tm, gelu
    (1024, 512, 2048, 64, True),      # fine-grained: 16 rows per expert
    (16384, 4096, 14336, 8, True),    # Mixtral-8x7B-like expert FFN, 2048 rows per expert
)
BOUNDARY_SHAPE = (4096, 2048, 8192, 8, True)


@attrs.frozen(kw_only=True)
class CompileRecord:
    chip: str
    dtype: str
    T: int
    D: int
    F: int
    G: int
    glu: bool
    tm: int
    tf: int
    purpose: str               # "default" | "model_fits" | "model_overflows"
    model_vmem_bytes: int
    vmem_limit_bytes: int
    chip_vmem_bytes: int
    outcome: str               # "ok" | "vmem" | "error"
    compiler_used_bytes: int | None = None
    compiler_limit_bytes: int | None = None
    xla_flops: float | None = None
    model_mxu_flops: int | None = None
    compile_s: float = 0.0
    message: str = ""

    @property
    def agrees(self) -> bool:
        """The compiler's verdict is the model's: fits -> compiles, overflows -> VMEM error."""
        if self.outcome == "no_tiles":  # the model refused every candidate; nothing compiled
            return True
        fits = self.model_vmem_bytes <= self.chip_vmem_bytes
        return (self.outcome == "ok") if fits else (self.outcome == "vmem")


def compile_one(chip: str, *, T, D, F, G, glu, dtype, tiles, purpose) -> CompileRecord:
    from kernels.fused_moe import fused_moe_ffn_forward, fused_moe_spec
    from perfmodel.hardware import get_chip
    from perfmodel.tiling.params import FITTED
    from perfmodel.tiling.walker import walk
    from perfmodel.tpu_compile import VmemExhausted, compile_for_tpu

    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype=dtype, tiles=tiles, glu=glu, chip=chip)

    def f(x, group_sizes, w_up, w_down, *w_gate):
        return fused_moe_ffn_forward(x, group_sizes, w_up, w_down, w_gate[0] if w_gate else None, tiles=tiles,
                                     chip=chip, interpret=False, check_vmem=False)

    args = [((T, D), dtype), ((G,), "int32"), ((G, D, F), dtype), ((G, F, D), dtype)]
    if glu:
        args.append(((G, D, F), dtype))
    base = dict(chip=get_chip(chip).name, dtype=dtype, T=T, D=D, F=F, G=G, glu=glu, tm=tiles.tm, tf=tiles.tf,
                purpose=purpose, model_vmem_bytes=spec.vmem_bytes, vmem_limit_bytes=spec.vmem_limit_bytes,
                chip_vmem_bytes=get_chip(chip).vmem_bytes_per_core)
    t0 = time.perf_counter()
    try:
        prog = compile_for_tpu(f, args, chip)
    except VmemExhausted as err:
        return CompileRecord(**base, outcome="vmem", compiler_used_bytes=err.used_bytes,
                             compiler_limit_bytes=err.limit_bytes, compile_s=time.perf_counter() - t0,
                             message=f"{err.kind}: {err.used_bytes / 2**20:.2f} MiB of {err.limit_bytes / 2**20:.2f}")
    except Exception as err:  # noqa: BLE001 - recorded, the sweep goes on
        return CompileRecord(**base, outcome="error", compile_s=time.perf_counter() - t0,
                             message=f"{type(err).__name__}: {str(err)[:300]}")
    return CompileRecord(**base, outcome="ok", xla_flops=prog.flops,
                         model_mxu_flops=walk(spec, chip, FITTED).mxu_flops, compile_s=prog.compile_s)


def _no_tiles(chip, *, T, D, F, G, glu, dtype, message) -> CompileRecord:
    from perfmodel.hardware import get_chip

    return CompileRecord(chip=get_chip(chip).name, dtype=dtype, T=T, D=D, F=F, G=G, glu=glu, tm=0, tf=0,
                         purpose="default", model_vmem_bytes=0, vmem_limit_bytes=0,
                         chip_vmem_bytes=get_chip(chip).vmem_bytes_per_core, outcome="no_tiles", message=message)


def boundary_tiles(chip: str, *, T, D, F, G, glu, dtype):
    """(largest-footprint tiles the model says fit, smallest-footprint tiles it says overflow)."""
    from kernels.fused_moe import FusedTiles, fused_moe_spec
    from perfmodel.hardware import get_chip

    cap = get_chip(chip).vmem_bytes_per_core
    cands = [FusedTiles(tm=tm, tf=tf) for tm in (128, 256, 512, 1024, 2048) for tf in (256, 512, 1024, 2048, 4096)
             if F % tf == 0]
    sized = sorted((fused_moe_spec(T=T, D=D, F=F, G=G, dtype=dtype, tiles=t, glu=glu, chip=chip).vmem_bytes,
                    t.tm, t.tf, t)
                   for t in cands)
    fits = [s for s in sized if s[0] <= cap]
    over = [s for s in sized if s[0] > cap]
    return (fits[-1][3] if fits else None), (over[0][3] if over else None)


def run(*, chips=CHIPS, dtypes=DTYPES, shapes=SHAPES, boundary=True, log=print) -> list[CompileRecord]:
    from kernels.fused_moe import default_tiles
    from perfmodel.hardware import get_tpu_chip

    # Every chip a TPU with every dtype, before any compile: default_tiles refuses a bad pair with a
    # ValueError, which the loop below would record as the model's "no_tiles" verdict, an agreement.
    for chip in chips:
        tpu = get_tpu_chip(chip, what="the fused kernel (Pallas TPU)")
        for dtype in dtypes:
            tpu.peak_flops_per_s(dtype)
    records = []
    for chip in chips:
        for dtype in dtypes:
            for T, D, F, G, glu in shapes:
                try:
                    tiles = default_tiles(T=T, D=D, F=F, G=G, dtype=dtype, glu=glu, chip=chip)
                except ValueError as err:  # no candidate fits: the model's verdict, recorded
                    log(f"{chip:6s} {dtype:4s} T={T} D={D} F={F} G={G}: {err}")
                    records.append(_no_tiles(chip, T=T, D=D, F=F, G=G, glu=glu, dtype=dtype, message=str(err)))
                    continue
                rec = compile_one(chip, T=T, D=D, F=F, G=G, glu=glu, dtype=dtype, tiles=tiles, purpose="default")
                log(_line(rec))
                records.append(rec)
        if boundary:
            T, D, F, G, glu = BOUNDARY_SHAPE
            fits, over = boundary_tiles(chip, T=T, D=D, F=F, G=G, glu=glu, dtype="bf16")
            for tiles, purpose in ((fits, "model_fits"), (over, "model_overflows")):
                if tiles is None:
                    continue
                rec = compile_one(chip, T=T, D=D, F=F, G=G, glu=glu, dtype="bf16", tiles=tiles, purpose=purpose)
                log(_line(rec))
                records.append(rec)
    return records


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.1f}"


def _line(r: CompileRecord) -> str:
    return (f"{r.chip:6s} {r.dtype:4s} T={r.T} D={r.D} F={r.F} G={r.G} {'glu' if r.glu else 'act'} "
            f"tm={r.tm} tf={r.tf} [{r.purpose}] model {_mib(r.model_vmem_bytes)} MiB -> {r.outcome} "
            f"{r.message} ({r.compile_s:.1f} s)")


HEADER = ("| chip | dtype | T | D | F | G | GLU | tm | tf | purpose | model VMEM MiB | limit MiB | chip MiB "
          "| outcome | compiler used MiB | XLA FLOPs / model | agrees |")


def to_markdown(records: list[CompileRecord]) -> str:
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in records:
        ratio = "-" if not r.xla_flops or not r.model_mxu_flops else f"{r.xla_flops / r.model_mxu_flops:.3f}"
        rows.append(f"| {r.chip} | {r.dtype} | {r.T} | {r.D} | {r.F} | {r.G} | {'y' if r.glu else 'n'} | {r.tm} "
                    f"| {r.tf} | {r.purpose} | {_mib(r.model_vmem_bytes)} | {_mib(r.vmem_limit_bytes)} "
                    f"| {_mib(r.chip_vmem_bytes)} | {r.outcome} | {_mib(r.compiler_used_bytes)} | {ratio} "
                    f"| {'yes' if r.agrees else 'NO'} |")
    n_ok = sum(r.outcome == "ok" for r in records if r.purpose == "default")
    n_def = sum(r.purpose == "default" and r.outcome != "no_tiles" for r in records)
    n_none = sum(r.outcome == "no_tiles" for r in records)
    n_agree = sum(r.agrees for r in records)
    summary = (f"\n\nDefault tiles compiled: {n_ok}/{n_def} ({n_none} shapes where no candidate tiles fit "
               f"the model's VMEM, not compiled). Model VMEM verdict agrees with libtpu: "
               f"{n_agree}/{len(records)}.\n")
    return "\n".join(rows) + summary


def write(records: list[CompileRecord], out_dir) -> tuple[pathlib.Path, pathlib.Path]:
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "kernel_aot.md", out / "kernel_aot.json"
    md.write_text("# Fused MoE kernel: AOT compiles for TPU targets (libtpu on CPU)\n\n"
                  "Generated by `perfmodel validate kernel-aot`.\n\n" + to_markdown(records))
    js.write_text(jsonout.dumps([attrs.asdict(r) for r in records], indent=1))
    return md, js
