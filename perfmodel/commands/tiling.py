"""Tiling commands: validate timings, validate vmem, tiling bench."""

from __future__ import annotations

import pathlib

from perfmodel.commands import chip_list, int_in, out_folder

_DEFAULT_OUT = "validation/results"
# peak RSS of `/usr/bin/time -f %M perfmodel tiling bench --steps S` grows by 2.30 GB from S=1e6 (362 MB) to
# S=1e7 (2662 MB) on the 2-core dev VM: 256 bytes per step, rounded up
_WALKER_BYTES_PER_STEP = 300


def register(cli) -> None:
    p = cli.subcommand(
        "validate", "timings",
        "predicted vs measured TPU times of XLA ragged_dot and tokamax's Pallas grouped matmul",
        epilog="example: perfmodel validate timings ../shared/data/tokamax/tpu_v5_lite --chip v5e --fit")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="tokamax autotuning-cache files (ragged_dot.json, pallas_mosaic_tpu_ragged_dot.json) "
                        "or a directory holding them")
    p.add_argument("--chip", required=True, help="chip the measurements were taken on (e.g. v5e)")
    p.add_argument("--fit", action="store_true",
                   help="fit the timing constants on these rows (prints them for perfmodel/tiling/params.py)")
    p.add_argument("--out", type=out_folder, default=_DEFAULT_OUT, help=f"report directory (default {_DEFAULT_OUT})")
    p.add_argument("--no-compile", action="store_true",
                   help="never compile with libtpu: XLA tilings from the shipped table or the fallback rule")
    p.set_defaults(func=_timings)

    p = cli.subcommand(
        "validate", "vmem",
        "VMEM-fit verdict of the tiling model vs the TPU compiler (libtpu AOT) over a tile sweep")
    p.add_argument("--chips", default="v4,v5e,v5p,v6e,tpu7x", help="comma-separated chips")
    p.add_argument("--out", type=out_folder, default=_DEFAULT_OUT, help=f"report directory (default {_DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="a few configs per chip (smoke test)")
    p.set_defaults(func=_vmem)

    p = cli.subcommand(
        "tiling", "gmm", "walk a grouped matmul kernel: traffic per operand, MXU FLOPs, steps, VMEM, time",
        epilog="example: perfmodel tiling gmm --chip v5e --impl xla M=131072 K=2048 N=768 G=128")
    p.add_argument("dims", nargs="*", metavar="NAME=VALUE",
                   help="M, K, N, G (equal groups of M/G rows) and, for megablox/tokamax, tm, tk, tn")
    p.add_argument("--chip", default="v5e")
    p.add_argument("--impl", default="xla", choices=["xla", "tokamax", "megablox"],
                   help="XLA's ragged_dot kernel (tiling read from libtpu), tokamax's or megablox's Pallas kernel")
    p.add_argument("--kind", default="forward", choices=["forward", "dlhs", "drhs"])
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--ideal", action="store_true", help="ideal constants (DEFAULT) instead of FITTED")
    p.set_defaults(func=_gmm)

    p = cli.subcommand("tiling", "bench", "time the vectorised grid walker on a large grouped matmul")
    p.add_argument("--steps", type=int_in(1), default=100_000,
                   help="approximate number of grid steps (the walk holds about "
                        f"{_WALKER_BYTES_PER_STEP} bytes per step)")
    p.add_argument("--chip", default="v5e")
    p.set_defaults(func=_bench)


def _timings(args) -> int:
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from perfmodel.hardware import get_tpu_chip
    from perfmodel.tables import text_table
    from perfmodel.tiling import params as P
    from validation import timings as V

    chip = get_tpu_chip(args.chip, what="validate timings (TPU kernel timings)")
    files = V.expand_paths(args.files)
    rows = [r for f in files for r in V.load_rows(f)]
    if not rows:
        raise ValueError(f"no measured rows in {[str(f) for f in files]}")
    before = V.evaluate(rows, chip, P.DEFAULT, allow_compile=not args.no_compile)
    if args.fit:
        params, loss = V.fit_params(before, chip)
        print("Fitted constants (paste into perfmodel/tiling/params.py as FITTED):")
        print(f"FITTED = TimingParams(\n    mxu_fill_rows={params.mxu_fill_rows:.3f},\n"
              f"    vpu_ops_per_cycle={params.vpu_ops_per_cycle:.1f},\n"
              f"    grid_step_overhead_s={params.grid_step_overhead_s:.4g},\n"
              f"    source={params.source!r},\n)")
    else:
        params = P.FITTED
    after = V.retimed_results(before, params)
    held_out = None
    if args.fit:
        try:
            held_out = V.cross_validate(before, chip)
        except V.HeldOutTooSmall as err:  # the fit stands; only its held-out check cannot be made
            print(f"\nheld-out check skipped: {err}")
    print(f"\n{len(rows)} measured rows from {', '.join(f.name for f in files)} on {chip.name}")
    print(text_table(["implementation", "kind", "rows", "median before", "p90 before", "median after",
                      "p90 after"], V.summary_rows(before, after)))
    fa, fb = V.faster_checks(after), V.faster_checks(before)
    print(f"\nfaster implementation predicted correctly: {sum(f.correct for f in fa)}/{len(fa)} after, "
          f"{sum(f.correct for f in fb)}/{len(fb)} before; median |pred speedup / meas speedup - 1| "
          f"{100 * V.speedup_error(fa):.1f}% after, {100 * V.speedup_error(fb):.1f}% before")
    if held_out is not None:
        print("\nheld-out (2-fold by call, constants fitted on the other half):")
        print(text_table(["implementation", "kind", "rows", "median", "p90"],
                         [[s.implementation, s.kind, s.rows, f"{100 * s.median_abs_err:.1f}%",
                           f"{100 * s.p90_abs_err:.1f}%"] for s in V.summarize(held_out)]))
    skipped = sum(not r.modelled for r in after)
    if skipped:
        print(f"not modelled (excluded): {skipped} XLA drhs rows (see report)")
    md, js = V.write_report(args.out, chip, [pathlib.Path(f) for f in args.files], before, after, params,
                            args.fit, held_out)
    print(f"report: {md}, {js}")
    return 0


def _vmem(args) -> int:
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from validation import vmem_fit

    chips = chip_list(args.chips, tpu_for="validate vmem (libtpu AOT compiles)")
    return vmem_fit.main(chips, out_dir=args.out, quick=args.quick)


def _gmm(args) -> int:
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from perfmodel.api import beyond_hbm
    from perfmodel.hardware import format_si, get_tpu_chip
    from perfmodel.tables import text_table
    from perfmodel.tiling import params as P
    from perfmodel.tiling.predict import megablox_time, tokamax_time, xla_ragged_dot_time
    from perfmodel.tiling.vmem import vmem_verdict

    dims = {}
    known = {"M", "K", "N", "G", "tm", "tk", "tn"}
    for item in args.dims:
        if "=" not in item:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        key, value = (x.strip() for x in item.split("=", 1))
        if key not in known:
            raise ValueError(f"unknown dimension {key!r}; known: {sorted(known)}")
        if key in dims:
            raise ValueError(f"{key} given twice ({key}={dims[key]} and {item})")
        try:
            dims[key] = int(value)
        except ValueError:
            raise ValueError(f"{key} must be a positive integer, got {key}={value!r}") from None
        if dims[key] <= 0:
            raise ValueError(f"{key} must be a positive integer, got {key}={dims[key]}")
    if args.impl == "xla" and {"tm", "tk", "tn"} & dims.keys():
        raise ValueError("--impl xla uses the tiles XLA picks; tm, tk, tn apply to --impl tokamax and megablox, got "
                         + ", ".join(f"{k}={dims[k]}" for k in ("tm", "tk", "tn") if k in dims))
    for need in ("M", "K", "N", "G") + (("tm", "tk", "tn") if args.impl != "xla" else ()):
        if need not in dims:
            raise ValueError(f"missing {need}=VALUE for --impl {args.impl}")
    M, K, N, G = dims["M"], dims["K"], dims["N"], dims["G"]
    if G <= 0 or M % G:
        raise ValueError(f"M must be a positive multiple of G (equal groups), got M={M}, G={G}")
    gs = [M // G] * G
    chip = get_tpu_chip(args.chip, what="tiling gmm (the tiling walker)")
    # the three operands (the ideal ragged_dot's bytes; the same tensors in another order for every --kind)
    # must fit the chip's HBM: a bigger shape cannot run, and --impl xla would ask libtpu to compile it, for minutes
    too_big = beyond_hbm("ragged_dot", chip=chip.name, dtype=args.dtype, M=M, K=K, N=N, G=G)
    if too_big:
        raise ValueError(too_big)
    params = P.DEFAULT if args.ideal else P.FITTED
    if args.impl == "xla":
        t = xla_ragged_dot_time(chip, gs, K, N, kind=args.kind, dtype=args.dtype, params=params)
    else:
        if args.impl == "megablox" and args.kind != "forward":
            raise ValueError(f"--impl megablox models the forward gmm only, got kind={args.kind!r}")
        tiles = dict(tm=dims["tm"], tk=dims["tk"], tn=dims["tn"])
        try:  # the kernel's BlockSpecs check the user's tiles (the TPU (8, 128) rule); say which tiles
            if args.impl == "tokamax":
                t = tokamax_time(chip, gs, K, N, **tiles, kind=args.kind, dtype=args.dtype, params=params)
            else:
                c = megablox_time(chip, gs, K, N, **tiles, dtype=args.dtype, params=params)
                t = None
        except ValueError as err:
            raise ValueError(", ".join(f"{k}={v}" for k, v in tiles.items())
                             + f" for M={M}, K={K}, N={N}, G={G} ({args.impl} {args.kind}): {err}") from None
    cost = c if t is None else t.kernel
    print(f"{args.impl} {args.kind} M={M} K={K} N={N} G={G} on {chip.name} "
          f"({'ideal constants' if args.ideal else 'FITTED constants, perfmodel/tiling/params.py'})")
    if t is not None and cost is None:
        print(f"XLA runs this call without a Mosaic kernel ({t.lowering}); roofline time {format_si(t.time_s, 's')}")
        return 0
    if t is not None:
        print(f"tiles (tm, tk, tn) = {t.tiles} from {t.tiling_source}")
    print(text_table(["operand", "copies", "HBM bytes"],
                     [[o.name, o.copies, format_si(o.hbm_bytes, "B")] for o in cost.operands]))
    v = vmem_verdict(cost.vmem_bytes, chip, cost.vmem_limit_bytes, spill_bytes=cost.vmem_spill_bytes)
    print(f"grid steps {cost.grid_steps} (cores {cost.cores}); MXU FLOPs {format_si(cost.mxu_flops)} for "
          f"{format_si(cost.useful_flops)} useful ({100 * cost.mxu_utilisation:.0f}%)")
    print(f"VMEM {format_si(cost.vmem_bytes, 'B')} + spill est. {format_si(v.spill_bytes, 'B')} vs limit "
          f"{format_si(v.limit_bytes, 'B')}: {'fits' if v.fits else 'EXCEEDS'}")
    if not v.fits and args.impl != "xla":
        # tiles the user chose that the compiler would refuse: there is no kernel to time
        print(f"time: none; with tiles (tm, tk, tn) = ({dims['tm']}, {dims['tk']}, {dims['tn']}) the kernel needs "
              f"more VMEM than {chip.name}'s {format_si(v.limit_bytes, 'B')} limit, so it does not compile; "
              "use smaller tm, tk or tn")
        return 1
    if not v.fits:  # XLA's own tiling compiles, so the VMEM estimate is what is wrong here
        print("note: the VMEM estimate exceeds the limit for tiles the compiler chose itself (they compile); "
              "the estimate is off for this shape, the time below assumes the kernel as tiled")
    print(f"time {format_si(cost.time_s, 's')} = launch {format_si(cost.launch_s, 's')} + prologue "
          f"{format_si(cost.prologue_s, 's')} + pipelined {format_si(cost.pipelined_s, 's')} + step overhead "
          f"{format_si(cost.overhead_s, 's')} + epilogue {format_si(cost.epilogue_s, 's')}; compute "
          f"{format_si(cost.compute_s, 's')}, DMA {format_si(cost.dma_s, 's')}")
    if t is not None and t.extra_s:
        print(f"plus work outside the kernel (XLA's rhs pre-transpose): {format_si(t.extra_s, 's')}; "
              f"total {format_si(t.time_s, 's')}")
    return 0


def _bench(args) -> int:
    import time

    import numpy as np

    from perfmodel.tiling.gmm import gmm_spec
    from perfmodel.hardware import check_memory
    from perfmodel.tiling.walker import walk

    check_memory(args.steps * _WALKER_BYTES_PER_STEP, f"--steps={args.steps} ({_WALKER_BYTES_PER_STEP} bytes per step)",
                 fix=lambda avail: f"use --steps <= {int(avail / 2 / _WALKER_BYTES_PER_STEP):,}")
    # grid (tiles_n, ~m/tm + G - 1, tiles_k) with tm=128, tk=512, tn=512, k=1024, n=4096: 16 steps per row tile
    G = 64
    tiles_m = max(1, args.steps // 16 - G + 1)
    m = tiles_m * 128
    rng = np.random.default_rng(0)
    gs = rng.multinomial(m, np.ones(G) / G)
    spec = gmm_spec(gs, 1024, 4096, tm=128, tk=512, tn=512)
    t0 = time.perf_counter()
    cost = walk(spec, args.chip)
    dt = time.perf_counter() - t0
    print(f"walked {cost.grid_steps} grid steps of {spec.name} (m={m}, k=1024, n=4096, G={G}, tiles 128x512x512) "
          f"on {cost.chip} in {dt:.3f} s ({cost.grid_steps / dt:.3g} steps/s)")
    print(f"hbm_bytes={cost.hbm_bytes:.4g} mxu_flops={cost.mxu_flops:.4g} useful_flops={cost.useful_flops:.4g} "
          f"time_s={cost.time_s:.4g}")
    return 0
