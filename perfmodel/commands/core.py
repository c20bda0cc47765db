"""Core commands: chips, predict, formula, calibrate cpu."""

from __future__ import annotations

from perfmodel import jsonout
from perfmodel.commands import int_in


def register(cli) -> None:
    p = cli.command("chips", "table of built-in chips with the source of every number")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--sources", action="store_true", help="list every field's source and alternatives")
    p.set_defaults(func=_chips)

    p = cli.command("predict", "FLOPs, HBM bytes and roofline time of an op on a chip",
                    epilog="example: perfmodel predict matmul --chip v5e M=8192 K=8192 N=8192")
    p.add_argument("op", help="op name (perfmodel predict list: shows ops and their dims)")
    p.add_argument("dims", nargs="*", metavar="NAME=VALUE",
                   help="dimensions and options, e.g. M=4096 or glu=true")
    p.add_argument("--chip", default="v5e", help="chip name or jax device_kind (default v5e)")
    p.add_argument("--dtype", default="bf16", help="operand dtype: bf16, f32, int8, fp8 (default bf16)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_predict)

    p = cli.command("formula", "print an op's symbolic FLOP / byte formula")
    p.add_argument("op")
    p.add_argument("options", nargs="*", metavar="NAME=VALUE", help="structural options, e.g. glu=true")
    p.add_argument("--kind", default="all",
                   choices=["all", "flops", "hbm_bytes", "read_bytes", "write_bytes", "transcendentals"])
    p.add_argument("--latex", action="store_true", help="LaTeX instead of pretty text")
    p.set_defaults(func=_formula)

    p = cli.subcommand("calibrate", "cpu", "measure this machine's matmul FLOP/s, memory bandwidth and page-fault rate")
    p.add_argument("--matmul-n", type=int_in(1), default=1024)
    p.add_argument("--copy-mib", type=int_in(1), default=256)
    p.add_argument("--repeats", type=int_in(1), default=7)
    p.set_defaults(func=_calibrate_cpu)


def _fmt(x, unit=""):
    from perfmodel.hardware import format_si

    return format_si(float(x), unit)


def _chips(args) -> int:
    import attrs

    from perfmodel.hardware import CATALOG, load_cpu_calibration
    from perfmodel.tables import text_table

    chips = list(CATALOG.values())
    cal = load_cpu_calibration()
    if cal is not None:
        from perfmodel.hardware import cpu_chip

        chips.append(cpu_chip(cal))
    if args.json:
        print(jsonout.dumps([attrs.asdict(c) for c in chips], indent=2, default=str))
        return 0
    rows = []
    for c in chips:
        rows.append([c.name, _fmt(c.bf16_flops_per_s, "FLOP/s"),
                     _fmt(c.int8_ops_per_s, "OP/s") if c.int8_ops_per_s else "-",
                     _fmt(c.fp8_flops_per_s, "FLOP/s") if c.fp8_flops_per_s else "-",
                     _fmt(c.hbm_bytes_per_s, "B/s"), _fmt(c.hbm_bytes, "B"),
                     f"{c.ridge_flops_per_byte('bf16'):.0f}",
                     f"{c.vmem_bytes_per_core // 2**20} MiB" if c.vmem_bytes_per_core else "-",
                     c.tensor_cores_per_chip,
                     "x".join(map(str, c.mxu_shape)) + f" x{c.mxus_per_core}" if c.mxu_shape else "-"])
    print(text_table(["chip", "bf16 peak", "int8 peak", "fp8 peak", "HBM BW", "HBM", "ridge FLOP/B",
                      "VMEM/core", "TC/chip", "MXU"], rows))
    print("\nAll rates per chip (dense). VMEM per TensorCore.")
    if args.sources:
        for c in chips:
            print(f"\n{c.name}:")
            for field, value in c.sourced_fields().items():
                print(f"  {field} = {value}: {c.sources.get(field, 'MISSING SOURCE')}")
                if field in c.alternatives:
                    print(f"    alternative: {c.alternatives[field]}")
    else:
        print("Run `perfmodel chips --sources` for the source of every number.")
    if cal is None:
        print("(cpu: not calibrated yet; `perfmodel calibrate cpu` measures it)")
    return 0


def parse_assignments(items: list[str]) -> dict:
    """``["M=4096", "glu=true"]`` -> ``{"M": 4096, "glu": True}``; errors name the item."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if not key:
            raise ValueError(f"expected NAME=VALUE, got {item!r} (no name)")
        if key in out:
            raise ValueError(f"{key} given twice ({key}={out[key]!r} and {item})")
        low = value.strip().lower()
        if low in ("true", "yes"):
            out[key] = True
        elif low in ("false", "no"):
            out[key] = False
        else:
            try:
                out[key] = int(value)  # exact: going through float turned 2**53 + 1 into 2**53
            except ValueError:
                try:
                    out[key] = float(value)
                except ValueError:
                    out[key] = value
    return out


def _predict(args) -> int:
    import sys

    from perfmodel.api import beyond_hbm, predict
    from perfmodel.ops import OPS, get_op
    from perfmodel.tables import text_table

    if args.op == "list":
        if args.dims:  # an op's NAME=VALUE after list was ignored
            raise ValueError(f"predict list takes no NAME=VALUE arguments (it lists every op), "
                             f"got {' '.join(args.dims)}")
        # q (bytes per element) comes from --dtype, not from a NAME=VALUE
        rows = [[name, " ".join(n for n in get_op(name).argument_names if n != "q"), ", ".join(spec.options) or "-",
                 spec.summary] for name, spec in OPS.items()]
        print(text_table(["op", "dims", "options", "what"], rows))
        print("\nbytes per element come from --dtype (bf16 default)")
        return 0
    kw = parse_assignments(args.dims)
    pred = predict(args.op, chip=args.chip, dtype=args.dtype, **kw)
    r = pred.roofline
    # a shape no chip of this kind can hold still has FLOPs and bytes (the library's scaling studies price such
    # steps per chip): printed, but said to be no run on this chip
    too_big = beyond_hbm(args.op, chip=args.chip, dtype=args.dtype, **kw)
    note = (f"note: {too_big}: no {pred.chip} can run this shape; the numbers are the formulas', not a prediction"
            if too_big else None)
    if args.json:
        out = {
            "op": pred.op, "chip": pred.chip, "dtype": pred.dtype, "dims": kw,
            "flops": r.flops, "hbm_bytes": r.hbm_bytes, "transcendentals": pred.cost.transcendentals,
            "intensity_flops_per_byte": r.intensity_flops_per_byte,
            "ridge_flops_per_byte": r.ridge_flops_per_byte, "compute_s": r.compute_s,
            "memory_s": r.memory_s, "lower_s": r.lower_s, "upper_s": r.upper_s, "bound": r.bound,
            "time_s": pred.time_s,
            "terms": [{"name": t.name, "kind": t.kind, "value": t.value} for t in pred.cost.terms],
            "parts": [{"name": n, "flops": pr.flops, "hbm_bytes": pr.hbm_bytes, "lower_s": pr.lower_s,
                       "bound": pr.bound} for n, pr in pred.parts],
            "kernels": [{"name": n, "flops": pr.flops, "hbm_bytes": pr.hbm_bytes, "lower_s": pr.lower_s,
                         "bound": pr.bound} for n, pr in pred.kernels],
        }
        print(jsonout.dumps(out, indent=2))
        if note:  # on stderr: the JSON document keeps its keys
            print(note, file=sys.stderr)
        return 0
    dims = " ".join(f"{k}={v}" for k, v in kw.items())
    print(f"{pred.op} on {pred.chip} ({pred.dtype}) {dims}")
    if note:
        print(note)
    print(text_table(["quantity", "value"], [
        ["FLOPs", _fmt(r.flops)], ["HBM bytes", _fmt(r.hbm_bytes, "B")],
        ["transcendentals", _fmt(pred.cost.transcendentals)],
        ["intensity", f"{r.intensity_flops_per_byte:.1f} FLOP/B (ridge {r.ridge_flops_per_byte:.0f})"],
        ["compute time", _fmt(r.compute_s, "s")], ["memory time", _fmt(r.memory_s, "s")],
        ["lower bound max()", _fmt(r.lower_s, "s")], ["upper bound sum()", _fmt(r.upper_s, "s")],
        ["bound", r.bound]]))
    if pred.parts:
        print("\nper kernel (time = sum of per-kernel lower bounds: " + _fmt(pred.time_s, "s") + ")")
        print(text_table(["kernel", "FLOPs", "HBM bytes", "intensity", "lower bound", "bound"],
                         [[n, _fmt(p.flops), _fmt(p.hbm_bytes, "B"), f"{p.intensity_flops_per_byte:.1f}",
                           _fmt(p.lower_s, "s"), p.bound] for n, p in pred.kernels]))
    print("\nbytes by tensor")
    print(text_table(["term", "bytes"], [[n, _fmt(v, "B")] for n, v in pred.cost.bytes_by_tensor().items()]))
    return 0


def _formula(args) -> int:
    from perfmodel.ops import get_op

    cost = get_op(args.op, **parse_assignments(args.options))
    kinds = ["flops", "hbm_bytes", "transcendentals"] if args.kind == "all" else [args.kind]
    print(f"{cost.name}: {cost.description}".rstrip(": "))
    print("arguments: " + ", ".join(cost.argument_names) + "   (q = bytes per element)")
    for kind in kinds:
        print(f"\n{kind} =")
        print(cost.formula(kind, latex=args.latex))
    return 0


def _calibrate_cpu(args) -> int:
    import os

    # this process measures the host only: no TPU runtime, and none of libtpu's start-up noise on a CPU machine
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from perfmodel.hardware import calibration_problems, check_calibration_sizes, measure_cpu, save_cpu_calibration

    def flag(k):
        return "--" + k.replace("_", "-")

    check_calibration_sizes(matmul_n=args.matmul_n, copy_mib=args.copy_mib, repeats=args.repeats, arg_name=flag)
    print(f"measuring: {args.matmul_n}^3 matmul (f32, bf16) donated x+1 and first-touch page faults over "
          f"{args.copy_mib} MiB, median of {args.repeats} runs ...", flush=True)
    cal = measure_cpu(matmul_n=args.matmul_n, copy_mib=args.copy_mib, repeats=args.repeats)
    problems = calibration_problems(cal, arg_name=flag)
    if problems:  # the saved file becomes the cpu chip of every later command: keep the previous one
        raise ValueError("calibration not saved: " + "; ".join(problems))
    path = save_cpu_calibration(cal)
    print(f"f32 matmul   {_fmt(cal.f32_flops_per_s, 'FLOP/s')}")
    print(f"bf16 matmul  {_fmt(cal.bf16_flops_per_s, 'FLOP/s')}")
    print(f"memory       {_fmt(cal.hbm_bytes_per_s, 'B/s')}")
    print(f"page faults  {_fmt(cal.page_fault_bytes_per_s, 'B/s')} (first touch of fresh pages)")
    print(f"launch       {_fmt(cal.launch_overhead_s, 's')}")
    print(f"saved to {path}")
    return 0
