"""One training run: a model, a task, a token budget -> a :class:`RunResult`.

Conventions

* a *token* is one model position: a step processes ``B T`` tokens (padding
  positions included: the model computes them), so ``tokens = steps B T``;
* ``steps = max(1, round(token_budget / (B T)))``; the schedule ends at that step;
* FLOPs per token come from :meth:`perfmodel.transformer.TransformerShape.flops_per_token`:
  ``train_exact`` (3 x forward matmul FLOPs, attention square and unembedding
  included) is what budgets are measured in; ``six_n`` (6 N_active_non_embedding)
  is recorded too. Run FLOPs = tokens x FLOPs per token.
* ``train_loss`` is the mean answer cross-entropy (nats per answer token) of
  the last 10% of steps; ``held_out_loss`` is the same quantity on the fixed
  held-out problems (:func:`validation.arith.task.held_out_set`) after the
  last step; ``held_out_exact`` the fraction of those problems whose whole
  answer is right under teacher forcing (argmax at every answer target).
* throughput excludes the first step (compilation) and evaluation.
"""

from __future__ import annotations

import functools
import platform
import time

import attrs
import jax
import jax.numpy as jnp
import numpy as np

from validation.arith import optim, task as task_lib
from validation.arith.model import ModelConfig, count_params, forward, init_params, loss_fn


@attrs.frozen(kw_only=True)
class RunConfig:
    task: task_lib.TaskConfig
    model: ModelConfig
    optim: optim.AdamWConfig = optim.AdamWConfig()
    batch_size: int = 256
    token_budget: int = 1_000_000
    seed: int = 0
    aux_weight: float = 0.01  # load-balancing loss weight (MoE)
    curve_points: int = 40
    eval_size: int = 2048

    def __attrs_post_init__(self):
        if self.model.seq_len != self.task.seq_len:
            raise ValueError(f"model seq_len={self.model.seq_len} must equal the task's {self.task.seq_len}")
        if self.token_budget < self.batch_size * self.task.seq_len:
            raise ValueError(f"token_budget={self.token_budget} is below one batch ({self.batch_size} x {self.task.seq_len})")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.task.seq_len

    @property
    def steps(self) -> int:
        return max(1, round(self.token_budget / self.tokens_per_step))


@attrs.frozen(kw_only=True)
class RunResult:
    steps: int
    tokens: int
    params_total: int
    params_active: int
    params_non_embedding: int
    params_active_non_embedding: int
    flops_per_token_train: int
    flops_per_token_six_n: int
    flops: float
    train_loss: float
    held_out_loss: float
    held_out_exact: float
    curve_tokens: tuple[int, ...]
    curve_train_loss: tuple[float, ...]
    curve_held_out_loss: tuple[float, ...]  # at curve_tokens_held_out
    curve_tokens_held_out: tuple[int, ...]
    load_balance_loss: float
    wall_time_s: float
    compile_time_s: float
    tokens_per_s: float
    flops_per_s: float
    device: str
    versions: dict


def make_train_step(cfg: ModelConfig, opt: optim.AdamWConfig, total_steps: int, aux_weight: float):
    """(params, state, tokens, mask) -> (params, state, (answer CE, lb loss, grad norm)); jitted."""

    def step(params, state, tokens, mask):
        (_, (ce, lb)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens, mask, cfg, aux_weight)
        lr = optim.lr_at(state["step"] + 1, total_steps, opt)
        params, state, gnorm = optim.apply_updates(params, grads, state, lr, opt)
        return params, state, (ce, lb, gnorm)

    return jax.jit(step, donate_argnums=(0, 1))


def make_eval(cfg: ModelConfig):
    """tokens, mask -> (answer CE, exact-match fraction); jitted."""

    def ev(params, tokens, mask):
        logits, _ = forward(params, tokens[:, :-1], cfg)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tgt = tokens[:, 1:]
        nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
        ce = jnp.sum(nll * mask) / jnp.sum(mask)
        wrong = jnp.sum((jnp.argmax(logits, -1) != tgt) * mask, axis=1)
        return ce, jnp.mean(wrong == 0)

    return jax.jit(ev)


def versions() -> dict:
    return {"jax": jax.__version__, "numpy": np.__version__, "python": platform.python_version()}


