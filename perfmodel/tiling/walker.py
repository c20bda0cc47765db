"""Vectorised grid walker: exact traffic, padded MXU work and pipelined time of a KernelSpec.

Counting rules (Pallas TPU pipelining, ``../shared/FACTS.md`` section 3)
-----------------------------------------------------------------------
* The grid runs in row-major order (last axis fastest) on each TensorCore.
* An input block is copied HBM -> VMEM at a step whose block index differs
  from the previous step's on that core (and at the core's first step).
* An output block is written back VMEM -> HBM when the next step's block index
  differs, and after the core's last step.
* Bytes per copy are the in-bounds part of the block (edge blocks of a
  ``cdiv`` grid are partial: the DMA is clipped to the array).
* MXU FLOPs of a block matmul ``(m, k, n)``: ``2 * ceil8(m) * ceilT(k) * ceilT(n)``
  with ``T = chip.mxu_tile`` (128 up to v5, 256 on v6e/7x): the stationary
  operand of the systolic array is a ``T x T`` tile of the ``k x n`` matrix,
  so ``k`` and ``n`` are padded to ``T``; rows stream through in groups of 8
  sublanes, so ``m`` is padded to 8 only. Every executed step counts, so a
  row tile that is visited once per group (straddling tiles) counts twice.

Megacore and per-core peaks
---------------------------
A jax device is the whole chip on v4/v5p (megacore: two TensorCores behind one
device) and on v5e/v6e (one TensorCore); on 7x each TensorCore is its own
device (``hardware.py``). A kernel therefore runs on ``cores`` TensorCores:
2 on a megacore chip when the grid has a ``"parallel"`` axis of size >= 2, else
1. Each core gets ``chip.per_core_flops_per_s`` and
``chip.per_core_hbm_bytes_per_s`` (peak / TensorCores per chip): on 7x a
kernel sees half the chip, as a jax device does. The megacore split gives each
core a contiguous half (ceil) of the first parallel axis of size >= 2; each
core walks its sub-grid in row-major order with its own copy history.

Time model (per core, then the slowest core)
--------------------------------------------
With ``c_s`` the compute time of step ``s``, ``r_s`` the input bytes fetched
for step ``s``, ``w_s`` the output bytes written back after step ``s``, ``bw`` =
per-core HBM bandwidth x hbm_efficiency, ``n_dma_s`` the copies issued during
step ``s``::

    c_s      = max(MXU_s, VPU_s)
    MXU_s    = sum over block matmuls of 2 (ceil8(m) + fill_rows) ceilT(k) ceilT(n) / (peak x mxu_efficiency)
    VPU_s    = VPU element ops of the step / (vpu_ops_per_cycle x clock)     (0 if not timed)
    prologue = r_0 / bw + (#copies for step 0) * dma_latency      (first fetch not hidden)
    step_s   = max(c_s, (r_{s+1} + w_{s-1}) / bw + n_dma_s * dma_latency) + step_overhead
    epilogue = w_last / bw + (#copies) * dma_latency              (last writeback not hidden)
    time     = launch_overhead + prologue + sum_s step_s + epilogue

Constants come from :class:`perfmodel.tiling.params.TimingParams`.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from perfmodel.hardware import Chip, get_chip, get_tpu_chip
from perfmodel.tiling.params import DEFAULT, TimingParams
from perfmodel.tiling.spec import KernelSpec, Operand
from perfmodel.tiling.vmem import mosaic_spill_bytes

SUBLANES = 8
"""Rows stream through the MXU in groups of 8 sublanes: m is padded to this."""


def pad_to(x: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``x``."""
    return -(-x // multiple) * multiple


def mxu_flops(m: int, k: int, n: int, mxu_tile: int) -> int:
    """MXU FLOPs of one ``(m, k, n)`` block matmul: ``2 * ceil8(m) * ceilT(k) * ceilT(n)``."""
    return 2 * pad_to(m, SUBLANES) * pad_to(k, mxu_tile) * pad_to(n, mxu_tile)


@attrs.frozen(kw_only=True)
class OperandTraffic:
    """HBM traffic of one operand: ``copies`` DMAs moving ``hbm_bytes`` in total."""

    name: str
    role: str
    copies: int
    hbm_bytes: int


@attrs.frozen(kw_only=True, eq=False)
class StepProfile:
    """The schedule reduced to what the time model needs, exactly.

    Row ``i``: ``count[i]`` grid steps on core ``core[i]`` that each execute
    ``step_flops[i]`` MXU FLOPs (plus ``fill_flops[i]`` per MXU fill row, the
    weight-tile loads) and ``vpu_ops[i]`` VPU element operations while ``dma_bytes[i]`` bytes in
    ``dma_copies[i]`` block copies move in the background (next step's
    inputs, previous step's outputs). Per core: steps, the unhidden first
    fetch (prologue), the unhidden last writeback (epilogue), all traffic.
    Re-timing with other :class:`TimingParams` needs no new walk.
    """

    cores: int
    core: np.ndarray
    step_flops: np.ndarray
    fill_flops: np.ndarray
    vpu_ops: np.ndarray
    dma_bytes: np.ndarray
    dma_copies: np.ndarray
    count: np.ndarray
    steps_per_core: np.ndarray
    prologue_bytes: np.ndarray
    prologue_copies: np.ndarray
    epilogue_bytes: np.ndarray
    epilogue_copies: np.ndarray
    total_bytes: np.ndarray
    total_copies: np.ndarray
    mxu_dtype: str


def core_clock_hz(chip: Chip | str) -> float:
    """TensorCore clock implied by the MXU peak: ``per-core peak / (2 * MXUs * T^2)``.

    v5e: 1.97e14 / (2 * 4 * 128^2) = 1.50 GHz; v6e: 1.75 GHz.
    """
    chip = get_chip(chip)
    if not chip.mxus_per_core or not chip.mxu_tile:
        raise ValueError(f"chip {chip.name!r} has no MXU count/shape to derive a clock from")
    return chip.per_core_flops_per_s("bf16") / (2 * chip.mxus_per_core * chip.mxu_tile**2)


def time_breakdown(profile: StepProfile, chip: Chip | str, params: TimingParams = DEFAULT) -> dict[str, float]:
    """Pipelined time of a profile (module docstring); the slowest core's breakdown.

    Returns ``time_s, launch_s, prologue_s, epilogue_s, pipelined_s, overhead_s,
    compute_s, dma_s`` as floats.
    """
    chip = get_chip(chip)
    launch_s = chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
    step_overhead_s = (chip.grid_step_overhead_s or 0.0) if params.grid_step_overhead_s is None \
        else params.grid_step_overhead_s
    flops_per_s = chip.per_core_flops_per_s(profile.mxu_dtype) * params.mxu_efficiency
    bw = chip.per_core_hbm_bytes_per_s() * params.hbm_efficiency
    lat = params.dma_latency_s
    compute = (profile.step_flops + params.mxu_fill_rows * profile.fill_flops) / flops_per_s
    if params.vpu_ops_per_cycle is not None:
        # VLIW bundles issue MXU pushes and VPU ops together: the busier unit bounds the step.
        compute = np.maximum(compute, profile.vpu_ops / (params.vpu_ops_per_cycle * core_clock_hz(chip)))
    dma = profile.dma_bytes / bw + profile.dma_copies * lat
    cores = profile.cores
    pipelined = np.bincount(profile.core, weights=profile.count * np.maximum(compute, dma), minlength=cores)
    compute_total = np.bincount(profile.core, weights=profile.count * compute, minlength=cores)
    prologue = profile.prologue_bytes / bw + profile.prologue_copies * lat
    epilogue = profile.epilogue_bytes / bw + profile.epilogue_copies * lat
    overhead = profile.steps_per_core * step_overhead_s
    total = prologue + pipelined + overhead + epilogue
    c = int(np.argmax(total))
    return dict(
        time_s=float(launch_s + total[c]), launch_s=float(launch_s), prologue_s=float(prologue[c]),
        epilogue_s=float(epilogue[c]), pipelined_s=float(pipelined[c]), overhead_s=float(overhead[c]),
        compute_s=float(compute_total[c]),
        dma_s=float(profile.total_bytes[c] / bw + profile.total_copies[c] * lat))


@attrs.frozen(kw_only=True)
class KernelCost:
    """What :func:`walk` computes for one kernel on one chip (see module docstring)."""

    name: str
    chip: str
    grid_steps: int
    active_steps: int
    cores: int
    hbm_read_bytes: int
    hbm_write_bytes: int
    operands: tuple[OperandTraffic, ...]
    mxu_flops: int
    useful_flops: int
    vpu_flops: int
    transcendentals: int
    vmem_bytes: int
    vmem_limit_bytes: int | None
    time_s: float
    launch_s: float
    prologue_s: float
    epilogue_s: float
    pipelined_s: float
    overhead_s: float
    compute_s: float
    dma_s: float
    profile: StepProfile | None = attrs.field(default=None, repr=False, eq=False)
    vmem_spill_bytes: int = 0

    def retimed(self, params: TimingParams, chip: Chip | str | None = None) -> "KernelCost":
        """The same walk timed with other constants (no new walk)."""
        if self.profile is None:
            chip = get_chip(chip or self.chip)
            launch = chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
            return attrs.evolve(self, time_s=launch, launch_s=launch)
        return attrs.evolve(self, **time_breakdown(self.profile, chip or self.chip, params))

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_read_bytes + self.hbm_write_bytes

    @property
    def operand_bytes(self) -> tuple[tuple[str, int], ...]:
        """``(name, bytes)`` per operand."""
        return tuple((t.name, t.hbm_bytes) for t in self.operands)

    def traffic(self, name: str) -> OperandTraffic:
        for t in self.operands:
            if t.name == name:
                return t
        raise ValueError(f"no operand {name=} in kernel {self.name!r}")

    @property
    def mxu_utilisation(self) -> float:
        """Useful FLOPs / MXU FLOPs (1 = no padding or duplicated tiles)."""
        return self.useful_flops / self.mxu_flops if self.mxu_flops else 1.0

    def fits_vmem(self, chip: Chip | str | None = None) -> bool:
        """Footprint + Mosaic spill estimate within the kernel's scoped VMEM limit (its own, else
        the chip default) and capacity (:mod:`perfmodel.tiling.vmem`)."""
        from perfmodel.tiling.vmem import vmem_verdict

        return vmem_verdict(self.vmem_bytes, chip or self.chip, self.vmem_limit_bytes,
                            spill_bytes=self.vmem_spill_bytes).fits


def _grid_indices(grid: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Row-major (last axis fastest) grid indices of every step, one int64 array per axis."""
    n = math.prod(grid)
    return tuple(np.asarray(a, dtype=np.int64) for a in np.unravel_index(np.arange(n, dtype=np.int64), grid))


def block_indices(spec: KernelSpec, op: Operand, grid_idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """Block index of ``op`` at every grid step, shape ``(steps, ndim)``; bounds-checked.

    Raises ``ValueError`` naming the operand, the first offending grid step and
    the block index when an index map points outside the array.
    """
    steps = grid_idx[0].shape[0] if grid_idx else 1
    raw = op.index_map(*grid_idx, *spec.prefetch)
    if not isinstance(raw, (tuple, list)):
        raw = (raw,)
    if len(raw) != len(op.shape):
        raise ValueError(f"kernel {spec.name!r}, operand {op.name!r}: index_map returned "
                         f"{len(raw)} indices for a rank-{len(op.shape)} array")
    idx = np.empty((steps, len(op.shape)), dtype=np.int64)
    for d, v in enumerate(raw):
        idx[:, d] = np.broadcast_to(np.asarray(v, dtype=np.int64), (steps,))
    limit = np.asarray(op.num_blocks, dtype=np.int64)
    bad = (idx < 0) | (idx >= limit)
    if bad.any():
        s, d = np.argwhere(bad)[0]
        where = tuple(int(g[s]) for g in grid_idx)
        raise ValueError(
            f"kernel {spec.name!r}, operand {op.name!r}: index map out of bounds at grid step "
            f"{where}: block index {tuple(int(x) for x in idx[s])} in dim {d} (valid 0..{limit[d] - 1} "
            f"for shape={op.shape}, block_shape={op.block_shape})")
    return idx


def _copy_bytes(op: Operand, idx: np.ndarray) -> np.ndarray:
    """In-bounds bytes of the block at each block index (edge blocks are clipped)."""
    out = np.full(idx.shape[0], op.itemsize, dtype=np.int64)
    for d, (dim, b) in enumerate(zip(op.shape, op.block_dims)):
        out *= np.minimum(b, dim - idx[:, d] * b)
    return out


def _core_assignment(spec: KernelSpec, chip: Chip, grid_idx) -> tuple[np.ndarray, int]:
    """Core id per step and the number of cores used (see module docstring)."""
    steps = grid_idx[0].shape[0] if grid_idx else 1
    if chip.megacore and chip.tensor_cores_per_chip >= 2:
        for axis, (sem, size) in enumerate(zip(spec.dimension_semantics, spec.grid)):
            if sem == "parallel" and size >= 2:
                half = -(-size // 2)
                return (grid_idx[axis] >= half).astype(np.int64), 2
    return np.zeros(steps, dtype=np.int64), 1


def _unique_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an int table and their counts (lexsort; faster than np.unique(axis=0))."""
    order = np.lexsort(table.T[::-1])
    srt = table[order]
    start = np.ones(len(srt), dtype=bool)
    start[1:] = np.any(srt[1:] != srt[:-1], axis=1)
    first = np.flatnonzero(start)
    return srt[first], np.diff(np.append(first, len(srt)))


def walk(spec: KernelSpec, chip: Chip | str, params: TimingParams = DEFAULT) -> KernelCost:
    """Walk every grid step of ``spec`` on ``chip``: bytes, FLOPs, steps, VMEM, time.

    Vectorised over grid steps with numpy (1e5 steps take milliseconds).
    """
    chip = get_tpu_chip(chip, what="the tiling walker")
    launch_s = chip.launch_overhead_s if params.launch_overhead_s is None else params.launch_overhead_s
    n = spec.grid_steps
    if n == 0:
        return KernelCost(
            name=spec.name, chip=chip.name, grid_steps=0, active_steps=0, cores=1, hbm_read_bytes=0,
            hbm_write_bytes=0,
            operands=tuple(OperandTraffic(name=o.name, role=o.role, copies=0, hbm_bytes=0) for o in spec.operands),
            mxu_flops=0, useful_flops=0, vpu_flops=0, transcendentals=0, vmem_bytes=spec.vmem_bytes,
            vmem_limit_bytes=spec.vmem_limit_bytes, time_s=launch_s, launch_s=launch_s, prologue_s=0.0,
            epilogue_s=0.0, pipelined_s=0.0, overhead_s=0.0, compute_s=0.0, dma_s=0.0)

    grid_idx = _grid_indices(spec.grid)
    core, cores = _core_assignment(spec, chip, grid_idx)
    # Order steps core by core (stable: row-major within a core's sub-grid).
    order = np.argsort(core, kind="stable")
    core_sorted = core[order]
    first_on_core = np.ones(n, dtype=bool)
    first_on_core[1:] = core_sorted[1:] != core_sorted[:-1]
    last_on_core = np.ones(n, dtype=bool)
    last_on_core[:-1] = first_on_core[1:]

    read_bytes = np.zeros(n, dtype=np.int64)   # fetched before step (sorted position)
    write_bytes = np.zeros(n, dtype=np.int64)  # written back after step
    read_copies = np.zeros(n, dtype=np.int64)
    write_copies = np.zeros(n, dtype=np.int64)
    traffic = []
    for op in spec.operands:
        idx = block_indices(spec, op, grid_idx)[order]
        changed = first_on_core.copy()
        changed[1:] |= np.any(idx[1:] != idx[:-1], axis=1)
        nbytes = _copy_bytes(op, idx)
        if op.role == "input":
            moved = changed
            read_bytes += np.where(moved, nbytes, 0)
            read_copies += moved
        else:
            moved = last_on_core.copy()
            moved[:-1] |= changed[1:]
            write_bytes += np.where(moved, nbytes, 0)
            write_copies += moved
        traffic.append(OperandTraffic(name=op.name, role=op.role, copies=int(moved.sum()),
                                      hbm_bytes=int(nbytes[moved].sum())))

    # Compute per step.
    if spec.compute_mask is not None:
        active = np.broadcast_to(np.asarray(spec.compute_mask(*grid_idx, *spec.prefetch), dtype=bool), (n,))
        active = active[order]
    else:
        active = np.ones(n, dtype=bool)
    n_active = int(active.sum())
    step_mxu = sum(mxu_flops(m, k, nn, chip.mxu_tile) for m, k, nn in spec.step_matmuls)
    T = chip.mxu_tile
    step_fill = sum(2 * pad_to(k, T) * pad_to(nn, T) for m, k, nn in spec.step_matmuls)
    if spec.epilogue_mask is not None:
        epilogue = np.broadcast_to(np.asarray(spec.epilogue_mask(*grid_idx, *spec.prefetch), dtype=bool), (n,))
        epilogue = epilogue[order] & active
    else:
        epilogue = active
    vpu_ops = active * spec.step_vpu_flops + epilogue * spec.epilogue_vpu_ops
    step_useful = sum(2 * m * k * nn for m, k, nn in spec.step_matmuls)
    useful = spec.useful_flops if spec.useful_flops is not None else step_useful * n_active

    # DMA overlapped with step s: prefetch for s+1 and writeback of s-1 (same core).
    next_read = np.zeros(n, dtype=np.int64)
    next_read[:-1] = np.where(first_on_core[1:], 0, read_bytes[1:])
    next_copies = np.zeros(n, dtype=np.int64)
    next_copies[:-1] = np.where(first_on_core[1:], 0, read_copies[1:])
    prev_write = np.zeros(n, dtype=np.int64)
    prev_write[1:] = np.where(first_on_core[1:], 0, write_bytes[:-1])
    prev_copies = np.zeros(n, dtype=np.int64)
    prev_copies[1:] = np.where(first_on_core[1:], 0, write_copies[:-1])
    # Exact compression: the time model only needs the distinct per-step
    # (core, compute, DMA bytes, DMA copies) tuples and how often each occurs.
    act = active.astype(np.int64)
    table = np.stack([core_sorted, act * step_mxu, act * step_fill, vpu_ops.astype(np.int64),
                      next_read + prev_write, next_copies + prev_copies], axis=1)
    rows, counts = _unique_rows(table)

    def per_core_int(x):
        return np.bincount(core_sorted, weights=x, minlength=cores).astype(np.int64)

    profile = StepProfile(
        cores=cores, core=rows[:, 0], step_flops=rows[:, 1], fill_flops=rows[:, 2], vpu_ops=rows[:, 3],
        dma_bytes=rows[:, 4], dma_copies=rows[:, 5],
        count=counts.astype(np.int64), steps_per_core=np.bincount(core_sorted, minlength=cores),
        prologue_bytes=per_core_int(np.where(first_on_core, read_bytes, 0)),
        prologue_copies=per_core_int(np.where(first_on_core, read_copies, 0)),
        epilogue_bytes=per_core_int(np.where(last_on_core, write_bytes, 0)),
        epilogue_copies=per_core_int(np.where(last_on_core, write_copies, 0)),
        total_bytes=per_core_int(read_bytes + write_bytes),
        total_copies=per_core_int(read_copies + write_copies),
        mxu_dtype=spec.mxu_dtype)
    return KernelCost(
        name=spec.name, chip=chip.name, grid_steps=n, active_steps=n_active, cores=cores,
        hbm_read_bytes=int(read_bytes.sum()), hbm_write_bytes=int(write_bytes.sum()),
        operands=tuple(traffic), mxu_flops=step_mxu * n_active, useful_flops=int(useful),
        vpu_flops=int(vpu_ops.sum()), transcendentals=spec.step_transcendentals * n_active,
        vmem_bytes=spec.vmem_bytes, vmem_limit_bytes=spec.vmem_limit_bytes,
        vmem_spill_bytes=mosaic_spill_bytes(spec, chip), profile=profile, **time_breakdown(profile, chip, params),
    )
