"""Measured evidence for the default study task: held-out loss vs model size per task family.

Every (task, size) pair trains for the same number of tokens (batch 256,
peak lr ``3e-3 min(1, sqrt(64 / D))``); a task that saturates (held-out loss ~0 already at the
smallest sizes) cannot show a scaling law, so the default is the family whose
loss keeps falling across the sizes the study uses.

    python -m validation.arith.task_choice   # writes validation/results/task_choice.{json,png}
"""

from __future__ import annotations

import json
import math
import pathlib
import time


from validation.arith import optim, sweep, task as task_lib, train

TASKS = ("add3", "add6", "add3+mul3", "mul3")
WIDTHS = (16, 32, 64, 128)
TOKENS = 1_000_000
OUT = pathlib.Path(__file__).resolve().parents[1] / "results"


def main(tasks=TASKS, widths=WIDTHS, tokens=TOKENS, out=OUT) -> dict:
    rows = []
    for name in tasks:
        tc = task_lib.TaskConfig.parse(name)
        for d in widths:
            mc = sweep.dense_model(d, n_layers=2, seq_len=tc.seq_len)
            # the recipe that produced results/task_choice.json (the sweep's first-pass lr rule)
            opt = optim.AdamWConfig(peak_lr=3e-3 * min(1.0, math.sqrt(64 / d)))
            rc = train.RunConfig(task=tc, model=mc, optim=opt, batch_size=256, token_budget=tokens)
            r = train.run(rc)
            rows.append({"task": name, "d_model": d, "n_layers": 2, "params_non_embedding": r.params_non_embedding,
                         "tokens": r.tokens, "peak_lr": opt.peak_lr, "held_out_loss": r.held_out_loss, "held_out_exact": r.held_out_exact,
                         "train_loss": r.train_loss, "wall_time_s": r.wall_time_s})
            print(json.dumps(rows[-1]), flush=True)
    result = {"tokens_per_run": tokens, "rows": rows, "versions": train.versions(),
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.mkdir(parents=True, exist_ok=True)
    (out / "task_choice.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "task_choice.png")
    return result


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["task"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["task"] == name]
        ax.plot([r["params_non_embedding"] for r in rs], [r["held_out_loss"] for r in rs], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters (dense, 2 layers)")
    ax.set_ylabel("held-out answer loss (nats/token)")
    ax.set_title(f"Held-out loss vs size, {result['tokens_per_run']:.0e} tokens per run")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