def run(rc: RunConfig, *, log=None) -> RunResult:
    """Train from scratch and evaluate; deterministic in ``rc.seed`` (data and init)."""
    t_start = time.perf_counter()
    shape = rc.model.shape
    pc, fpt = shape.params(), shape.flops_per_token()
    # jitted: eager init compiles one tiny kernel per op and shape (~10 s on a busy 2-core host)
    params = jax.jit(functools.partial(init_params, rc.model))(jax.random.PRNGKey(rc.seed))
    n = count_params(params)
    if n != pc.total:
        raise AssertionError(f"model has {n} parameters but TransformerShape counts {pc.total}")
    state = jax.jit(optim.init_state)(params)
    steps = rc.steps
    step_fn = make_train_step(rc.model, rc.optim, steps, rc.aux_weight)
    eval_fn = make_eval(rc.model)
    ev_tokens, ev_mask = task_lib.held_out_set(rc.task, rc.eval_size)
    data = task_lib.batches(rc.task, rc.batch_size, seed=rc.seed + 1)

    ce_hist, lb_hist = np.zeros(steps), np.zeros(steps)
    n_eval = min(5, steps)
    eval_at = set(np.unique(np.linspace(1, steps, n_eval).round().astype(int)).tolist())
    ho_tokens, ho_curve = [], []
    compile_s, t_loop, t_eval = 0.0, 0.0, 0.0
    for s in range(1, steps + 1):
        tokens, mask = next(data)
        t0 = time.perf_counter()
        params, state, (ce, lb, _) = step_fn(params, state, tokens, mask)
        ce_hist[s - 1], lb_hist[s - 1] = float(ce), float(lb)  # blocks: honest per-step timing
        dt = time.perf_counter() - t0
        if s == 1:
            compile_s = dt
        else:
            t_loop += dt
        if s in eval_at:
            t0 = time.perf_counter()
            ho, exact = eval_fn(params, ev_tokens, ev_mask)
            ho_tokens.append(s * rc.tokens_per_step)
            ho_curve.append(float(ho))
            t_eval += time.perf_counter() - t0
        if log is not None and (s % max(1, steps // 5) == 0 or s == steps):
            log(f"step {s}/{steps} train CE {ce_hist[s - 1]:.4f}")
    # the last step is always in eval_at: ho, exact hold the final held-out numbers
    tail = max(1, steps // 10)
    bounds = np.unique(np.linspace(0, steps, min(rc.curve_points, steps) + 1).round().astype(int))
    curve_steps = bounds[1:]
    curve_loss = [float(ce_hist[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:])]
    tokens = steps * rc.tokens_per_step
    steady_tokens = (steps - 1) * rc.tokens_per_step
    tps = steady_tokens / t_loop if steps > 1 and t_loop > 0 else float("nan")
    dev = jax.devices()[0]
    return RunResult(
        steps=steps, tokens=tokens, params_total=pc.total, params_active=pc.active,
        params_non_embedding=pc.non_embedding, params_active_non_embedding=pc.active_non_embedding,
        flops_per_token_train=fpt.train_exact, flops_per_token_six_n=fpt.six_n,
        flops=float(tokens) * fpt.train_exact,
        train_loss=float(ce_hist[-tail:].mean()), held_out_loss=float(ho), held_out_exact=float(exact),
        curve_tokens=tuple(int(c) * rc.tokens_per_step for c in curve_steps), curve_train_loss=tuple(curve_loss),
        curve_held_out_loss=tuple(ho_curve), curve_tokens_held_out=tuple(ho_tokens),
        load_balance_loss=float(lb_hist[-tail:].mean()),
        wall_time_s=time.perf_counter() - t_start, compile_time_s=compile_s,
        tokens_per_s=tps, flops_per_s=tps * fpt.train_exact,
        device=f"{dev.platform}:{dev.device_kind}", versions=versions())


def compiled_step_flops(rc: RunConfig) -> float:
    """XLA's ``cost_analysis()['flops']`` of one compiled train step (for the FLOP-count check)."""
    params = init_params(rc.model, jax.random.PRNGKey(0))
    state = optim.init_state(params)
    tokens, mask = next(task_lib.batches(rc.task, rc.batch_size, seed=0))
    step_fn = make_train_step(rc.model, rc.optim, rc.steps, rc.aux_weight)
    cost = step_fn.lower(params, state, tokens, mask).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])
