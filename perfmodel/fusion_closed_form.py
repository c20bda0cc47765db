"""Closed forms of the fused-vs-ragged_dot comparison for uniform group sizes.

Symbols (``perfmodel.symbols``): ``T`` rows (tokens x k, sorted by expert),
``D``, ``F``, ``E`` experts, fused tiles ``tm, tf``; ``q`` bytes per element;
``P`` per-TensorCore MXU peak, ``W`` per-TensorCore HBM bandwidth,
``t_step`` per grid step, ``t_launch`` per kernel launch.

Assumptions: ``E`` equal groups of ``g = T / E`` rows (``E | T``), ``tf | F``
(the fused kernel allows ``tm`` not dividing ``T``: the partial last tile adds
one tail visit without DMA or compute); XLA's ragged_dot tiles are given numbers (from
:mod:`perfmodel.xla_tiling`), and its kernels follow
:func:`perfmodel.tiling.closed_form.gmm_closed_form`.

Fused kernel (:mod:`kernels.fused_moe`), grid ``(V, F / tf)``:

* visits ``V = ceil(T/tm) + (E - 1) - floor((E - 1) gcd(g, tm) / tm)`` (a token
  tile is visited once per group it holds rows of);
* ``x`` is read once per token tile (its block index does not change across
  a tile's consecutive visits): ``T D q``; the output is written once: ``T D q``;
* weights: every visit streams all ``F / tf`` chunks of ``W_up`` (``W_gate``)
  and ``W_down``: ``(n + 1) D F q V`` with ``n = 2`` for GLU else 1; when
  ``tf = F`` the block index stays while the group does, so each expert's
  weights are read once: ``(n + 1) D F q E``;
* MXU FLOPs per step ``2 ceil8(tm) (n ceilX(D) ceilX(tf) + ceilX(tf) ceilX(D))``
  (``X`` the MXU tile).

Time of one kernel (:meth:`KernelForm.time`): a pipelined roofline on the
busiest TensorCore. Each step's DMA overlaps only its own compute (as in the
walker), so steps that fetch a block which then stays resident (a group's
whole weight slab when ``tf = F``, or a ``K x tn`` rhs slab when XLA's
``tk = K``) are costed apart from the light steps:
``t_launch + share [h max(c, (b + H) / W) + (n - h) max(c, b / W) + n t_step]``
with ``c`` the MXU time per step including the fill cost of every weight tile
(``mxu_fill_rows`` row-cycles per ``X x X`` tile), ``b`` the light bytes per
step, ``h`` heavy steps of ``H`` extra bytes; with ``h = 0`` this is the
whole-kernel ``max(C, B / W)``. On megacore chips (v4, v5p) XLA's ragged_dot
splits its parallel ``n`` axis in contiguous halves over both TensorCores
(busiest share ``ceil(N_t / 2) / N_t``), and the fused kernel its token tiles
once there are at least two (:func:`kernels.fused_spec.megacore_cores`; busiest
share of its visits ``s_fused``, a number read from the kernel's own schedule by
:func:`fused_core_share`, as the cut that best halves them has no closed form), each core with its share of the chip's HBM
bandwidth. The walker's prologue and epilogue are left out, so the closed form
is slightly fast. The
activation pass between the ragged_dots is ``t_launch + bytes / W``.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np
import sympy as sp

from perfmodel import symbols as S
from perfmodel.hardware import get_chip
from perfmodel.tiling.closed_form import Gcd, gmm_closed_form
from perfmodel.tiling.params import FITTED, TimingParams

# Tiles of XLA's up / down ragged_dot kernels (numbers per shape, symbols here).
tm_up, tk_up, tn_up, tm_dn, tk_dn, tn_dn = sp.symbols("t_m^up t_k^up t_n^up t_m^down t_k^down t_n^down",
                                                      integer=True, positive=True)
# VPU element operations per grid step of each kernel (numbers read from the kernels' own
# specs: KernelSpec.step_vpu_flops + epilogue_vpu_ops spread over the k steps).
v_fused, v_up, v_down = sp.symbols("v_fused v_up v_down", nonnegative=True)
# Busiest TensorCore's share of the fused kernel's computing visits on megacore chips (fused_core_share).
s_fused = sp.Symbol("s_fused", positive=True)
# VPU ops of the fused kernel's row mask, paid on steps whose group does not cover the whole tile.
v_mask = sp.Symbol("v_mask", nonnegative=True)
# VPU element operations per second of one TensorCore (vpu_ops_per_cycle x clock).
R_vpu = sp.Symbol("R_vpu", positive=True)


def _pad(x, multiple):
    return sp.ceiling(x / multiple) * multiple


@attrs.frozen
class KernelForm:
    """Symbolic counts of one kernel and the TensorCores it runs on.

    ``share``: the fraction of the work on the busiest TensorCore (``1 / cores`` for an even split).
    ``heavy_steps`` of the ``steps`` also fetch a block that then stays resident (a group's weight slab
    when the kernel reads all of ``K`` or ``F`` at once), ``heavy_bytes`` each; the other bytes and all
    compute are spread evenly over the steps.
    """

    name: str
    steps: sp.Expr
    hbm_bytes: sp.Expr
    mxu_flops: sp.Expr
    fill_flops: sp.Expr  # sum over steps of 2 ceilX(k) ceilX(n) per block matmul
    vpu_ops: sp.Expr
    share: sp.Expr = sp.Integer(1)  # busiest core's fraction of the work (ragged_dot: in N / tn; fused: s_fused)
    heavy_steps: sp.Expr = sp.Integer(0)
    heavy_bytes: sp.Expr = sp.Integer(0)

    def time(self, fill_rows) -> sp.Expr:
        """Pipelined two-class roofline on the busiest core, with ``c`` compute and ``b`` light bytes per
        step (``h = heavy_steps``, ``H = heavy_bytes``, ``n = steps``)::

            c = max(MXU + fill_rows x fill, VPU rate) per step,   b = (hbm_bytes - h H) / n
            t = t_launch + share [h max(c, (b + H) / W) + (n - h) max(c, b / W) + n t_step]

        As the walker (each step's DMA overlaps only its own step's compute), not the whole-kernel
        ``max(C, B / W)``, which it equals when ``h = 0``.
        """
        n, h = self.steps, self.heavy_steps
        c = sp.Max((self.mxu_flops + fill_rows * self.fill_flops) / S.P, self.vpu_ops / R_vpu) / n
        light = (self.hbm_bytes - h * self.heavy_bytes) / n
        pipelined = h * sp.Max(c, (light + self.heavy_bytes) / S.W) + (n - h) * sp.Max(c, light / S.W)
        return S.t_launch + self.share * (pipelined + n * S.t_step)


def fused_form(*, glu: bool, mxu_tile: int, megacore: bool = False) -> KernelForm:
    T, D, F, E, tm, tf, q = S.T, S.D, S.F, S.E, S.tm, S.tf, S.q
    n = 2 if glu else 1
    g = T / E
    tiles_m = sp.ceiling(T / tm)
    # On megacore chips the busiest TensorCore's share of the computing visits is a number read from the
    # kernel's own schedule (fused_core_share), as XLA's tiles are: the cut that best halves the visits has
    # no closed form over tile boundaries.
    share = s_fused if megacore else sp.Integer(1)
    visits = tiles_m + (E - 1) - sp.floor((E - 1) * Gcd(g, tm) / tm)
    # Rows of a partial last tile form a tail group: one more visit with no DMA or compute.
    tail = tiles_m - sp.floor(T / tm)
    steps = (visits + tail) * F / tf
    weights = sp.Piecewise(((n + 1) * D * F * q * E, sp.Eq(tf, F)), ((n + 1) * D * F * q * visits, True))
    X = mxu_tile
    per_step = 2 * _pad(tm, 8) * (n * _pad(D, X) * _pad(tf, X) + _pad(tf, X) * _pad(D, X))
    fill = 2 * (n * _pad(D, X) * _pad(tf, X) + _pad(tf, X) * _pad(D, X))
    real_steps = visits * F / tf
    # Straddling visits (rows of another group, or past T, in the tile): when g >= tm each
    # unaligned inner boundary makes two of them; when g < tm no group covers a whole tile.
    boundaries = (E - 1) - sp.floor((E - 1) * Gcd(g, tm) / tm)
    straddling = sp.Piecewise((visits, g < tm), (2 * boundaries, True)) + tail
    mask_steps = sp.Min(straddling, visits) * F / tf
    # With tf = F each group's weights load once and stay: E heavy steps; with tf < F every step streams
    # its chunk, so the steps are alike.
    heavy_steps = sp.Piecewise((E, sp.Eq(tf, F)), (0, True))
    return KernelForm("fused", steps, 2 * T * D * q + weights, real_steps * per_step, real_steps * fill,
                      real_steps * v_fused + mask_steps * v_mask, share=share, heavy_steps=heavy_steps,
                      heavy_bytes=(n + 1) * D * F * q)


def _gmm_form(name, K, N, tm, tk, tn, vpu, *, mxu_tile: int, cores: int) -> KernelForm:
    cf = gmm_closed_form(mxu_tile=mxu_tile)
    subs = {S.M: S.T, S.K: K, S.N: N, S.G: S.E, S.tm: tm, S.tk: tk, S.tn: tn}
    steps = cf.grid_steps.subs(subs)
    fill = steps * 2 * _pad(tk, mxu_tile) * _pad(tn, mxu_tile)
    # The parallel n axis is split in contiguous halves (ceil) over the cores: the busiest has
    # ceil(N_t / cores) of the N_t column tiles.
    Nt = sp.ceiling(N / tn)
    share = sp.ceiling(Nt / cores) / Nt
    # With tk = K a group's K x tn rhs slab loads once per (column tile, group) and stays: N_t G heavy
    # steps; with tk < K every step streams a tk x tn block.
    single_k = sp.Eq(sp.ceiling(K / tk), 1)
    heavy_steps = sp.Piecewise((Nt * S.E, single_k), (0, True))
    return KernelForm(name, steps, cf.hbm_bytes.subs(subs), cf.mxu_flops.subs(subs), fill, steps * vpu,
                      share=share, heavy_steps=heavy_steps, heavy_bytes=S.q * K * N / Nt)


def unfused_forms(*, glu: bool, mxu_tile: int, cores: int = 1) -> tuple[KernelForm, ...]:
    """XLA ragged_dot up (gate) and down kernels; the activation pass is separate."""
    forms = [_gmm_form("up", S.D, S.F, tm_up, tk_up, tn_up, v_up, mxu_tile=mxu_tile, cores=cores)]
    if glu:
        forms.append(_gmm_form("gate", S.D, S.F, tm_up, tk_up, tn_up, v_up, mxu_tile=mxu_tile, cores=cores))
    forms.append(_gmm_form("down", S.F, S.D, tm_dn, tk_dn, tn_dn, v_down, mxu_tile=mxu_tile, cores=cores))
    return tuple(forms)


def activation_time(*, glu: bool, activation: str) -> sp.Expr:
    from perfmodel.ops import activation as activation_cost

    cost = activation_cost(S.T, S.F, kind=activation, glu=glu)
    return S.t_launch + cost.hbm_bytes / S.W


@attrs.frozen
class SpeedupForm:
    """Sympy times of both paths and the speedup ``t_ragged_dot / t_fused``."""

    fused_time: sp.Expr
    unfused_time: sp.Expr
    fused_bytes: sp.Expr
    unfused_bytes: sp.Expr

    @property
    def speedup(self) -> sp.Expr:
        return self.unfused_time / self.fused_time


@functools.cache
def speedup_form(*, glu: bool, activation: str, mxu_tile: int, megacore: bool, fill_rows: float) -> SpeedupForm:
    fused = fused_form(glu=glu, mxu_tile=mxu_tile, megacore=megacore)
    # XLA's ragged_dot kernel has a "parallel" n axis: megacore chips split it over 2 cores.
    unf = unfused_forms(glu=glu, mxu_tile=mxu_tile, cores=2 if megacore else 1)
    act = activation_time(glu=glu, activation=activation)
    from perfmodel.ops import activation as activation_cost

    act_bytes = activation_cost(S.T, S.F, kind=activation, glu=glu).hbm_bytes
    return SpeedupForm(
        fused_time=fused.time(fill_rows), unfused_time=sp.Add(*[f.time(fill_rows) for f in unf]) + act,
        fused_bytes=fused.hbm_bytes, unfused_bytes=sp.Add(*[f.hbm_bytes for f in unf]) + act_bytes)


_ARGS = (S.T, S.D, S.F, S.E, S.tm, S.tf, tm_up, tk_up, tn_up, tm_dn, tk_dn, tn_dn, v_fused, v_mask, v_up, v_down,
         s_fused, S.q, S.P, S.W, R_vpu, S.t_step, S.t_launch)


def _gcd(a, b):
    return np.gcd(np.rint(a).astype(np.int64), np.rint(b).astype(np.int64)).astype(np.float64)


@functools.cache
def _compiled(glu: bool, activation: str, mxu_tile: int, megacore: bool, fill_rows: float):
    form = speedup_form(glu=glu, activation=activation, mxu_tile=mxu_tile, megacore=megacore,
                        fill_rows=fill_rows)
    modules = [{"Gcd": _gcd, "ceiling": np.ceil, "floor": np.floor}, "numpy"]
    return sp.lambdify(_ARGS, [form.fused_time, form.unfused_time], modules=modules)


@attrs.frozen
class ClosedFormTimes:
    fused_time_s: np.ndarray
    unfused_time_s: np.ndarray

    @property
    def speedup(self) -> np.ndarray:
        return self.unfused_time_s / self.fused_time_s


def evaluate_times(chip, *, rows, D, F, E, tm, tf, xla_up, xla_down, vpu_per_step, q: int, glu: bool,
                   activation: str, dtype: str = "bf16", fused_share=None,
                   params: TimingParams = FITTED) -> ClosedFormTimes:
    """Numeric closed-form times (numpy arrays broadcast together).

    ``dtype`` selects the MXU peak ``P`` (as the walker's ``mxu_dtype``); ``q`` is its bytes per element.

    ``xla_up`` / ``xla_down``: ``(tm, tk, tn)`` arrays of XLA's tiles for the
    up ``[rows, D] @ [E, D, F]`` and down ``[rows, F] @ [E, F, D]`` calls;
    ``vpu_per_step``: ``(fused, fused row mask, up, down)`` VPU ops per grid step
    (:func:`vpu_ops_per_step`); ``fused_share``: the busiest TensorCore's share of the fused kernel's
    visits (:func:`fused_core_share`; computed here when not given, ignored on single-core chips).
    """
    c = get_chip(chip)
    if fused_share is None:
        fused_share = np.vectorize(lambda r, t: fused_core_share(c.name, rows=int(r), E=int(E), tm=int(t)))(rows, tm) \
            if c.megacore else 1.0
    fn = _compiled(glu, activation, c.mxu_tile, bool(c.megacore), float(params.mxu_fill_rows))
    launch = c.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
    step = (c.grid_step_overhead_s or 0.0) if params.grid_step_overhead_s is None else params.grid_step_overhead_s
    P = c.per_core_flops_per_s(dtype) * params.mxu_efficiency
    W = c.per_core_hbm_bytes_per_s() * params.hbm_efficiency
    from perfmodel.tiling.walker import core_clock_hz

    vpu_rate = np.inf if params.vpu_ops_per_cycle is None else params.vpu_ops_per_cycle * core_clock_hz(c)
    args = [rows, D, F, E, tm, tf, *xla_up, *xla_down, *vpu_per_step, fused_share]
    args = [np.asarray(a, dtype=np.float64) for a in args]
    fused, unfused = fn(*args, q, P, W, vpu_rate, step, launch)
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    return ClosedFormTimes(np.broadcast_to(fused, shape), np.broadcast_to(unfused, shape))


@functools.lru_cache(maxsize=65536)
def fused_core_share(chip, *, rows: int, E: int, tm: int) -> float:
    """The busiest TensorCore's share of the fused kernel's computing visits for ``E`` equal groups.

    Read from the kernel's own schedule (:func:`kernels.fused_spec.make_group_metadata`, numpy: no jax), with
    ``cores`` from :func:`kernels.fused_spec.megacore_cores`): 1 on single-core chips or with one token
    tile, else ``max(core visits) / visits`` at the tile boundary that best halves them (equal groups of
    ``rows / E``, which must divide).
    """
    from kernels.fused_spec import make_group_metadata, megacore_cores

    c = get_chip(chip)
    if rows % E:
        raise ValueError(f"rows={rows} must be a multiple of E={E} (equal groups)")
    cores = megacore_cores(c, T=rows, tm=tm)
    if cores == 1:
        return 1.0
    meta = make_group_metadata(group_sizes=np.full(E, rows // E), m=rows, tm=tm, cores=cores)
    computing = (1 - np.asarray(meta.idle_steps).reshape(cores, -1)).sum(axis=1)
    return float(computing.max() / computing.sum())


def vpu_ops_per_step(*, D: int, F: int, tm: int, tf: int, xla_up, xla_down, dtype: str, glu: bool,
                     activation: str) -> tuple[float, float, float, float]:
    """VPU ops per grid step of the fused kernel (always; on straddling steps), up and down kernels.

    Read from the kernels' own specs.

    Per-step work does not depend on the number of rows or groups, so each
    spec is built for one token tile and one group. Work charged once per
    output tile over ``k`` steps (the gmm store epilogue) is spread evenly.
    """
    from kernels.fused_spec import FusedTiles, fused_moe_spec
    from perfmodel.tiling.gmm import ragged_dot_spec

    spec = fused_moe_spec(T=tm, D=D, F=tf, G=1, dtype=dtype, tiles=FusedTiles(tm=tm, tf=tf), glu=glu,
                          activation=activation)

    def gmm(k, n, tiles):
        t_m, t_k, t_n = (int(x) for x in tiles)
        spec = ragged_dot_spec(None, [t_m], k, n, m=t_m, dtype=dtype, tiling=(t_m, t_k, t_n))
        k_steps = -(-k // t_k)
        return spec.step_vpu_flops + spec.epilogue_vpu_ops / k_steps

    return float(spec.step_vpu_flops), float(spec.epilogue_vpu_ops), gmm(D, F, xla_up), gmm(F, D, xla_down)


@attrs.frozen
class Crossover:
    """Rows ``T*`` where both paths move the same HBM bytes (memory-bound regime)."""

    byte_difference: sp.Expr  # ragged_dot-path bytes - fused bytes, as a function of T
    rows: sp.Expr  # T* solving byte_difference = 0 (may be negative: no crossover)
    assumptions: str


@functools.cache
def crossover(*, glu: bool, activation: str = "silu") -> Crossover:
    """Solve ``B_ragged_dot(T) = B_fused(T)`` symbolically.

    Assumptions: both paths memory-bound with fixed costs ignored; XLA reads
    each projection's full ``K`` in one block (``tk = K``, the common case:
    lhs read once per output column tile, ``ceil(N / tn)`` times); the fused
    kernel streams ``F`` in several chunks (``tf < F``) and its token tiles
    straddle groups at every boundary (``tm`` does not divide ``T / E``):
    visits ``T / tm + E - 1``. Linear in ``T``, so sympy solves it exactly.
    """
    from perfmodel.ops import activation as activation_cost

    T, D, F, E, tm, q = S.T, S.D, S.F, S.E, S.tm, S.q
    n = 2 if glu else 1
    Nt_up, Nt_dn = sp.symbols("N_t^up N_t^down", positive=True)  # ceil(F / tn_up), ceil(D / tn_down)
    fused = 2 * T * D * q + (n + 1) * D * F * q * (T / tm + E - 1)
    up = Nt_up * T * D * q + D * F * q * E + T * F * q
    down = Nt_dn * T * F * q + F * D * q * E + T * D * q
    act = activation_cost(T, F, kind=activation, glu=glu).hbm_bytes
    diff = sp.expand(n * up + act + down - fused)
    sol = sp.solve(sp.Eq(diff, 0), T)
    return Crossover(byte_difference=diff, rows=sp.simplify(sol[0]) if sol else sp.nan,
                     assumptions=crossover.__doc__.split("Assumptions:")[1].strip())
