"""Time-optimal vs FLOP-optimal allocation on a chip (dense and MoE).

Scaling laws allocate a FLOP budget; a practitioner has a *time* budget on
a chip. Here each candidate model size is turned into seconds per training
token with perfmodel's roofline (:func:`perfmodel.api.predict` of
``decoder_train_step``), so the tokens a time budget buys depend on how well
that size uses the chip, and the loss law is minimised over what is actually
achievable.

Model family (one knob: depth ``L``): ``d_model = 128 L``, head dim 128,
``H = Hkv = d_model / 128``, FFN width ``F = 4 d_model`` (GELU), vocabulary
32000, sequence 2048; the MoE has E experts of width F, top-1 routing (the
joint law's setting), so dense and MoE of equal depth have equal active
parameters. ``N`` = active non-embedding parameters
(:meth:`perfmodel.transformer.TransformerShape.params`).

Time per token::

    t_tok(N) = (t_fwd + t_bwd) / tokens_per_step + t_adamw / global_batch_tokens

with ``t_fwd, t_bwd, t_adamw`` the roofline lower bounds of the three parts of
``decoder_train_step`` at ``tokens_per_step`` tokens per chip (B x T), each
the sum of its kernels' ``max(compute, memory)`` (:meth:`Prediction.time_of`:
no overlap across kernels, so a memory-bound norm does not hide under a
compute-bound matmul); the
optimizer update is sharded over the chips (ZeRO-style), so it is paid once
per *global* batch. The time budget is in chip-seconds (perfect scaling over
chips; no communication). Tokens ``D(N) = time_s / t_tok(N)``; loss from
:class:`perfmodel.scaling.moe_laws.JointMoELaw` at E (E=1 for dense).

* **time-optimal**: ``argmin_N L(N, D(N))`` over the family;
* **FLOP-optimal**: what a FLOP planner picks knowing its achieved MFU: the
  fixed point ``C = 6 N_opt(C) D(N_opt(C))`` (start from ``C = time x peak``),
  then trained for the same time budget.

MoE FFN time (``ffn``): ``"ideal"`` keeps the roofline of ``moe_ffn_unfused``
inside ``decoder_train_step`` (ragged_dot at ideal traffic, backward = 2 x
forward); ``"ideal-fused"`` uses ``moe_ffn_fused`` (intermediate kept on
chip); ``"xla-ragged-dot"`` uses the kernel tiling model
(:func:`perfmodel.tiling.predict.xla_ragged_dot_time`, XLA's tiling rule, no
compile): forward, dlhs and drhs of the up and down projections at
``T k / E`` rows per expert (balanced routing), where XLA's drhs is a dense
masked matmul (E x the useful FLOPs, FACTS section 2). Any other model plugs
in through the hook ``moe_ffn_train_time_s(chip, dtype, *, T, D, F, E, k) ->
seconds`` (forward + backward of one layer's MoE FFN), which replaces the
roofline FFN time inside the step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import attrs
import numpy as np

from perfmodel.scaling import moe_laws

ASPECT = 128  # d_model per layer
HEAD_DIM = 128
VOCAB = 32000
SEQ_LEN = 2048
GLOBAL_BATCH_TOKENS = 4 * 1024 * 1024  # tokens per optimizer step over all chips (the AdamW update is
# amortised over them)
DEPTHS = tuple(range(1, 97))

HEADERS = ["arch", "choice", "L", "d_model", "N_act", "N_total", "tokens", "D/N_act", "MFU", "C achieved",
           "loss"]
ASSUMPTIONS = ("family d_model = 128 L, F = 4 d_model, head dim 128, V = 32000, T = 2048; MoE top-1 with E experts "
               "of width F. Time = sum of the roofline lower bounds of decoder_train_step's kernels (no "
               "overheads, no communication), optimizer sharded over the global batch; budget in chip-seconds. MFU = 6 N_act D / "
               "(time x peak).")

MoeFfnTime = Callable[..., float]
FFN_MODELS = ("ideal", "ideal-fused", "xla-ragged-dot")


def ideal_fused_ffn_train_time_s(chip, dtype, *, T, D, F, E, k) -> float:
    """3 x the fused MoE FFN's forward roofline (backward = 2 x forward)."""
    from perfmodel.api import predict

    return 3 * predict("moe_ffn_fused", chip=chip, dtype=dtype, T=T, D=D, F=F, E=E, k=k).time_s


