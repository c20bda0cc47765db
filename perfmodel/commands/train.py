"""``perfmodel train sweep``: IsoFLOP studies of dense and MoE transformers on the arithmetic task."""

from __future__ import annotations

import pathlib
import sys

from perfmodel.commands import out_file

_RESULTS = pathlib.Path(__file__).resolve().parents[2] / "validation" / "results"


def register(cli) -> None:
    p = cli.subcommand("train", "sweep", "IsoFLOP sweep (resumable JSONL): dense vs MoE on the arithmetic task",
                       epilog="example: perfmodel train sweep --study quick --arch both")
    p.add_argument("--study", default="quick", help="quick (CI, < 3 min) or full (about 4 h on 2 CPU cores; README, Answer 2)")
    p.add_argument("--arch", default="both", help="dense, moe or both")
    p.add_argument("--experts", type=int, default=8, help="MoE experts E (default 8)")
    p.add_argument("--top-k", type=int, default=2, help="MoE experts per token k (default 2)")
    p.add_argument("--moe-impl", default="blocked", help="blocked (CPU), ragged_dot, reference or fused (TPU)")
    p.add_argument("--dtype", default="float32", help="float32 (CPU default) or bfloat16")
    p.add_argument("--task", default=None, help="task family override, e.g. add3, mul3, add5+mul3")
    p.add_argument("--budgets", default=None,
                   help="comma-separated training FLOP budgets overriding the study's, e.g. 1e15,1e16 on a TPU")
    p.add_argument("--seeds", default=None, help="comma-separated seeds overriding the study's, e.g. 0 or 0,1")
    p.add_argument("--lr-scale", type=float, default=1.0,
                   help="multiply the recipe's peak learning rate (recipe-sensitivity checks; tags run ids)")
    p.add_argument("--out", type=out_file, default=None,
                   help="JSONL path (default validation/results/arith_<study>.jsonl)")
    p.set_defaults(func=_sweep)


def _sweep(args) -> int:
    import attrs

    from perfmodel.commands import comma_list, positive
    from validation.arith import moe, sweep

    if args.study not in sweep.STUDIES:
        raise ValueError(f"--study must be one of {sorted(sweep.STUDIES)}, got study={args.study!r}")
    archs = {"dense": ("dense",), "moe": ("moe",), "both": ("dense", "moe")}.get(args.arch)
    if archs is None:
        raise ValueError(f"--arch must be dense, moe or both, got arch={args.arch!r}")
    if args.moe_impl not in moe.IMPLEMENTATIONS:
        raise ValueError(f"--moe-impl must be one of {moe.IMPLEMENTATIONS}, got moe_impl={args.moe_impl!r}")
    if args.experts < 2 or not 1 <= args.top_k <= args.experts:
        raise ValueError(f"need experts >= 2 and 1 <= top_k <= experts, got experts={args.experts}, top_k={args.top_k}")
    study = sweep.STUDIES[args.study]
    if args.task is not None:  # an empty value is refused by planning, not replaced by the study's task
        study = attrs.evolve(study, task=args.task)
    if args.budgets is not None:  # "" is an error (comma_list), not the study's budgets
        # a budget or seed twice gives the same run ids twice: each run trained and recorded twice
        budgets = comma_list(args.budgets, float, "--budgets", "numbers", unique="budget")
        for b in budgets:
            positive("--budgets", b)
        study = attrs.evolve(study, budgets_flops=budgets)
    if args.seeds is not None:
        seeds = comma_list(args.seeds, int, "--seeds", "integers", unique="seed")
        if min(seeds) < 0:
            raise ValueError(f"--seeds must be non-negative integers, got seeds={args.seeds!r}")
        study = attrs.evolve(study, seeds=seeds)
    positive("--lr-scale", args.lr_scale)
    study = attrs.evolve(study, lr_scale=args.lr_scale)
    out = pathlib.Path(args.out) if args.out else _RESULTS / f"arith_{study.name}.jsonl"
    # planning builds every run's config: a bad --task or --dtype is refused here, before any output
    sweep.plan(study, archs=archs, n_experts=args.experts, top_k=args.top_k, moe_impl=args.moe_impl, dtype=args.dtype)

    from perfmodel.hardware import chip_for_device

    chip = chip_for_device()
    peak = chip.bf16_flops_per_s if args.dtype == "bfloat16" else (chip.f32_flops_per_s or chip.bf16_flops_per_s)
    print(f"device: {chip.name}, peak {peak / 1e9:.1f} GFLOP/s ({args.dtype})")
    recs = sweep.run_study(study, out, archs=archs, n_experts=args.experts, top_k=args.top_k,
                           moe_impl=args.moe_impl, dtype=args.dtype, peak_flops_per_s=peak,
                           log=lambda s: print(s, flush=True))
    best = {}
    bad = [r for r in recs if sweep.diverged(r)]
    for r in recs:
        if sweep.diverged(r):
            continue
        key = (r["arch"], r["budget_flops"])
        if key not in best or r["held_out_loss"] < best[key]["held_out_loss"]:
            best[key] = r
    print("best size per budget (held-out loss):")
    for (arch, c), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  C={c:.0e} {arch:>12}: N_active={r['params_active']:,} N_total={r['params_total']:,} "
              f"tokens={r['tokens']:,} loss={r['held_out_loss']:.4f}")
    if bad:  # recorded (a rerun would diverge again) but the sweep did not do its job: say so in the exit status
        print(f"{len(bad)} of {len(recs)} runs diverged (non-finite loss), e.g. {bad[0]['run_id']}; they are in "
              f"{out} with status 'diverged' and scaling fit skips them; peak lr {bad[0]['config']['optim']['peak_lr']:.3g}"
              f" at --lr-scale {args.lr_scale:g}: try a smaller --lr-scale", file=sys.stderr)
        return 1
    return 0
