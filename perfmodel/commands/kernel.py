"""Fused MoE kernel commands.

* ``perfmodel validate kernel-aot``: compile the fused kernel for every TPU generation.
* ``perfmodel kernel-table``: per chip, the model's predicted time of the fused kernel vs the
  ragged_dot path over a small grid of shapes (``perfmodel.fusion.predict_fusion``).
"""

from __future__ import annotations

import sys

from perfmodel.commands import chip_list, comma_list, dtype_list, out_file, out_folder


def register(cli) -> None:
    p = cli.subcommand(
        "validate", "kernel-aot",
        "AOT-compile the fused MoE Pallas kernel (default tiles) for TPU targets and check the "
        "model's VMEM verdict against libtpu's (minutes; no TPU needed)")
    p.add_argument("--chips", default="v4,v5e,v5p,v6e,tpu7x", help="comma-separated chips")
    p.add_argument("--dtypes", default="bf16,f32", help="comma-separated dtypes (default bf16,f32)")
    p.add_argument("--no-boundary", action="store_true",
                   help="skip the VMEM-boundary compiles (largest fitting / smallest overflowing tiles)")
    p.add_argument("--out", type=out_folder, default="validation/results",
                   help="directory for kernel_aot.md and kernel_aot.json (default validation/results)")
    p.set_defaults(func=_kernel_aot)

    p = cli.command(
        "kernel-table",
        "predicted time of the fused MoE kernel vs ragged_dot per chip over tokens per expert x D x F/D")
    p.add_argument("--chips", default="v4,v5e,v5p,v6e,tpu7x", help="comma-separated chips")
    p.add_argument("--tokens-per-expert", default="32,256,4096", help="comma-separated (default 32,256,4096)")
    p.add_argument("--D", default="512,2048,4096", help="comma-separated model widths (default 512,2048,4096)")
    p.add_argument("--ratios", default="2,4,8", help="comma-separated F/D (default 2,4,8)")
    p.add_argument("--E", type=int, default=8, help="experts (default 8); k = 1, uniform routing")
    p.add_argument("--no-glu", action="store_true", help="gelu FFN instead of SwiGLU")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--compile", action="store_true",
                   help="ask libtpu for XLA's ragged_dot tiling of shapes not in the shipped table "
                        "(default: the table, else the fallback rule)")
    p.add_argument("--out", type=out_file, default=None, help="also write the markdown table to this file")
    p.set_defaults(func=_kernel_table)


def _kernel_aot(args) -> int:
    from perfmodel.hardware import canonical_chip_names
    from perfmodel.tpu_compile import libtpu_available
    from validation import kernel_aot

    # every chip a TPU and every dtype one each chip has: else default_tiles refuses the pair, which the
    # sweep records as "no_tiles" (the model's own verdict) and counts as agreement
    chips = canonical_chip_names(chip_list(args.chips, tpu_for="validate kernel-aot (the fused Pallas TPU kernel)"))
    dtypes = dtype_list(args.dtypes, chips=chips)
    from kernels.fused_spec import KERNEL_DTYPES

    if set(dtypes) - set(KERNEL_DTYPES):  # the kernel refuses them: every point would be an error record
        raise ValueError(f"--dtypes: the fused kernel takes {', '.join(KERNEL_DTYPES)}, got dtypes={args.dtypes!r}")
    if not libtpu_available():
        raise ValueError("libtpu is not installed: pip install 'jax[tpu]' to compile for TPU targets")
    records = kernel_aot.run(chips=chips, dtypes=dtypes, boundary=not args.no_boundary)
    md, js = kernel_aot.write(records, args.out)
    print(kernel_aot.to_markdown(records).strip().splitlines()[-1])
    print(f"wrote {md} and {js}")
    failed = [r for r in records if not r.agrees]
    return 1 if failed else 0