def xla_ragged_dot_ffn_train_time_s(chip, dtype, *, T, D, F, E, k) -> float:
    """Forward + backward of a ragged_dot MoE FFN with the kernel tiling model (balanced groups).

    up ``[Tk, D] @ [E, D, F]`` and down ``[Tk, F] @ [E, F, D]``: each has a
    forward, a dlhs (rhs contracted on its last dim) and a drhs call; the
    activation pass is the roofline of ``activation`` (x3 for fwd + bwd).
    """
    import numpy as np

    from perfmodel.api import predict
    from perfmodel.tiling.predict import xla_ragged_dot_time

    rows = T * k
    if not divides_into_balanced_groups(rows, E):
        raise ValueError(f"T*k={rows} should be divisible by E={E} for balanced groups")
    groups = np.full(E, rows // E)

    def t(kind, kk, nn):
        return xla_ragged_dot_time(chip, groups, kk, nn, kind=kind, dtype=dtype, allow_compile=False).time_s

    up = t("forward", D, F) + t("dlhs", F, D) + t("drhs", D, F)
    down = t("forward", F, D) + t("dlhs", D, F) + t("drhs", F, D)
    act = 3 * predict("activation", chip=chip, dtype=dtype, M=rows, F=F).time_s
    return up + down + act


def divides_into_balanced_groups(rows: int, n_experts: int) -> bool:
    """The balanced-groups rule of the ragged_dot time model: ``rows = T k`` splits into E equal groups iff E | rows."""
    return rows % n_experts == 0


def check_balanced_groups(*, ffn: str, n_experts: int, tokens_per_step: int, hooked: bool = False) -> None:
    """``ffn="xla-ragged-dot"`` models top-1 routing into E equal groups: E must divide the tokens per step.

    Same rule as ``xla_ragged_dot_ffn_train_time_s`` (``divides_into_balanced_groups`` with k = 1), checked
    before any model is built so the error names the CLI flags.

    Skipped when a caller supplies its own FFN time (``hooked``) or the model is dense.
    """
    if (ffn == "xla-ragged-dot" and not hooked and n_experts > 1
            and not divides_into_balanced_groups(tokens_per_step, n_experts)):
        raise ValueError(f"ffn='xla-ragged-dot' models balanced groups: tokens per chip step (--tokens-per-chip-step) "
                         f"must be divisible by the number of experts (--experts), got "
                         f"tokens_per_step={tokens_per_step}, n_experts={n_experts}")


@attrs.frozen(kw_only=True)
class SizeCost:
    """One model of the family on a chip."""

    n_layers: int
    d_model: int
    params_active: float  # active non-embedding
    params_total: float
    seconds_per_token: float

    def mfu(self, peak_flops_per_s: float) -> float:
        return 6 * self.params_active / (self.seconds_per_token * peak_flops_per_s)


@attrs.frozen(kw_only=True)
class Allocation:
    arch: str
    choice: str  # "time-optimal" | "FLOP-optimal"
    chip: str
    n_experts: int
    size: SizeCost
    tokens: float
    mfu: float
    compute_flops: float  # 6 N_act D achieved
    loss: float

    def as_dict(self) -> dict:
        return attrs.asdict(self)

    def cells(self) -> list[str]:
        from perfmodel.hardware import format_si

        s = self.size
        return [self.arch, self.choice, s.n_layers, s.d_model, format_si(s.params_active), format_si(s.params_total),
                format_si(self.tokens), f"{self.tokens / s.params_active:.3g}", f"{self.mfu:.1%}",
                f"{self.compute_flops:.3g}", f"{self.loss:.4f}"]


def _shape(n_layers: int, n_experts: int):
    from perfmodel.transformer import TransformerShape

    d = ASPECT * n_layers
    return TransformerShape(d_model=d, d_ff=4 * d, n_layers=n_layers, vocab=VOCAB, seq_len=SEQ_LEN,
                            n_heads=d // HEAD_DIM, head_dim=HEAD_DIM, n_experts=n_experts, top_k=1)


def size_cost(n_layers: int, *, chip: str = "v5e", n_experts: int = 1, dtype: str = "bf16", ffn: str = "ideal",
              tokens_per_step: int = 16384, global_batch_tokens: int = GLOBAL_BATCH_TOKENS,
              moe_ffn_train_time_s: MoeFfnTime | None = None) -> SizeCost:
    """Seconds per training token of the family member with ``n_layers`` layers."""
    from perfmodel.api import predict

    if tokens_per_step % SEQ_LEN:
        raise ValueError(f"tokens per chip step (--tokens-per-chip-step) must be a multiple of the sequence length "
                         f"{SEQ_LEN}, got tokens_per_step={tokens_per_step}")
    if tokens_per_step > global_batch_tokens:  # one chip's step is a slice of the global batch, never more
        raise ValueError(f"tokens per chip step (--tokens-per-chip-step) cannot exceed the global batch of "
                         f"{global_batch_tokens:,} tokens the optimizer step is amortised over, got "
                         f"tokens_per_step={tokens_per_step}")
    if ffn not in FFN_MODELS:
        raise ValueError(f"ffn must be one of {FFN_MODELS}, got {ffn=!r}")
    check_balanced_groups(ffn=ffn, n_experts=n_experts, tokens_per_step=tokens_per_step,
                          hooked=moe_ffn_train_time_s is not None)
    shape = _shape(n_layers, n_experts)
    B = tokens_per_step // SEQ_LEN
    dims = dict(B=B, T=SEQ_LEN, D=shape.d_model, F=shape.d_ff, H=shape.n_heads, Hkv=shape.hkv, Dh=shape.dh,
                L=n_layers, V=VOCAB)
    moe = n_experts > 1
    if moe:
        dims |= dict(E=n_experts, k=1, moe=True)
    pred = predict("decoder_train_step", chip=chip, dtype=dtype, **dims)
    step_s = pred.time_of("decoder_forward") + pred.time_of("backward")
    hook = moe_ffn_train_time_s or {"ideal": None, "ideal-fused": ideal_fused_ffn_train_time_s,
                                     "xla-ragged-dot": xla_ragged_dot_ffn_train_time_s}[ffn]
    if moe and hook is not None:
        ffn_dims = dict(T=tokens_per_step, D=shape.d_model, F=shape.d_ff, E=n_experts, k=1)
        base = 3 * predict("moe_ffn_unfused", chip=chip, dtype=dtype, **ffn_dims).time_s  # fwd + 2 x fwd
        step_s += n_layers * (float(hook(chip, dtype, **ffn_dims)) - base)
    per_token = step_s / tokens_per_step + pred.time_of("adamw") / global_batch_tokens
    p = shape.params()
    return SizeCost(n_layers=n_layers, d_model=shape.d_model, params_active=float(p.active_non_embedding),
                    params_total=float(p.non_embedding), seconds_per_token=per_token)


@attrs.frozen(kw_only=True)
class TimeBudgetCurve:
    """Every family member trained for the same time budget: its tokens and predicted loss."""

    arch: str
    chip: str
    n_experts: int
    time_s: float
    peak_flops_per_s: float
    sizes: tuple[SizeCost, ...]
    tokens: np.ndarray
    loss: np.ndarray
    law: object = attrs.field(repr=False)  # the Chinchilla law at this E

    @property
    def params_active(self) -> np.ndarray:
        return np.array([s.params_active for s in self.sizes])


def check_time_budget(time_s: float, *, chip: str = "v5e", dtype: str = "bf16", name: str = "time_s",
                      value: float | None = None) -> None:
    """``ValueError`` unless ``time_s`` is finite and positive and the compute it buys at the chip's peak,
    ``time_s x peak`` (an upper bound on every member's ``6 N_act D``, and the FLOP planner's start), is a
    finite float: past it the tokens and FLOPs of the allocation overflow.

    ``name`` and ``value`` are how the caller's user gave the budget (``"--hours"``, in hours), for the message.
    """
    from perfmodel.hardware import get_chip

    value = time_s if value is None else value
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {name}={value!r}")
    c = get_chip(chip)
    peak = c.peak_flops_per_s(dtype)
    if not math.isfinite(time_s * peak):  # time_s itself may have overflowed converting value to seconds
        raise ValueError(f"{name} is too large: that many chip-seconds at the {c.name} peak of {peak:.3g} FLOP/s is "
                         f"more compute than a float holds ({sys.float_info.max:.3g} FLOPs), got {name}={value!r}")


def loss_curve(*, chip: str = "v5e", time_s: float, n_experts: int = 1, dtype: str = "bf16", ffn: str = "ideal",
               tokens_per_step: int = 16384, global_batch_tokens: int = GLOBAL_BATCH_TOKENS,
               moe_ffn_train_time_s: MoeFfnTime | None = None, law: moe_laws.JointMoELaw | None = None,
               depths=DEPTHS) -> TimeBudgetCurve:
    """Tokens ``D(N) = time_s / t_tok(N)`` and loss ``L(N, D(N))`` over the family."""
    from perfmodel.hardware import get_chip

    check_time_budget(time_s, chip=chip, dtype=dtype)
    c = get_chip(chip)
    law_e = (law or moe_laws.JointMoELaw()).at_experts(n_experts)
    sizes = tuple(size_cost(L, chip=chip, n_experts=n_experts, dtype=dtype, ffn=ffn, tokens_per_step=tokens_per_step,
                            global_batch_tokens=global_batch_tokens, moe_ffn_train_time_s=moe_ffn_train_time_s)
                  for L in depths)
    n = np.array([s.params_active for s in sizes])
    tokens = np.array([time_s / s.seconds_per_token for s in sizes])
    return TimeBudgetCurve(arch="dense" if n_experts == 1 else f"moe E={n_experts}", chip=c.name,
                           n_experts=n_experts, time_s=time_s, peak_flops_per_s=c.peak_flops_per_s(dtype),
                           sizes=sizes, tokens=tokens, loss=np.asarray(law_e.loss(n, tokens)), law=law_e)


def pick(curve: TimeBudgetCurve) -> tuple[Allocation, Allocation]:
    """(time-optimal, FLOP-optimal) members of ``curve``."""
    n, tokens, loss, peak = curve.params_active, curve.tokens, curve.loss, curve.peak_flops_per_s

    def alloc(i: int, choice: str) -> Allocation:
        s = curve.sizes[i]
        return Allocation(arch=curve.arch, choice=choice, chip=curve.chip, n_experts=curve.n_experts, size=s,
                          tokens=float(tokens[i]), mfu=s.mfu(peak), compute_flops=float(6 * s.params_active * tokens[i]),
                          loss=float(loss[i]))

    t_opt = int(np.argmin(loss))
    # FLOP planner: C -> N_opt(C) -> nearest family member -> its achieved C; iterate to a fixed point.
    compute = curve.time_s * peak
    i = 0
    for _ in range(50):
        target = float(curve.law.optimal(compute).params)
        i_new = int(np.argmin(np.abs(np.log(n / target))))
        compute_new = float(6 * n[i_new] * tokens[i_new])
        if i_new == i and math.isclose(compute_new, compute, rel_tol=1e-9):
            break
        i, compute = i_new, compute_new
    return alloc(t_opt, "time-optimal"), alloc(i, "FLOP-optimal")


def allocate(**kwargs) -> tuple[Allocation, Allocation]:
    """(time-optimal, FLOP-optimal) allocations; arguments as :func:`loss_curve`."""
    return pick(loss_curve(**kwargs))


def compare(*, chip: str = "v5e", time_s: float, n_experts: int = 8, ffn: str = "ideal",
            tokens_per_step: int = 16384, moe_ffn_train_time_s: MoeFfnTime | None = None,
            plot_path=None) -> list[Allocation]:
    """Dense and MoE (E experts), each time-optimal and FLOP-optimal, at the same time budget."""
    if n_experts < 2:
        raise ValueError(f"n_experts must be >= 2 for the MoE side, got {n_experts=}")
    # before the dense curve is costed, so a bad MoE setting fails at once
    check_balanced_groups(ffn=ffn, n_experts=n_experts, tokens_per_step=tokens_per_step,
                          hooked=moe_ffn_train_time_s is not None)
    curves = [loss_curve(chip=chip, time_s=time_s, n_experts=e, ffn=ffn, tokens_per_step=tokens_per_step,
                         moe_ffn_train_time_s=moe_ffn_train_time_s) for e in (1, n_experts)]
    out = [a for c in curves for a in pick(c)]
    if plot_path is not None:
        from perfmodel.scaling.plots import plot_time_budget

        plot_time_budget(curves, out, plot_path, ffn=ffn)
    return out
