"""``perfmodel validate kernel-aot``: compile the fused MoE kernel for every TPU generation."""

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