def _ints(text: str, option: str, unique: str) -> tuple[int, ...]:
    """A comma list of distinct positive integers (:func:`comma_list`; ``unique`` is the item's noun, a value
    listed twice would repeat its rows); errors name ``option`` and the value."""
    values = comma_list(text, int, option, "positive integers", unique=unique)
    if min(values) <= 0:
        raise ValueError(f"{option} must be comma-separated positive integers, got "
                         f"{option.lstrip('-').replace('-', '_')}={text!r}")
    return values


def _kernel_table(args) -> int:
    import pathlib

    from perfmodel.fusion import check_fusion_shape, predict_fusion
    from perfmodel.hardware import canonical_chip_names

    glu = not args.no_glu
    # TPUs, by catalog name, each once (v5e,v5e or trillium,v6e: one chip's rows), as plot roofline
    chips = canonical_chip_names(chip_list(args.chips, tpu_for="kernel-table (the fused Pallas TPU kernel)"))
    dtypes = dtype_list(args.dtype, "--dtype", chips=chips)  # one every chip has a peak for, before any row
    if len(dtypes) != 1:
        raise ValueError(f"--dtype takes one dtype, got dtype={args.dtype!r}")
    dtype = dtypes[0]
    if args.E <= 0:
        raise ValueError(f"--E must be a positive integer, got E={args.E}")
    tpes, dims, ratios = (_ints(args.tokens_per_expert, "--tokens-per-expert", "token count"),
                          _ints(args.D, "--D", "width"), _ints(args.ratios, "--ratios", "ratio"))
    for tpe in tpes:  # every shape before the first row: an impossible one is an error, not a row of n/a
        for D in dims:
            for r in ratios:
                try:
                    check_fusion_shape(tokens=tpe * args.E, D=D, F=r * D, E=args.E, k=1)
                except ValueError as err:
                    raise ValueError(f"--tokens-per-expert {tpe} --D {D} --ratios {r} --E {args.E}: {err}") from None
    header = ("| chip | tokens/expert | D | F | fused tiles (tm, tf) | fused us | ragged_dot us | speedup "
              "| ragged_dot tiling source |")
    lines = [f"Model prediction (tiling walker, FITTED constants), E={args.E}, k=1, uniform routing, "
             f"{'SwiGLU' if glu else 'gelu'}, {dtype}. Speedup = ragged_dot path / fused. "
             f"Generated by `perfmodel kernel-table{' --compile' if args.compile else ''}`.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    if not args.out:  # stdout is the table: its head first, then each row once, as it is computed
        print("\n".join(lines), flush=True)
    unanswered = 0
    for chip in chips:
        for tpe in tpes:
            for D in dims:
                for r in ratios:
                    F = r * D
                    try:
                        p = predict_fusion(chip=chip, tokens=tpe * args.E, D=D, F=F, E=args.E, k=1, glu=glu,
                                           dtype=dtype, allow_compile=args.compile)
                    except ValueError as err:
                        why = str(err).replace("|", "/").replace("\n", " ")  # the whole reason, one table cell
                        lines.append(f"| {chip} | {tpe} | {D} | {F} | - | - | - | - | n/a: {why} |")
                        unanswered += 1
                        print(lines[-1], flush=True)
                        continue
                    unfused = sum(op.time_s for op in p.unfused)
                    lines.append(f"| {p.chip} | {tpe} | {D} | {F} | {p.fused_tiles} | {p.fused.time_s * 1e6:.1f} "
                                 f"| {unfused * 1e6:.1f} | {unfused / p.fused.time_s:.2f} "
                                 f"| {', '.join(p.tiling_sources)} |")
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    rows = len(chips) * len(tpes) * len(dims) * len(ratios)
    if unanswered == rows:  # the table answers nothing: say so in the exit status, not only in its cells
        print(f"perfmodel kernel-table: no row has a prediction ({rows} of {rows} n/a; the reasons are in the "
              "table's last column)", file=sys.stderr)
        return 1
    return 0
