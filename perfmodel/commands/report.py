"""``perfmodel report``: the main job."""

from perfmodel.commands import add_jobs, chip_list, out_folder


def register(cli) -> None:
    p = cli.command("report", "write the perfmodel report (markdown, JSON, plots) on built-in defaults")
    p.add_argument("--out", type=out_folder, default="perfmodel-report",
                   help="output folder (default perfmodel-report)")
    p.add_argument("--chips", default=None, help="comma-separated chips (default v5e,v6e)")
    add_jobs(p)
    p.set_defaults(func=_report)


def _report(args) -> int:
    from perfmodel.hardware import DEFAULT_CHIPS
    from perfmodel.report import write_report

    # every chip named before the work starts (--out is checked by argparse: out_folder)
    chips = chip_list(args.chips) if args.chips is not None else list(DEFAULT_CHIPS)
    path = write_report(args.out, chips)
    print(f"wrote {path}")
    return 0
