"""IsoFLOP studies (``quick``, ``full``) and a resumable JSONL runner.

Study design

* per compute budget C (training FLOPs, ``train_exact`` convention of
  :mod:`perfmodel.transformer`), five (quick: three) consecutive ladder sizes
  centred on ``N ~ sqrt(C / 120) / 4`` non-embedding parameters, each trained
  for ``tokens = C / FLOPs per token`` (rounded to whole steps). The Chinchilla
  guess ``sqrt(C / 120)`` (C = 6 N D, D = 20 N) sat at the large end here: a
  first pass of this study found the smallest sizes best at every budget, so
  the window moved down 4x in N (about two ladder steps);
* model ladder: depth L = 2, width D in :data:`WIDTHS`, ``n_heads = max(1, D // 32)``,
  dense FFN width F = 4 D (GELU);
* MoE ladder at **equal active parameters per token**: the same D, L, heads
  and E experts (default 8) of width ``F_e = 4 D / k`` (top-k = 2: ``F_e = 2 D``),
  so the k active experts hold exactly the dense FFN's parameters; the router
  adds ``D E`` per layer. Total parameters are ~E / k times the dense FFN's;
* batch ``B = clip(2^floor(log2(tokens / (200 T))), 16, 256)`` sequences, so
  every run takes >= ~200 steps where possible;
* recipe: AdamW(b1 0.9, b2 0.99, wd 0.1), clip 1.0, peak lr
  ``1e-2 * sqrt(B / 256) * min(1, sqrt(32 / D))`` (square-root batch scaling;
  measured at C = 1e11: D = 16, B = 256 does best at 1e-2 of {3e-3, 1e-2, 3e-2},
  D = 64, B = 32 at 3e-3), warm-up min(50, steps/10), cosine to 10%.

Runner: each finished run is appended to the JSONL file as one line by a
single ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``; on start
the runner reads the file, ignores an unterminated last line (a run killed
while writing), and skips every run id already present. Killing the process
therefore loses at most the run in progress. A run whose final loss is not finite
is recorded with ``status: diverged`` (null losses), which the fitter skips; the
``train sweep`` command then exits 1.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import attrs

from perfmodel import jsonout
from perfmodel.jsonout import json_safe
from validation.arith import optim, task as task_lib, train
from validation.arith.model import ModelConfig

WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
DEFAULT_TASK = "add3+mul3"


def dense_model(d_model: int, *, n_layers: int = 2, seq_len: int, vocab: int = task_lib.VOCAB,
                dtype: str = "float32") -> ModelConfig:
    return ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=max(1, d_model // 32), d_ff=4 * d_model,
                       vocab=vocab, seq_len=seq_len, dtype=dtype)


def moe_model(d_model: int, *, n_layers: int = 2, seq_len: int, n_experts: int = 8, top_k: int = 2,
              moe_impl: str = "blocked", vocab: int = task_lib.VOCAB, dtype: str = "float32") -> ModelConfig:
    if (4 * d_model) % top_k:
        raise ValueError(f"4 * d_model={4 * d_model} must be divisible by top_k={top_k}")
    return ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=max(1, d_model // 32),
                       d_ff=4 * d_model // top_k, vocab=vocab, seq_len=seq_len, n_experts=n_experts,
                       top_k=top_k, moe_impl=moe_impl, dtype=dtype)


def optim_for(model: ModelConfig, batch_size: int = 256, lr_scale: float = 1.0) -> optim.AdamWConfig:
    """The recipe's AdamW: peak lr ``lr_scale * 1e-2 * sqrt(B / 256) * min(1, sqrt(32 / D))``."""
    return optim.AdamWConfig(
        peak_lr=lr_scale * 1e-2 * math.sqrt(batch_size / 256) * min(1.0, math.sqrt(32 / model.d_model)))


def batch_for(tokens: float, seq_len: int) -> int:
    b = 2 ** math.floor(math.log2(max(1.0, tokens / (200 * seq_len))))
    return int(min(256, max(16, b)))


@attrs.frozen(kw_only=True)
class Study:
    name: str
    budgets_flops: tuple[float, ...]
    sizes_per_budget: int
    task: str = DEFAULT_TASK
    n_layers: int = 2
    seeds: tuple[int, ...] = (0,)
    lr_scale: float = 1.0  # multiplies the recipe's peak lr (recipe-sensitivity checks); != 1 tags the run id
    # budget -> widths, for budgets whose window is placed by hand instead of by :func:`widths_for`
    width_windows: tuple[tuple[float, tuple[int, ...]], ...] = ()

    def widths(self, budget: float, seq_len: int) -> tuple[int, ...]:
        """The widths trained at ``budget``: the hand-placed window if there is one, else the sqrt rule."""
        for c, ws in self.width_windows:
            if c == budget:
                return ws
        return widths_for(budget, self.sizes_per_budget, seq_len, self.n_layers)


