"""VMEM-fit cross-check: the tiling model's verdict vs the TPU compiler's, over a tile sweep.

For megablox ``gmm`` (installed with jax; it sets no ``vmem_limit_bytes``, so the
default scoped limit applies) at ``m = k = n = 2048``, G = 4, bf16 inputs, f32
output, and a sweep of ``(tm, tk, tn)`` whose footprints run from 2 to 48 MiB
(two sit exactly on the 16 and 32 MiB defaults), we

1. build the kernel's :class:`~perfmodel.tiling.spec.KernelSpec`
   (:func:`perfmodel.tiling.gmm.gmm_spec`) and take its footprint
   (buffers x blocks + accumulator scratch) and the verdict of
   :func:`perfmodel.tiling.vmem.vmem_verdict`;
2. compile the real kernel for the chip with libtpu ahead of time
   (:func:`perfmodel.tpu_compile.compile_for_tpu`): success, or
   ``RESOURCE_EXHAUSTED`` in VMEM (the compiler's verdict);
3. report agreement per chip and overall (``vmem_fit.md``, ``vmem_fit.json``).

Run with ``perfmodel validate vmem [--chips v4,v5e,...] [--out DIR] [--quick]``.
"""

from __future__ import annotations

import functools
import importlib
import pathlib
import time

import attrs

from perfmodel import jsonout

SHAPE = dict(m=2048, k=2048, n=2048, num_groups=4)
SWEEP: tuple[tuple[int, int, int], ...] = (
    (128, 512, 512), (512, 1024, 1024), (1024, 256, 1024), (256, 1024, 2048), (1024, 512, 1024),
    (512, 512, 2048), (512, 2048, 1024), (1024, 1024, 1024), (256, 2048, 2048), (1024, 2048, 1024),
    (1024, 512, 2048), (512, 2048, 2048), (1024, 1024, 2048), (1024, 2048, 2048),
    (1024, 2048, 256), (128, 2048, 1024),
)
"""(tm, tk, tn); footprints 2, 12, 14, 15, 16, 17, 18, 20, 24, 28, 30, 32, 36, 48, 13, 10.5 MiB.
The last two test the spill estimate: 4.8 and 0.6 MiB of spill on 128-wide-MXU chips."""
QUICK: tuple[tuple[int, int, int], ...] = ((512, 1024, 1024), (512, 2048, 1024), (1024, 2048, 2048))


@attrs.frozen(kw_only=True)
class VmemCase:
    chip: str
    tiles: tuple[int, int, int]
    vmem_bytes: int
    spill_bytes: int
    limit_bytes: int
    predicted_fits: bool
    compiled: bool | None  # None: the compiler failed for another reason
    compiler_kind: str  # "ok", "capacity", "scoped_limit", "allocation", or an error class name
    compiler_used_bytes: int | None
    compiler_limit_bytes: int | None
    compile_s: float
    message: str = ""

    @property
    def agrees(self) -> bool | None:
        return None if self.compiled is None else self.predicted_fits == self.compiled


def _megablox_fn(tiles):
    import jax.numpy as jnp

    mb = importlib.import_module("jax.experimental.pallas.ops.tpu.megablox.gmm")
    f = functools.partial(mb.gmm, tiling=tuple(tiles), preferred_element_type=jnp.float32)
    return lambda lhs, rhs, gs: f(lhs, rhs, gs)


