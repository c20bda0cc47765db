"""Fused MoE kernel commands.

* ``perfmodel validate kernel-aot``: compile the fused kernel for every TPU generation.
* ``perfmodel kernel-table``: per chip, the model's predicted time of the fused kernel vs the
  ragged_dot path over a small grid of shapes (``perfmodel.fusion.predict_fusion``).
"""

from __future__ import annotations


def register(cli) -> None:
    p = cli.subcommand(
        "validate", "kernel-aot",
        "AOT-compile the fused MoE Pallas kernel (default tiles) for TPU targets and check the "
        "model's VMEM verdict against libtpu's (minutes; no TPU needed)")
    p.add_argument("--chips", default="v4,v5e,v5p,v6e,tpu7x", help="comma-separated chips")
    p.add_argument("--dtypes", default="bf16,f32", help="comma-separated dtypes (default bf16,f32)")
    p.add_argument("--no-boundary", action="store_true",
                   help="skip the VMEM-boundary compiles (largest fitting / smallest overflowing tiles)")
    p.add_argument("--out", default="validation/results",
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
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    p.set_defaults(func=_kernel_table)


def _kernel_aot(args) -> int:
    from perfmodel.tpu_compile import libtpu_available
    from validation import kernel_aot

    if not libtpu_available():
        raise ValueError("libtpu is not installed: pip install 'jax[tpu]' to compile for TPU targets")
    chips = [c.strip() for c in args.chips.split(",") if c.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    records = kernel_aot.run(chips=chips, dtypes=dtypes, boundary=not args.no_boundary)
    md, js = kernel_aot.write(records, args.out)
    print(kernel_aot.to_markdown(records).strip().splitlines()[-1])
    print(f"wrote {md} and {js}")
    failed = [r for r in records if not r.agrees]
    return 1 if failed else 0


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _kernel_table(args) -> int:
    import pathlib

    from perfmodel.fusion import predict_fusion

    glu = not args.no_glu
    header = ("| chip | tokens/expert | D | F | fused tiles (tm, tf) | fused us | ragged_dot us | speedup |")
    lines = [f"Model prediction (tiling walker, FITTED constants), E={args.E}, k=1, uniform routing, "
             f"{'SwiGLU' if glu else 'gelu'}, {args.dtype}. Speedup = ragged_dot path / fused.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for chip in [c.strip() for c in args.chips.split(",") if c.strip()]:
        for tpe in _ints(args.tokens_per_expert):
            for D in _ints(args.D):
                for r in _ints(args.ratios):
                    F = r * D
                    try:
                        p = predict_fusion(chip=chip, tokens=tpe * args.E, D=D, F=F, E=args.E, k=1, glu=glu,
                                           dtype=args.dtype)
                    except ValueError as err:
                        lines.append(f"| {chip} | {tpe} | {D} | {F} | - | - | - | n/a: {str(err)[:80]} |")
                        continue
                    unfused = sum(op.time_s for op in p.unfused)
                    lines.append(f"| {p.chip} | {tpe} | {D} | {F} | {p.fused_tiles} | {p.fused.time_s * 1e6:.1f} "
                                 f"| {unfused * 1e6:.1f} | {unfused / p.fused.time_s:.2f} |")
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    else:
        print(text)
    return 0
