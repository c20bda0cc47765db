"""``perfmodel fusion`` (prediction + explanation) and ``perfmodel plot roofline|fusion-map``."""

from __future__ import annotations

from perfmodel import jsonout
from perfmodel.commands import chip_list, int_in, out_folder


def _shape_args(p, *, defaults: dict | None = None) -> None:
    """The MoE FFN shape options; required unless ``defaults`` gives values (the plot commands)."""
    d = defaults or {}

    def dim(flag, help):
        name = flag.lstrip("-")
        p.add_argument(flag, type=int, required=name not in d, default=d.get(name), help=help)

    dim("--tokens", "tokens before routing")
    dim("--D", "model width")
    dim("--F", "expert hidden width")
    dim("--E", "number of experts")
    p.add_argument("--k", type=int, default=d.get("k", 1), help="experts per token (default 1)")
    p.add_argument("--glu", action="store_true", help="SwiGLU: up and gate projections")
    p.add_argument("--activation", default=None, help="gelu, relu or silu (default: silu with --glu, else gelu)")
    p.add_argument("--dtype", default="bf16")


def register(cli) -> None:
    p = cli.command("fusion", "predict fused MoE kernel vs ragged_dot on a TPU, and explain why",
                    epilog="example: perfmodel fusion --chip v5e --tokens 4096 --D 2048 --F 8192 --E 8 --k 2 --glu")
    p.add_argument("--chip", default="v5e", help="TPU: v4, v5e, v5p, v6e, tpu7x (default v5e)")
    _shape_args(p)
    p.add_argument("--dist", default="uniform", choices=["uniform", "random", "skewed"],
                   help="group-size distribution over experts")
    p.add_argument("--tm", type=int, default=None, help="fused row tile (default: model's best)")
    p.add_argument("--tf", type=int, default=None, help="fused F chunk (default: model's best)")
    p.add_argument("--seed", type=int_in(0), default=0)
    p.add_argument("--compile", action="store_true",
                   help="ask libtpu for XLA's ragged_dot tiling when not in the shipped table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_fusion)

    p = cli.subcommand("plot", "roofline", "roofline per chip with each kernel of both MoE paths as a point")
    _shape_args(p, defaults=dict(tokens=4096, D=2048, F=8192, E=8, k=2))
    p.add_argument("--chips", default="v5e,v6e")
    p.add_argument("--out", type=out_folder, default="perfmodel-plots")
    p.set_defaults(func=_plot_roofline)

    p = cli.subcommand("plot", "fusion-map", "speedup heatmap over (tokens per expert, F/D) with the crossover")
    p.add_argument("--chip", default="v5e")
    p.add_argument("--D", type=int, default=2048)
    p.add_argument("--E", type=int, default=8)
    p.add_argument("--glu", action="store_true")
    p.add_argument("--n", type=int_in(2, 2000), default=200, help="grid points per axis, 2-2000 (default 200)")
    p.add_argument("--dtype", default="bf16", help="operand dtype: bf16 (default), f32, int8, fp8 where the chip has it")
    p.add_argument("--check", type=int_in(0, 2000), default=0, metavar="N",
                   help="also walk N random cells step by step (perfmodel fusion's model) and print how far the "
                        "map's closed forms are from it, 0-2000 (default 0)")
    p.add_argument("--out", type=out_folder, default="perfmodel-plots")
    p.set_defaults(func=_plot_map)


def _us(x: float) -> str:
    return f"{x * 1e6:.1f} us"


def prediction_json(p) -> dict:
    import attrs

    def op(o):
        d = attrs.asdict(o)
        d["bound"] = o.bound
        d["bytes_by_tensor"] = dict(o.bytes_by_tensor)
        return d

    return {
        "chip": p.chip, "tokens": p.tokens, "rows": p.rows, "D": p.D, "F": p.F, "E": p.E, "k": p.k,
        "glu": p.glu, "activation": p.activation, "dtype": p.dtype, "distribution": p.distribution,
        "group_sizes": list(p.group_sizes), "fused_tiles": {"tm": p.fused_tiles[0], "tf": p.fused_tiles[1]},
        "fused_time_s": p.fused_time_s, "unfused_time_s": p.unfused_time_s, "speedup": p.speedup,
        "sentence": p.sentence, "fused": op(p.fused), "unfused": [op(o) for o in p.unfused],
        "intermediate_bytes": p.intermediate_bytes, "weight_reread_bytes": p.weight_reread_bytes,
        "x_reread_bytes": p.x_reread_bytes, "params_source": p.params_source,
        "tiling_sources": list(p.tiling_sources),
    }


def _fusion(args) -> int:
    from perfmodel.fusion import predict_fusion
    from perfmodel.hardware import format_si
    from perfmodel.tables import text_table

    tiles = None
    if (args.tm is None) != (args.tf is None):
        raise ValueError(f"give both --tm and --tf or neither, got tm={args.tm}, tf={args.tf}")
    if args.tm is not None:
        tiles = (args.tm, args.tf)
    p = predict_fusion(chip=args.chip, tokens=args.tokens, D=args.D, F=args.F, E=args.E, k=args.k, glu=args.glu,
                       activation=args.activation, dtype=args.dtype, distribution=args.dist, tiles=tiles,
                       seed=args.seed, allow_compile=args.compile)
    if args.json:
        print(jsonout.dumps(prediction_json(p), indent=2))
        return 0
    print(f"MoE FFN on {p.chip}: tokens={p.tokens} k={p.k} -> rows={p.rows}, D={p.D}, F={p.F}, E={p.E}, "
          f"{'GLU ' if p.glu else ''}{p.activation}, {p.dtype}, groups {p.distribution} "
          f"({_rows(p.tokens_per_expert)} rows per expert on average)")
    rows = []
    for o in (*p.unfused, p.fused):
        rows.append([o.name, _us(o.time_s), o.bound, _us(o.compute_s), _us(o.memory_s), _us(o.overhead_s),
                     format_si(o.hbm_bytes, "B"), format_si(o.executed_flops),
                     f"{o.executed_flops / o.useful_flops:.2f}" if o.useful_flops else "-", o.grid_steps, o.tiles])
    print(text_table(["kernel", "time", "bound", "MXU", "DMA", "fixed", "HBM bytes", "FLOPs run",
                      "run/useful", "steps", "tiles"], rows))
    print(f"\nragged_dot path {_us(p.unfused_time_s)} (sum of its kernels) vs fused {_us(p.fused_time_s)}: "
          f"speedup {p.speedup:.2f}x")
    print(f"why: {p.sentence}")
    print("\nbytes by tensor")
    tensor_rows = [[f"{o.name}.{n}", format_si(b, "B")] for o in (*p.unfused, p.fused) for n, b in o.bytes_by_tensor]
    print(text_table(["tensor", "bytes"], tensor_rows))
    print(f"\n[T,F] round trip removed by fusion: {format_si(p.intermediate_bytes, 'B')}; "
          f"fused weight re-reads: {format_si(p.weight_reread_bytes, 'B')}; "
          f"ragged_dot activation re-reads: {format_si(p.x_reread_bytes, 'B')}")
    _print_crossover(p.glu, p.activation)
    print(f"\ntiming constants: {p.params_source}")
    print(f"XLA ragged_dot tiling: {', '.join(p.tiling_sources)}")
    return 0


def _print_crossover(glu: bool, activation: str) -> None:
    import sympy as sp

    from perfmodel.fusion_closed_form import crossover

    c = crossover(glu=glu, activation=activation)
    print("\nclosed form (uniform groups, memory-bound, fixed costs ignored):")
    print("  bytes(ragged_dot path) - bytes(fused) =")
    print("  " + sp.pretty(c.byte_difference).replace("\n", "\n  "))
    print("  equal at rows T* =")
    print("  " + sp.pretty(c.rows).replace("\n", "\n  "))
    print("  (N_t^up = ceil(F / tn_up), N_t^down = ceil(D / tn_down): XLA's output column tiles)")


def _plot_roofline(args) -> int:
    import pathlib

    from perfmodel.fusion import predict_fusion
    from perfmodel.hardware import canonical_chip_names, dtype_bytes
    from perfmodel.ops import activation
    from perfmodel.plots import RooflinePoint, roofline_plot

    # canonical names, each once: files are named like the report's and fusion-map's (trillium -> v6e)
    chips = canonical_chip_names(chip_list(args.chips, tpu_for="the MoE kernels' roofline (Pallas TPU)"))
    # every chip's prediction first: a bad chip or shape fails before any plot is written
    preds = {chip: predict_fusion(chip=chip, tokens=args.tokens, D=args.D, F=args.F, E=args.E, k=args.k,
                                  glu=args.glu, activation=args.activation, dtype=args.dtype) for chip in chips}
    out = pathlib.Path(args.out)
    for chip, p in preds.items():
        # The activation pass runs no MXU FLOPs; it is placed at its VPU FLOPs (ops.activation), not at
        # an invented 1 FLOP that put it near 1e-9 FLOP/B and stretched the axis over 13 decades.
        act_flops = activation(kind=p.activation, glu=p.glu).evaluate(M=p.rows, F=p.F, q=dtype_bytes(p.dtype)).flops
        pts = [RooflinePoint(f"{o.name} kernel", o.executed_flops or act_flops, o.hbm_bytes, "ragged_dot path")
               for o in p.unfused]
        pts.append(RooflinePoint("fused kernel", p.fused.executed_flops, p.fused.hbm_bytes, "fused"))
        path = roofline_plot([chip], pts, out / f"roofline_moe_{chip}.png", dtype=p.dtype,
                             title=f"{chip}: MoE FFN kernels (tokens={args.tokens}, k={args.k}, D={args.D}, "
                                   f"F={args.F}, E={args.E}), executed FLOPs and tiled bytes")
        print(f"wrote {path} (+ .svg)")
    return 0


def _plot_map(args) -> int:
    import pathlib
    import time

    import numpy as np

    from perfmodel.fusion_map import F_STEP, speedup_map
    from perfmodel.plots import fusion_map_plot

    t0 = time.perf_counter()
    m = speedup_map(args.chip, D=args.D, E=args.E, glu=args.glu, n=args.n, dtype=args.dtype)
    path = fusion_map_plot(m, pathlib.Path(args.out) / f"fusion_map_{m.chip}.png")
    print(f"wrote {path} (+ .svg): {m.speedup.shape[1]} x {m.speedup.shape[0]} cells in "
          f"{time.perf_counter() - t0:.1f} s; speedup {m.speedup.min():.2f}x .. {m.speedup.max():.2f}x")
    if len(m.f_over_d) < args.n:  # F rounds to multiples of F_STEP: at small D, neighbouring F/D points merge
        print(f"  {len(m.f_over_d)} distinct F/D rows of the {args.n} asked: F is a multiple of {F_STEP}, "
              f"{F_STEP / args.D:.3g} in F/D at D={args.D}")
    losing_rows = ~np.isnan(m.last_loss_tokens_per_expert)
    if losing_rows.any():
        print(f"  ragged_dot wins at {int((m.speedup < 1).sum())} cells, in {int(losing_rows.sum())} of "
              f"{len(m.f_over_d)} F rows; the last per row at {np.nanmin(m.last_loss_tokens_per_expert):.0f} to "
              f"{np.nanmax(m.last_loss_tokens_per_expert):.0f} tokens/expert")
    for fd, last in zip(m.f_over_d, m.last_loss_tokens_per_expert):
        if fd in (m.f_over_d[0], m.f_over_d[len(m.f_over_d) // 2], m.f_over_d[-1]):
            if last != last:
                msg = "fusion wins everywhere"
            elif last >= m.tokens_per_expert[-1]:  # nothing mapped above it: no crossover seen
                msg = f"ragged_dot still wins at {last:.0f} tokens/expert, the largest mapped"
            else:
                msg = f"fusion wins above {last:.0f} tokens/expert"
            print(f"  F/D={fd:.2f}: {msg}")
    if args.check:
        import sys

        from perfmodel.fusion_map import walker_check

        def progress(i, n):
            if i % 10 == 0 or i == n:
                print(f"  walked {i}/{n} cells", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        w = walker_check(m, args.check, progress=progress)
        print(f"closed forms vs walker on {w.cells} random cells ({time.perf_counter() - t0:.1f} s, map tiles): "
              f"speedup error median {w.speedup_error_median:.1%}, max {w.speedup_error_max:.1%} "
              f"(at {w.worst_cell[0]} tokens/expert, F={w.worst_cell[1]}); fused time max "
              f"{w.fused_time_error_max:.1%}, ragged_dot time max {w.unfused_time_error_max:.1%}; "
              f"verdict differs at {w.verdict_disagreements}")
    return 0


def _rows(tokens_per_expert: float) -> str:
    """Rows per expert: whole numbers from 10 up, three digits below (8 rows over 64 experts is 0.125, not 0)."""
    return f"{tokens_per_expert:.0f}" if tokens_per_expert >= 10 else f"{tokens_per_expert:.3g}"
