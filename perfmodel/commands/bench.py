"""``perfmodel bench predict``: prediction throughput and cold-start benchmark."""


def register(cli) -> None:
    p = cli.command("bench", "benchmarks of perfmodel itself (median of repeated runs)")
    p.add_argument("what", choices=["predict"], help="predict: 1e6 vectorised configs + CLI cold start")
    p.add_argument("--n", type=int, default=1_000_000, help="number of shape configurations")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from perfmodel.hardware import check_memory
    from validation.bench_predict import BYTES_PER_CONFIG, run

    if args.n <= 0 or args.repeats <= 0:
        raise ValueError(f"--n and --repeats must be positive, got n={args.n}, repeats={args.repeats}")
    check_memory(args.n * BYTES_PER_CONFIG, f"--n={args.n} ({BYTES_PER_CONFIG} bytes per configuration)",
                 fix=lambda avail: f"use --n <= {int(avail / 2 / BYTES_PER_CONFIG):,}")
    r = run(n=args.n, repeats=args.repeats)
    print(f"machine: {r.machine}")
    return 0