STUDIES = {
    "quick": Study(name="quick", budgets_flops=(1e10, 3e10), sizes_per_budget=3),
    # 3e12 was added after the first four budgets (a 100x span instead of 33x). Its window is the 1e12
    # window, which brackets the best 1e12 width (D = 24) and the 4-budget fit's N_opt; the sqrt rule
    # would give D = 24...96 and put the expected optimum at the window's edge.
    "full": Study(name="full", budgets_flops=(3e10, 1e11, 3e11, 1e12, 3e12), sizes_per_budget=5, seeds=(0, 1, 2, 3),
                  width_windows=((3e12, (16, 24, 32, 48, 64)),)),
}


@attrs.frozen(kw_only=True)
class PlannedRun:
    run_id: str
    arch: str
    budget_flops: float
    config: train.RunConfig


def widths_for(budget: float, n: int, seq_len: int, n_layers: int) -> tuple[int, ...]:
    """n consecutive ladder widths centred on the one whose non-embedding N is closest to sqrt(C/120)/4."""
    target = math.sqrt(budget / 120) / 4
    n_of = [dense_model(d, n_layers=n_layers, seq_len=seq_len).shape.params().non_embedding for d in WIDTHS]
    centre = min(range(len(WIDTHS)), key=lambda i: abs(math.log(n_of[i] / target)))
    lo = min(max(0, centre - n // 2), len(WIDTHS) - n)
    return WIDTHS[lo:lo + n]


def plan(study: Study, *, archs=("dense", "moe"), n_experts: int = 8, top_k: int = 2,
         moe_impl: str = "blocked", dtype: str = "float32") -> list[PlannedRun]:
    """Every run of a study: seed by seed, then budget by budget (small first), dense before MoE.

    Seed-major order: an interrupted study still holds whole IsoFLOP grids.
    """
    tc = task_lib.TaskConfig.parse(study.task)
    runs = []
    for seed, c in ((s, c) for s in study.seeds for c in study.budgets_flops):
        for arch in archs:
            for d in study.widths(c, tc.seq_len):
                if arch == "dense":
                    mc = dense_model(d, n_layers=study.n_layers, seq_len=tc.seq_len, dtype=dtype)
                    tag = "dense"
                else:
                    mc = moe_model(d, n_layers=study.n_layers, seq_len=tc.seq_len, n_experts=n_experts,
                                   top_k=top_k, moe_impl=moe_impl, dtype=dtype)
                    tag = f"moe-E{n_experts}k{top_k}"
                fpt = mc.shape.flops_per_token().train_exact
                tokens = c / fpt
                bs = batch_for(tokens, tc.seq_len)
                if tokens < bs * tc.seq_len:  # one batch would already overspend the budget it is recorded under
                    raise ValueError(
                        f"budget {c:.3g} FLOPs is below one batch of {tag} D={d} ({bs} x {tc.seq_len} tokens = "
                        f"{bs * tc.seq_len * fpt:.3g} FLOPs); the run would spend more than the budget it is "
                        f"recorded under, got budgets_flops={c:g}")
                rc = train.RunConfig(task=tc, model=mc, optim=optim_for(mc, bs, study.lr_scale), batch_size=bs,
                                     token_budget=int(tokens), seed=seed)
                rid = f"{study.task}/{tag}/C{c:.0e}/D{d}L{study.n_layers}/{dtype}/seed{seed}" + (
                    f"/lr_x{study.lr_scale:g}" if study.lr_scale != 1.0 else "")
                runs.append(PlannedRun(run_id=rid, arch=tag, budget_flops=c, config=rc))
    first: dict[str, float] = {}
    for r in runs:  # the id keeps one significant digit of the budget: 1e8 and 1.4e8 would share every id
        other = first.setdefault(r.run_id, r.budget_flops)
        if other != r.budget_flops:
            raise ValueError(f"budgets {other:g} and {r.budget_flops:g} FLOPs get the same run id {r.run_id!r} "
                             f"(run ids carry the budget to one significant digit), so one would be recorded as "
                             f"the other; use budgets that differ in their first digit, got "
                             f"budgets_flops={','.join(f'{c:g}' for c in study.budgets_flops)}")
    return runs


def read_done(path: pathlib.Path) -> dict[str, dict]:
    """Run id -> record of every complete line; an unterminated last line (a killed writer) is ignored.

    A complete line that is not a JSON object with a string ``run_id`` is an error naming the line: the
    runner appends to this file and the fitter (``read_runs``) would refuse it later, so a study must not
    run hours on top of it. Blank lines are skipped.
    """
    done = {}
    if not path.exists():
        return done
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--out {path} is not UTF-8 text (byte {err.start}: {err.reason}); expected the "
                         "sweep's JSON lines, one run per line; pass another --out") from None
    fix = "; fix or delete that line, or pass another --out"
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        if not line.endswith("\n") or not line.strip():
            continue
        rec = jsonout.loads_object(line, f"--out {path}:{lineno}", hint=" (one run per line)", fix=fix)
        if not isinstance(rec.get("run_id"), str):
            raise ValueError(f"--out {path}:{lineno}: no string 'run_id' (got run_id={rec.get('run_id')!r}), "
                             f"so it is not a sweep record{fix}")
        done[rec["run_id"]] = rec
    return done


def append_record(path: pathlib.Path, record: dict) -> None:
    """Append one JSON line atomically (single O_APPEND write + fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:  # a torn last line from a killed writer: cut it off (terminated, it stays as a garbage line
            with open(path, "rb") as f:  # that read_runs and `perfmodel scaling fit` refuse)
                data = f.read()
            if not data.endswith(b"\n"):
                os.ftruncate(fd, data.rfind(b"\n") + 1)
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _rate(x: float | None, scale: float = 1.0, fmt: str = ",.0f") -> str:
    """A throughput for logs and tables. A one-step run has no steady state (its only step is the compile), so its
    rate is unknown: None in the record, ``n/a`` here."""
    return format(x / scale, fmt) if x is not None and math.isfinite(x) else "n/a"


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def diverged(rec: dict) -> bool:
    """A run whose record says ``status: diverged`` (its final train or held-out loss was not finite)."""
    return rec.get("status") == "diverged"


def _record(pr: PlannedRun, study: Study, res: train.RunResult, peak_flops_per_s: float | None) -> dict:
    """One JSONL record, strict JSON: what a run could not measure (one step: rates; a diverged run: its
    non-finite losses) is null. A run whose final train or held-out loss is not finite gets
    ``status: diverged``, which ``read_runs`` (and so ``scaling fit``) skips; every other run ``status: ok``."""
    rc = pr.config
    rates = {k: _finite_or_none(getattr(res, k)) for k in ("tokens_per_s", "flops_per_s")}
    ok = all(math.isfinite(getattr(res, k)) for k in ("train_loss", "held_out_loss"))
    return json_safe({
        "run_id": pr.run_id, "study": study.name, "arch": pr.arch, "budget_flops": pr.budget_flops,
        "task": study.task, "seed": rc.seed, "batch_size": rc.batch_size, "status": "ok" if ok else "diverged",
        "config": attrs.asdict(rc, value_serializer=lambda _i, _a, v: list(v) if isinstance(v, tuple) else v),
        **attrs.asdict(res), **rates,
        "fraction_of_cpu_peak": (rates["flops_per_s"] / peak_flops_per_s)
        if peak_flops_per_s and rates["flops_per_s"] is not None else None,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run_study(study: Study, path: pathlib.Path, *, archs=("dense", "moe"), n_experts: int = 8, top_k: int = 2,
              moe_impl: str = "blocked", dtype: str = "float32", peak_flops_per_s: float | None = None,
              log=print, after_run=None) -> list[dict]:
    """Run every planned run not yet in ``path``; returns the records of the whole study."""
    runs = plan(study, archs=archs, n_experts=n_experts, top_k=top_k, moe_impl=moe_impl, dtype=dtype)
    done = read_done(path)
    todo = [r for r in runs if r.run_id not in done]
    log(f"study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} already in {path}, {len(todo)} to go")
    t0 = time.perf_counter()
    flops_left = sum(r.budget_flops for r in todo)
    train_s = overhead_s = flops_run = 0.0
    for i, pr in enumerate(todo, 1):
        res = train.run(pr.config)
        rec = _record(pr, study, res, peak_flops_per_s)
        append_record(path, rec)
        done[pr.run_id] = rec
        # ETA = runs left x mean per-run overhead (compiles, evals) + FLOPs left / training FLOP rate
        step_s = res.flops / res.flops_per_s if res.flops_per_s > 0 else res.wall_time_s
        train_s, flops_run = train_s + step_s, flops_run + res.flops
        overhead_s += max(0.0, res.wall_time_s - step_s)
        flops_left -= pr.budget_flops
        elapsed = time.perf_counter() - t0
        eta = (len(todo) - i) * overhead_s / i + flops_left * train_s / flops_run
        peak = f" ({rec['fraction_of_cpu_peak']:.0%} of cpu peak)" if rec["fraction_of_cpu_peak"] is not None else ""
        rate = (f"{_rate(rec['tokens_per_s'])} tok/s {_rate(rec['flops_per_s'], 1e9, '.1f')} GFLOP/s{peak}"
                if rec["tokens_per_s"] is not None else "rate n/a (1 step: compile only)")
        losses = (f"DIVERGED (train {res.train_loss:.4g}, held-out {res.held_out_loss:.4g}; recorded with status "
                  "'diverged', skipped by scaling fit)" if diverged(rec)
                  else f"held-out {res.held_out_loss:.4f} train {res.train_loss:.4f}")
        log(f"[{i}/{len(todo)}] {pr.run_id} N={res.params_total:,} steps={res.steps} B={pr.config.batch_size} "
            f"{losses} | {rate} | run {res.wall_time_s:.1f}s "
            f"elapsed {_fmt_s(elapsed)} ETA {_fmt_s(eta)}")
        if after_run is not None:
            after_run(i, rec)
    return [done[r.run_id] for r in runs]


def markdown_summary(records: list[dict]) -> str:
    """One row per run: budget, arch, width, parameters, tokens, losses, throughput."""
    lines = ["| C (FLOPs) | arch | D | N active non-emb | N total | tokens | B | steps | held-out loss | "
             "train loss | tokens/s | GFLOP/s | wall s |", "|" + "---|" * 13]
    for r in sorted(records, key=lambda r: (r["budget_flops"], r["arch"], r["params_total"])):
        lines.append(f"| {r['budget_flops']:.0e} | {r['arch']} | {r['config']['model']['d_model']} | "
                     f"{r['params_active_non_embedding']:,} | {r['params_total']:,} | {r['tokens']:,} | "
                     f"{r['batch_size']} | {r['steps']} | {r['held_out_loss']:.4f} | {r['train_loss']:.4f} | "
                     f"{_rate(r['tokens_per_s'])} | {_rate(r['flops_per_s'], 1e9, '.1f')} | {r['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def isoflop_table(records: list[dict]) -> str:
    """Held-out loss per (budget, arch) row and width column; cells list every seed's loss."""
    widths = sorted({r["config"]["model"]["d_model"] for r in records})
    cells: dict[tuple, list[float]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        cells.setdefault((r["budget_flops"], r["arch"], r["config"]["model"]["d_model"]), []).append(r["held_out_loss"])
    rows = sorted({k[:2] for k in cells})
    lines = ["| C (FLOPs) | arch | " + " | ".join(f"D={d}" for d in widths) + " |", "|---|---|" + "---|" * len(widths)]
    for c, arch in rows:
        vals = [" / ".join(f"{x:.3f}" for x in cells.get((c, arch, d), [])) for d in widths]
        lines.append(f"| {c:.0e} | {arch} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_isoflops(records: list[dict], path) -> None:
    """Held-out loss vs active non-embedding parameters, one curve per (budget, arch); seeds as dots, mean line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budgets = sorted({r["budget_flops"] for r in records})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(budgets)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, arch in zip(axes, sorted({r["arch"] for r in records})):
        for c, col in zip(budgets, colours):
            rs = [r for r in records if r["arch"] == arch and r["budget_flops"] == c]
            ns = sorted({r["params_active_non_embedding"] for r in rs})
            mean = [np.mean([r["held_out_loss"] for r in rs if r["params_active_non_embedding"] == n]) for n in ns]
            ax.plot(ns, mean, "-", color=col, label=f"C={c:.0e}")
            ax.plot([r["params_active_non_embedding"] for r in rs], [r["held_out_loss"] for r in rs], "o",
                    color=col, ms=3, alpha=0.6)
        ax.set_xscale("log")
        ax.set_title(arch)
        ax.set_xlabel("active non-embedding parameters")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("held-out answer loss (nats/token)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
