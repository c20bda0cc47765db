"""``perfmodel report``: the main job."""


def register(cli) -> None:
    p = cli.command("report", "write the perfmodel report (markdown, JSON, plots) on built-in defaults")
    p.add_argument("--out", default="perfmodel-report", help="output folder (default perfmodel-report)")
    p.add_argument("--chips", default=None, help="comma-separated chips (default v5e,v6e)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    import pathlib

    from perfmodel.commands import chip_list
    from perfmodel.hardware import DEFAULT_CHIPS
    from perfmodel.report import write_report

    # every chip named and the folder checked before the ~40 s of work
    chips = chip_list(args.chips) if args.chips is not None else list(DEFAULT_CHIPS)
    if pathlib.Path(args.out).exists() and not pathlib.Path(args.out).is_dir():
        raise ValueError(f"--out must be a folder, got out={args.out!r}, an existing file")
    path = write_report(args.out, chips)
    print(f"wrote {path}")
    return 0
