"""``perfmodel validate kernel``: time the MoE FFN paths on the device at hand against the model."""

from __future__ import annotations

from perfmodel.commands import out_folder


def register(cli) -> None:
    p = cli.subcommand(
        "validate", "kernel",
        "time fused vs ragged_dot MoE FFN on this device and compare with the model (on CPU: fused kernel "
        "correctness only, plus the XLA ragged_dot path vs an F-chunked formulation against the calibrated cpu chip: roofline + page faults)",
        epilog="example: perfmodel validate kernel --sweep quick --out validation/results/kernel_cpu")
    p.add_argument("--sweep", default="quick", help="quick (~30 s on the quiet 2-core Intel Xeon) or full (~5.5-6 min there; longer on a loaded machine)")
    p.add_argument("--out", type=out_folder, default=None,
                   help="directory for results.jsonl/json, report.md and plots "
                        "(default validation/results/kernel_<chip>, e.g. kernel_cpu, kernel_v5e)")
    p.add_argument("--repeats", type=int, default=None,
                   help="fewest timed rounds per point after one warm-up (default 11 quick, 21 full)")
    p.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                   help="more rounds (up to 201) until each path has this much timed per point, so short programs "
                        "are not decided by scheduler noise (default 0.5 quick, 3 full; 0: exactly --repeats)")
    p.add_argument("--no-recalibrate", action="store_true",
                   help="CPU: use the saved cpu chip calibration only, skip the micro-kernel rates at run start")
    p.add_argument("--render", metavar="DIR", default=None,
                   help="time nothing: rebuild report.md, results.json summaries and plots of the saved run in DIR "
                        "from its results.json (e.g. after a perfmodel upgrade)")
    p.add_argument("--malloc", default="default", choices=("default", "steady"),
                   help="CPU heap control: default keeps glibc's heap (large temporaries fault fresh pages at every "
                        "call); steady re-runs the command in a child process whose heap reuses freed blocks "
                        "(GLIBC_TUNABLES; few page faults, like a TPU runtime's memory pool)")
    p.set_defaults(func=_validate_kernel)


def _argv(args, out: str) -> list[str]:
    """The same ``validate kernel`` call for a child process (allocator already set)."""
    argv = ["validate", "kernel", "--sweep", args.sweep, "--out", out, "--malloc", args.malloc]
    if args.repeats is not None:
        argv += ["--repeats", str(args.repeats)]
    if args.min_time is not None:
        argv += ["--min-time", repr(args.min_time)]
    if args.no_recalibrate:
        argv.append("--no-recalibrate")
    return argv


def _validate_kernel(args) -> int:
    from perfmodel.hardware import chip_for_device, get_chip
    from perfmodel.tpu_compile import default_device
    from validation import kernel_harness

    if args.render is not None:
        # --render times nothing: a timing option beside it would be silently ignored
        timing = (("--sweep", args.sweep, "quick"), ("--repeats", args.repeats, None), ("--min-time", args.min_time, None),
                  ("--out", args.out, None), ("--malloc", args.malloc, "default"),
                  ("--no-recalibrate", args.no_recalibrate, False))
        given = [option for option, value, default in timing if value != default]
        if given:
            raise ValueError(f"--render DIR re-renders a saved run and times nothing; drop {', '.join(given)} "
                             f"(got render={args.render!r})")
        paths = kernel_harness.render(args.render)
        print("wrote " + ", ".join(str(p) for p in paths if p.suffix in (".md", ".json")))
        return 0
    kernel_harness._check_sweep(args.sweep)
    if args.repeats is not None and args.repeats <= 0:
        raise ValueError(f"--repeats must be a positive integer, got repeats={args.repeats}")
    if args.min_time is not None:
        kernel_harness.check_min_time_s(args.min_time, "--min-time")
    device = default_device()
    chip = get_chip(device.device_kind) if device.platform == "tpu" else chip_for_device(device)
    out = args.out or f"validation/results/kernel_{chip.name}"
    env = kernel_harness.malloc_env(args.malloc) if device.platform == "cpu" else None
    if env is not None:
        import subprocess
        import sys

        print(f"CPU run with a steady heap: re-running in a child process with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} "
              f"(--malloc default keeps this process's heap)", flush=True)
        return subprocess.run([sys.executable, "-m", "perfmodel", *_argv(args, out)], env=env).returncode
    command = f"perfmodel validate kernel --sweep {args.sweep} --out {out}" + (
        f" --repeats {args.repeats}" if args.repeats else "") + (
        f" --min-time {args.min_time:g}" if args.min_time is not None else "") + (
        " --malloc steady" if args.malloc == "steady" and device.platform == "cpu" else "")
    results, paths = kernel_harness.run(sweep=args.sweep, out=out, repeats=args.repeats,
                                        min_time_s=args.min_time, device=device,
                                        command=command, recalibrate=not args.no_recalibrate)
    if results.cpu:
        s = kernel_harness.summarize_cpu(results.cpu)
        x = dict(s.extra)
        print(f"CPU XLA paths: predicted winner correct, calibrated cpu chip (roofline + page faults) "
              f"{int(x['chip_winner_correct'])}/{s.points}, measured rates {s.winner_correct}/{s.points}; "
              + "; ".join(f"median |pred/meas-1| {n} {v:.2f}" for n, v in s.median_abs_rel_err))
    if results.tpu:
        s = kernel_harness.summarize_tpu(results.tpu)
        print(f"{results.info.chip}: predicted winner correct {s.winner_correct}/{s.points}; "
              + "; ".join(f"median |pred/meas-1| {n} {v:.2f}" for n, v in s.median_abs_rel_err))
    bad = [r for r in results.correctness if not r.ok]
    if bad:
        print(f"fused kernel correctness FAILED at {len(bad)} shape(s)")
    bad_tpu = [r for r in results.tpu if not r.ok]
    if bad_tpu:
        print(f"fused kernel output vs ragged_dot FAILED at {len(bad_tpu)} TPU point(s) (tolerance "
              f"{bad_tpu[0].tolerance:g}): " + ", ".join(f"{r.point.label} (max rel diff {r.max_rel_diff:.1e})"
                                                        for r in bad_tpu))
    skipped = [e for e in results.errors if e not in results.failed]
    if skipped:
        print(f"{len(skipped)} point(s) skipped (the chip cannot hold the shape): " + "; ".join(skipped))
    if results.failed:
        print(f"{len(results.failed)} point(s) FAILED on {results.info.chip} (the run raised): "
              + "; ".join(results.failed))
    print("wrote " + ", ".join(str(p) for p in paths if p.suffix in (".md", ".json")))
    return 1 if bad or bad_tpu or results.failed else 0
