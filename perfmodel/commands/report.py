"""``perfmodel report``: the main job."""


def register(cli) -> None:
    p = cli.command("report", "write the perfmodel report (markdown, JSON, plots) on built-in defaults")
    p.add_argument("--out", default="perfmodel-report", help="output folder (default perfmodel-report)")
    p.add_argument("--chips", default=None, help="comma-separated chips (default v5e,v6e)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    from perfmodel.hardware import DEFAULT_CHIPS
    from perfmodel.report import write_report

    chips = [c for c in args.chips.split(",") if c.strip()] if args.chips else list(DEFAULT_CHIPS)
    path = write_report(args.out, chips)
    print(f"wrote {path}")
    return 0
