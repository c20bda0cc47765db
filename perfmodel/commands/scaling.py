"""Scaling-law commands: scaling fit, optimal, time-optimal, recipe-check, heldout-variants; validate chinchilla."""

from __future__ import annotations

import pathlib
import sys

from perfmodel import jsonout
from perfmodel.commands import add_jobs, comma_list, in_file, int_in, out_file, out_folder, positive

LAWS = ("chinchilla", "epoch", "joint-moe", "fine-grained", "fitted")
MAX_RESAMPLES = 100_000  # each resample is a refit (ms to s); percentile intervals need ~1e3-1e4, and more
                         # would run for days: a larger value is a typo, refused before any work


def register(cli) -> None:
    from perfmodel.scaling.optimal import DEFAULT_EXPANSION, DEFAULT_EXPERTS

    p = cli.subcommand("scaling", "fit", "fit dense and MoE scaling laws to training results (JSONL)",
                       epilog="example: perfmodel scaling fit validation/results/arith_full.jsonl --out out/")
    p.add_argument("results", type=in_file, help="JSONL file, one finished training run per line")
    p.add_argument("--out", type=out_folder, default=None, help="directory for scaling_fit.md/.json and plots "
                                               "(default: next to RESULTS)")
    p.add_argument("--loss", default="eval", choices=["eval", "train"],
                   help="which final loss to fit (default: held-out eval loss)")
    p.add_argument("--params", default="active_non_embedding",
                   help="parameter count used as N (default active_non_embedding)")
    p.add_argument("--resamples", type=int_in(1, MAX_RESAMPLES), default=500, help="bootstrap resamples (default 500)")
    p.add_argument("--grid", default="small", choices=["tiny", "small", "full"],
                   help="initialisation grid: 4, 72 (default) or 4500 starting points")
    p.add_argument("--average-seeds", action="store_true",
                   help="average repeats (seeds) of each configuration before fitting; writes scaling_fit_avg.*")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int_in(0), default=0)
    add_jobs(p)
    p.set_defaults(func=_fit)

    p = cli.subcommand("scaling", "optimal", "compute-optimal parameters and tokens at a FLOP budget",
                       epilog="example: perfmodel scaling optimal --compute 1e21 --law joint-moe --experts 8")
    p.add_argument("--compute", type=float, required=True, help="training compute in FLOPs")
    p.add_argument("--law", default="chinchilla", choices=LAWS)
    p.add_argument("--experts", type=float, default=None,
                   help=f"experts E (joint-moe, a whole number; default: table over E = {', '.join(map(str, DEFAULT_EXPERTS))}) "
                        f"or expansion rate (fine-grained, default {DEFAULT_EXPANSION:g}); with --law fitted "
                        f"selects the MoE fit")
    p.add_argument("--granularity", type=float, default=None,
                   help="fine-grained law granularity G >= 1 (default: optimal.DEFAULT_GRANULARITY, "
                        "printed in the G column)")
    p.add_argument("--results", type=in_file, default=None, help="results JSONL for --law fitted")
    p.add_argument("--formula", action="store_true",
                   help="also print the sympy-derived closed forms N_opt(C), D_opt(C), L*(C), D/N")
    p.add_argument("--json", action="store_true")
    add_jobs(p)
    p.set_defaults(func=_optimal)

    p = cli.subcommand("scaling", "time-optimal",
                       "time-optimal vs FLOP-optimal model size on a chip for a time budget (dense and MoE)",
                       epilog="example: perfmodel scaling time-optimal --chip v5e --hours 24 --experts 8")
    p.add_argument("--chip", default="v5e")
    p.add_argument("--hours", type=float, default=24.0, help="time budget in chip-hours (default 24)")
    p.add_argument("--experts", type=int_in(2), default=8, help="experts of the MoE (top-1; default 8)")
    p.add_argument("--ffn", default="ideal", choices=["ideal", "ideal-fused", "xla-ragged-dot"],
                   help="MoE FFN time: roofline of ragged_dot at ideal traffic (default), fused kernel at ideal "
                        "traffic, or XLA ragged_dot from the kernel tiling model (dense drhs)")
    p.add_argument("--tokens-per-chip-step", type=int_in(1), default=16384,
                   help="tokens per chip per training step (default 16384)")
    p.add_argument("--plot", type=out_file, default=None, metavar="PNG", help="write loss vs size at the time budget")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_time_optimal)

    p = cli.subcommand("scaling", "recipe-check",
                       "learning-rate sensitivity per budget: does tuning lr change the held-out prediction?",
                       epilog="example: perfmodel scaling recipe-check validation/results/arith_full.jsonl "
                              "validation/results/arith_lr.jsonl")
    p.add_argument("base", type=in_file, help="JSONL of the study at the recipe's learning rate")
    p.add_argument("lr_runs", type=in_file, help="JSONL of the same grid at lr x0.5 and x2 (perfmodel train sweep --lr-scale)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds to compare, averaged when several (default 0)")
    p.add_argument("--resamples", type=int_in(1, MAX_RESAMPLES), default=200, help="bootstrap resamples of the two laws (default 200)")
    p.add_argument("--out", type=out_folder, default=None,
                   help="directory for recipe_check.md/.json (default: next to BASE)")
    add_jobs(p)
    p.set_defaults(func=_recipe_check)

    p = cli.subcommand("scaling", "heldout-variants",
                       "held-out check under other choices of N and of fitted widths, chosen on earlier folds",
                       epilog="example: perfmodel scaling heldout-variants validation/results/arith_full.jsonl "
                              "(2.5 min on the 2-core Xeon quoted in the README)")
    p.add_argument("results", type=in_file, help="JSONL of the study (at least 4 compute budgets)")
    p.add_argument("--window", type=int, default=3,
                   help="widths kept per fitted budget, nearest its best seed-mean width (default 3)")
    p.add_argument("--out", type=out_folder, default=None,
                   help="directory for heldout_variants.md/.json (default: next to RESULTS)")
    add_jobs(p)
    p.set_defaults(func=_heldout_variants)

    p = cli.subcommand("validate", "chinchilla",
                       "refit Chinchilla's 245 points with Epoch AI's protocol and compare with their estimates")
    p.add_argument("--grid", default="small", choices=["tiny", "small", "full"],
                   help="initialisation grid: 4, 72 (default) or Epoch's 4500 starting points")
    p.add_argument("--resamples", type=int_in(1, MAX_RESAMPLES), default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--out", type=out_folder, default=None, help="directory for chinchilla_refit.md/.json "
                                               "(default validation/results)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    add_jobs(p)
    p.set_defaults(func=_validate_chinchilla)


def _validate_chinchilla(args) -> int:
    from perfmodel.scaling import fit as F
    from validation import chinchilla as V

    r = V.refit(grid=F.GRIDS[args.grid], n_resamples=args.resamples, seed=args.seed)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(V.__file__).resolve().parent / "results"
    paths = V.write_reports(r, out)
    if args.json:
        print(jsonout.dumps(V.report_json(r), indent=2))
    else:
        print(V.report_markdown(r))
        print("wrote " + ", ".join(str(p) for p in paths) + (" (+ .svg)" if len(paths) > 2 else ""))
    return 0 if r.ok else 1


def _recipe_check(args) -> int:
    from validation import recipe_check as R

    seeds = comma_list(args.seeds, int, "--seeds", "integers")
    r = R.run(args.base, args.lr_runs, seeds=seeds, n_resamples=args.resamples)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.base).parent
    command = f"perfmodel scaling recipe-check {args.base} {args.lr_runs}" + (
        f" --seeds {args.seeds}" if args.seeds != "0" else "")
    md, js = R.write_reports(r, out, command)
    print(R.report_markdown(r, command))
    print(f"wrote {md} and {js}")
    return 0