def run_case(chip: str, tiles) -> VmemCase:
    from perfmodel import tpu_compile as TC
    from perfmodel.tiling.gmm import gmm_spec
    from perfmodel.tiling.vmem import spec_vmem_verdict

    m, k, n, G = SHAPE["m"], SHAPE["k"], SHAPE["n"], SHAPE["num_groups"]
    tm, tk, tn = tiles
    spec = gmm_spec([m // G] * G, k, n, tm=tm, tk=tk, tn=tn, dtype="bf16", out_dtype="f32")
    verdict = spec_vmem_verdict(spec, chip)
    args = [((m, k), "bf16"), ((G, k, n), "bf16"), ((G,), "int32")]
    t0 = time.perf_counter()
    try:
        TC.compile_for_tpu(_megablox_fn(tiles), args, chip)
        compiled, kind, used, limit, msg = True, "ok", None, None, ""
    except TC.VmemExhausted as err:
        compiled, kind, used, limit, msg = False, err.kind, err.used_bytes, err.limit_bytes, ""
    except Exception as err:  # noqa: BLE001 - recorded, not hidden
        compiled, kind, used, limit, msg = None, type(err).__name__, None, None, str(err)[:500]
    return VmemCase(chip=chip, tiles=tuple(tiles), vmem_bytes=spec.vmem_bytes, spill_bytes=verdict.spill_bytes,
                    limit_bytes=verdict.limit_bytes,
                    predicted_fits=verdict.fits, compiled=compiled, compiler_kind=kind, compiler_used_bytes=used,
                    compiler_limit_bytes=limit, compile_s=time.perf_counter() - t0, message=msg)


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.2f}"


def write_report(cases: list[VmemCase], out_dir) -> tuple[pathlib.Path, pathlib.Path]:
    from perfmodel.tables import markdown_table

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    judged = [c for c in cases if c.agrees is not None]
    agree = sum(c.agrees for c in judged)
    chips = sorted({c.chip for c in cases}, key=[c.chip for c in cases].index)
    per_chip = []
    for ch in chips:
        cs = [c for c in judged if c.chip == ch]
        other = [c for c in cases if c.chip == ch and c.agrees is None]
        per_chip.append([ch, len(cs), sum(c.agrees for c in cs),
                         f"{100 * sum(c.agrees for c in cs) / len(cs):.0f}%" if cs else "-",
                         _mib(cs[0].limit_bytes) if cs else "-", len(other)])
    lines = [
        "# VMEM fit: tiling model vs the TPU compiler",
        "",
        f"Generated by `perfmodel validate vmem --chips {','.join(chips)} --out {out_dir}` "
        "(validation/vmem_fit.py). Kernel: megablox `gmm` "
        f"(m={SHAPE['m']}, k={SHAPE['k']}, n={SHAPE['n']}, G={SHAPE['num_groups']}, bf16 in, f32 out), "
        "compiled ahead of time with libtpu for one device of each chip. Footprint = 2 buffers x "
        "(lhs + rhs + out blocks) + f32 accumulator; spill = Mosaic register-spill estimate "
        "(1.2 x the lhs block on v4/v5e/v5p, 0 on v6e/7x); limit = default scoped VMEM limit "
        "(megablox sets none). Model: fits iff footprint + spill <= limit (perfmodel.tiling.vmem).",
        "",
        f"**Agreement: {agree}/{len(judged)} ({100 * agree / max(len(judged), 1):.1f}%)**",
        "",
        markdown_table(["chip", "configs", "agree", "agreement", "scoped limit MiB", "other errors"], per_chip),
        "",
        "## Every config",
        "",
        markdown_table(["chip", "tm,tk,tn", "footprint MiB", "spill est. MiB", "limit MiB", "model", "compiler",
                        "compiler size/limit MiB", "agree", "compile s"],
                       [[c.chip, "x".join(map(str, c.tiles)), _mib(c.vmem_bytes), _mib(c.spill_bytes),
                         _mib(c.limit_bytes),
                         "fits" if c.predicted_fits else "exceeds",
                         c.compiler_kind, f"{_mib(c.compiler_used_bytes)}/{_mib(c.compiler_limit_bytes)}",
                         {True: "yes", False: "NO", None: "-"}[c.agrees], f"{c.compile_s:.1f}"] for c in cases]),
        "",
        "Compiler size is what libtpu reports at the failure; for scoped-limit failures it can be a "
        "partial sum (allocation stops at the first overflow).",
    ]
    errors = [c for c in cases if c.agrees is None]
    if errors:
        lines += ["", "## Other compiler errors", ""]
        lines += [f"- {c.chip} {c.tiles}: {c.compiler_kind}: {c.message}" for c in errors]
    md = out_dir / "vmem_fit.md"
    md.write_text("\n".join(lines) + "\n")
    js = out_dir / "vmem_fit.json"
    js.write_text(jsonout.dumps({"shape": SHAPE, "agreement": [agree, len(judged)],
                              "cases": [attrs.asdict(c) for c in cases]}, indent=1))
    return md, js


def main(chips, *, out_dir="validation/results", quick: bool = False) -> int:
    from perfmodel.tpu_compile import aot_chip_name

    sweep = QUICK if quick else SWEEP
    resolved = [aot_chip_name(name) for name in chips]  # all before the first compile, seconds per chip
    if not resolved:
        raise ValueError("no chips to check, got chips=[]")
    cases = []
    for chip in resolved:
        for tiles in sweep:
            c = run_case(chip, tiles)
            cases.append(c)
            print(f"{chip:6s} {'x'.join(map(str, tiles)):15s} footprint {_mib(c.vmem_bytes):>6s} MiB "
                  f"+ spill {_mib(c.spill_bytes):>5s} "
                  f"limit {_mib(c.limit_bytes):>6s}: model {'fits' if c.predicted_fits else 'exceeds':7s} "
                  f"compiler {c.compiler_kind:12s} {'' if c.agrees else ('DISAGREE' if c.agrees is False else '?')}"
                  f" ({c.compile_s:.1f} s)", flush=True)
    md, js = write_report(cases, out_dir)
    judged = [c for c in cases if c.agrees is not None]
    agree = sum(c.agrees for c in judged)
    print(f"agreement {agree}/{len(judged)}; report: {md}, {js}")
    return 0
