"""Benchmark: vectorised prediction throughput and CLI cold start.

* ``n`` random MoE FFN shapes as numpy arrays -> ``predict("moe_ffn_unfused", ...)``
  (symbolic cost compiled once, then evaluated on arrays); median of ``repeats``.
* ``perfmodel predict matmul ...`` in a fresh interpreter; median wall time.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

import attrs
import numpy as np


# peak RSS of run()'s vectorised part grows by 2.46 GB from n=1e6 (0.90 GB) to n=4e6 (3.36 GB) on the 2-core dev VM:
# 820 bytes per configuration (the shapes, one prediction and the next), rounded up
BYTES_PER_CONFIG = 1000


@attrs.frozen
class PredictBenchmark:
    n_configs: int
    repeats: int
    vectorised_median_s: float
    first_call_s: float
    cold_cli_median_s: float
    machine: str


def run(n: int = 1_000_000, repeats: int = 5, cli_repeats: int = 5, log=print) -> PredictBenchmark:
    from perfmodel import predict

    rng = np.random.default_rng(0)
    dims = dict(T=rng.integers(1, 1 << 16, n), D=rng.integers(128, 8192, n), F=rng.integers(128, 32768, n),
                E=rng.integers(1, 256, n), k=rng.integers(1, 8, n))
    dims["k"] = np.minimum(dims["k"], dims["E"])  # top-k of E experts: predict refuses k > E
    t0 = time.perf_counter()
    predict("moe_ffn_unfused", chip="v5e", **dims)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        p = predict("moe_ffn_unfused", chip="v5e", **dims)
        times.append(time.perf_counter() - t0)
    assert p.time_s.shape == (n,)
    log(f"{n:,} configs: first call {first:.3f} s (includes lambdify), median {statistics.median(times):.3f} s")
    cli = []
    for _ in range(cli_repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "perfmodel", "predict", "matmul", "--chip", "v5e",
                        "M=4096", "K=4096", "N=4096"], check=True, capture_output=True)
        cli.append(time.perf_counter() - t0)
    log(f"cold `perfmodel predict`: median {statistics.median(cli):.3f} s over {cli_repeats} runs")
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    return PredictBenchmark(n_configs=n, repeats=repeats, vectorised_median_s=statistics.median(times),
                            first_call_s=first, cold_cli_median_s=statistics.median(cli), machine=machine)