def _heldout_variants(args) -> int:
    import sys

    from validation import heldout_variants as H

    if args.window < 2:
        raise ValueError(f"--window must be at least 2 widths per budget, got --window={args.window}")
    r = H.run(args.results, window=args.window, progress=lambda m: print(m, file=sys.stderr, flush=True))
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.results).parent
    command = f"perfmodel scaling heldout-variants {args.results}" + (
        f" --window {args.window}" if args.window != H.DEFAULT_WINDOW else "")
    md, js = H.write_reports(r, out, command)
    print(H.report_markdown(r, command))
    print(f"wrote {md} and {js}")
    return 0


def _optimal(args) -> int:
    from perfmodel.scaling import optimal as O
    from perfmodel.tables import text_table

    positive("--compute", args.compute)
    if args.granularity is not None and args.law != "fine-grained":
        raise ValueError(f"--granularity applies to --law fine-grained only, got --law {args.law}")
    if args.results is not None and args.law != "fitted":
        raise ValueError(f"--results applies to --law fitted only, got --law {args.law}")
    skipped: list[str] = []
    rows = O.optimal_rows(args.compute, law=args.law, experts=args.experts, granularity=args.granularity,
                          results=args.results, skipped=skipped)
    for why in skipped:  # stderr: the table (or --json) on stdout stays the answer
        print(f"skipped group: {why}", file=sys.stderr)
    if args.json:
        print(jsonout.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    print(f"compute-optimal allocation at C = {args.compute:.3g} FLOPs ({args.law})")
    print(text_table(O.ROW_HEADERS, [r.cells() for r in rows]))
    for note in O.notes(args.law, rows):
        print(note)
    if args.formula:
        import sympy as sp

        from perfmodel.scaling import laws

        e = laws.compute_optimal_exprs()
        print(f"\nderived from L = {laws.chinchilla_loss_expr()} on C = c_f N D (sympy):")
        for name in ("params", "tokens", "loss", "tokens_per_param", "a", "b"):
            print(f"  {name} = {sp.sstr(getattr(e, name))}")
    return 0


def _time_optimal(args) -> int:
    from perfmodel.scaling import hardware_aware as H
    from perfmodel.tables import text_table

    positive("--hours", args.hours)
    H.check_time_budget(args.hours * 3600, chip=args.chip, name="--hours", value=args.hours)
    res = H.compare(chip=args.chip, time_s=args.hours * 3600, n_experts=args.experts, ffn=args.ffn,
                    tokens_per_step=args.tokens_per_chip_step, plot_path=args.plot)
    if args.json:
        print(jsonout.dumps([r.as_dict() for r in res], indent=2))
        return 0
    print(f"time budget {args.hours:g} chip-hours on {res[0].chip}; loss from the joint MoE law "
          f"(Ludziejewski et al. 2025); step time from perfmodel roofline (decoder_train_step), MoE FFN: {args.ffn}")
    print(text_table(H.HEADERS, [r.cells() for r in res]))
    lo, hi = min(H.DEPTHS), max(H.DEPTHS)
    for r in res:  # argmin over the family: at its end the loss may still fall beyond the depths searched
        if r.size.n_layers in (lo, hi):
            print(f"note: {r.arch} {r.choice} is the family's {'smallest' if r.size.n_layers == lo else 'largest'} "
                  f"member (L={r.size.n_layers} of {lo}..{hi}): the optimum may lie outside the depths searched")
        if r.tokens < H.GLOBAL_BATCH_TOKENS:  # the budget does not buy one optimizer step of this model
            print(f"note: {r.arch} {r.choice} trains {r.tokens:,.0f} tokens, fewer than one global batch of "
                  f"{H.GLOBAL_BATCH_TOKENS:,}: less than one optimizer step, so the time budget is too small for "
                  "this family")
    print(H.ASSUMPTIONS)
    if args.plot:
        png = pathlib.Path(args.plot).with_suffix(".png")  # plots.save writes PNG + SVG under this stem
        print(f"wrote {png} and {png.with_suffix('.svg')}")
    return 0


def _fit(args) -> int:
    from perfmodel.scaling import fit as F
    from perfmodel.scaling import study
    from perfmodel.scaling.results import check_params_key

    check_params_key(args.params, name="--params")
    results = pathlib.Path(args.results)
    out = pathlib.Path(args.out) if args.out else results.parent
    s = study.run_study(results, loss=args.loss, params_key=args.params, n_resamples=args.resamples,
                        grid=F.GRIDS[args.grid], seed=args.seed, average_seeds=args.average_seeds)
    paths = study.write_outputs(s, out, plots=not args.no_plots,
                                stem="scaling_fit_avg" if args.average_seeds else "scaling_fit")
    print(study.report_markdown(s))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
