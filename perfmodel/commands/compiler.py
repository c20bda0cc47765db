"""``perfmodel validate compiler`` and ``perfmodel validate xla-tiling``: checks against the TPU compiler."""

from __future__ import annotations

from perfmodel.commands import chip_list, dtype_list, in_file, int_in, out_file, out_folder

_DEFAULT_CHIPS = "v4,v5e,v5p,v6e,tpu7x"


def register(cli) -> None:
    p = cli.subcommand(
        "validate", "compiler",
        "FLOPs, bytes and roofline time of matmul / ragged_dot vs libtpu's cost_analysis (AOT, no TPU)")
    p.add_argument("--out", type=out_folder, default="validation/results/compiler",
                   help="directory for report.md and report.json (default validation/results/compiler)")
    p.add_argument("--chips", default=_DEFAULT_CHIPS, help=f"comma-separated chips (default {_DEFAULT_CHIPS})")
    p.set_defaults(func=_compiler)

    p = cli.subcommand(
        "validate", "xla-tiling",
        "XLA's ragged_dot tiling on TPU: extract it by compiling (--sweep) and score the fallback rule")
    p.add_argument("--sweep", action="store_true",
                   help="compile the sweep with libtpu and (re)write the table (minutes; resumable)")
    p.add_argument("--table", default=None,
                   help="table path (default: the one shipped in perfmodel/data)")
    p.add_argument("--chips", default=_DEFAULT_CHIPS, help=f"comma-separated chips (default {_DEFAULT_CHIPS})")
    p.add_argument("--dtypes", default="bf16,f32", help="comma-separated dtypes (default bf16,f32)")
    p.add_argument("--holdout", type=int_in(0), default=0, metavar="N",
                   help="also compile N random off-grid shapes per chip (not stored) and score the rule on them")
    p.add_argument("--dtype-holdout", default="bf16", help="dtype of the held-out shapes (default bf16)")
    p.add_argument("--out", type=out_folder, default="validation/results/compiler",
                   help="directory for the rule-agreement report xla_tiling_rule.md (default validation/results/compiler)")
    p.set_defaults(func=_xla_tiling)


def _compiler(args) -> int:
    from perfmodel.tpu_compile import libtpu_available
    from validation import compiler_checks

    chips = chip_list(args.chips, tpu_for="validate compiler (libtpu AOT compiles)")
    if not libtpu_available():
        raise ValueError("libtpu is not installed: pip install 'jax[tpu]' to compile for TPU targets")
    report = compiler_checks.run(chips=chips)
    md, js = compiler_checks.write(report, args.out)
    print(compiler_checks.summary(report))
    print(f"wrote {md} and {js}")
    return 0


def _xla_tiling(args) -> int:
    import pathlib
    import time

    from perfmodel import xla_tiling as xt
    from perfmodel.hardware import canonical_chip_names

    # names as the table keys them (trillium -> v6e), TPUs only; dtypes each chip has: an unknown, non-TPU or
    # unsupported one matched no entry and was scored "0 of 0"; a bad item was dropped
    chips = canonical_chip_names(chip_list(args.chips, tpu_for="validate xla-tiling (XLA's TPU ragged_dot)"))
    dtypes = dtype_list(args.dtypes, chips=chips)
    dtype_holdout, *more = dtype_list(args.dtype_holdout, "--dtype-holdout", chips=chips)
    if more:
        raise ValueError(f"--dtype-holdout must name one dtype, got dtype_holdout={args.dtype_holdout!r}")
    table_path = pathlib.Path(_table_arg(args.table, args.sweep)) if args.table is not None else xt.TABLE_PATH
    if args.sweep:
        from perfmodel.tpu_compile import libtpu_available

        if not libtpu_available():
            raise ValueError("--sweep needs libtpu: pip install 'jax[tpu]'")
        table = _load(xt, table_path)
        todo = [(c, d, call) for c in chips for d in dtypes for call in xt.sweep_shapes(c, d)
                if xt.tiling_key(c, *call[:4], d, call[4]) not in table]
        print(f"{len(table)} tilings in {table_path}; compiling {len(todo)} more")
        t0 = time.perf_counter()
        for i, (c, d, (m, k, n, g, v)) in enumerate(todo, 1):
            try:
                t = xt.extract_ragged_dot_tiling(c, m, k, n, g, d, variant=v)
            except Exception as err:  # noqa: BLE001 - report and keep sweeping
                print(f"  {c} {d} {v} m={m} k={k} n={n} G={g}: {type(err).__name__}: {str(err)[:200]}")
                continue
            table[t.key] = t
            if i % 25 == 0 or i == len(todo):
                xt.save_table(table.values(), table_path, **_provenance())
                print(f"  {i}/{len(todo)} compiled, {time.perf_counter() - t0:.0f} s")
    report = xt.rule_agreement(_load(xt, table_path), chips=chips, dtypes=dtypes)
    if not report.total:
        raise ValueError(f"no extracted tilings of chips={','.join(chips)} dtypes={','.join(dtypes)} in "
                         f"{str(table_path)!r}: nothing to score (--sweep compiles them)")
    print(report.text)
    md = report.markdown
    if args.holdout:
        held, skipped = {}, 0
        for c in chips:
            for m, k, n, g, v in xt.holdout_calls(args.holdout, seed=0):
                try:
                    t = xt.extract_ragged_dot_tiling(c, m, k, n, g, dtype_holdout, variant=v)
                except Exception as err:  # noqa: BLE001 - e.g. weights larger than HBM
                    print(f"  skipped {c} m={m} k={k} n={n} G={g}: {str(err)[:120]}")
                    skipped += 1
                    continue
                held[t.key] = t
        hold = xt.rule_agreement(held, chips=chips)
        print("\nheld-out random shapes (seed 0, not in the table):\n" + hold.text)
        body = hold.markdown.split("\n", 4)[-1]  # drop the title lines
        md += (f"\n## Held out: {args.holdout} random off-grid shapes per chip ({dtype_holdout}, seed 0)\n\n"
               "m a multiple of 8 in [8, 32768]; k, n multiples of 64 in [64, 12288]; G in [1, 64] "
               f"(`perfmodel.xla_tiling.holdout_calls`). Compiled, not stored in the table; {skipped} calls "
               "skipped because the compiler refused them (e.g. weights larger than HBM).\n\n" + body)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "xla_tiling_rule.md").write_text(md + "\n")
    print(f"wrote {out / 'xla_tiling_rule.md'}")
    return 0


def _table_arg(text: str, sweep: bool) -> str:
    """``--table``: an existing file to score; with ``--sweep`` also a new file to start (a missing table
    is then empty, as :func:`perfmodel.xla_tiling.load_table` reads it)."""
    import argparse

    try:
        return (out_file if sweep else in_file)(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"--table: {err}") from None


def _load(xt, path):
    try:
        return xt.load_table(path)
    except (ValueError, OSError) as err:
        raise ValueError(f"--table: {err}") from None


def _provenance() -> dict:
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {"made_by": "perfmodel validate xla-tiling --sweep", "jax": version("jax"),
            "libtpu": version("libtpu")}
