"""Concrete description of a Pallas TPU kernel: grid, blocks, index maps, buffers.

A :class:`KernelSpec` is built per call by a builder (``perfmodel.tiling.gmm``,
``kernels/fused_moe.py``) from concrete shapes and group sizes. The same
``index_map`` function objects are handed to ``pl.BlockSpec`` by the kernel
(:meth:`KernelSpec.pallas_block_specs`) and walked by
:func:`perfmodel.tiling.walker.walk` on numpy arrays, so the cost model reads
the kernel's own tiling instead of a retyped copy.

Index-map contract
------------------
``index_map(*grid_indices, *prefetch)`` returns one block index per array
dimension (a squeezed ``None`` dimension counts as a block of size 1, so its
block index is an element index). It must use only arithmetic, comparisons
and indexing (``a * b``, ``ref[i]``, ``jnp.where`` is *not* allowed - use
arithmetic), so it runs both under Pallas tracing (scalars, SMEM refs) and on
numpy int arrays of every grid step at once (the vectorised walk). Constant
results (``0``) are broadcast by the walker.

Validation (``ValueError`` naming operand and value)
----------------------------------------------------
* block rank equals array rank; block dims positive;
* the last two block dims obey the TPU (8, 128) rule: the last divisible by
  128 and the second-to-last by 8, or equal to the array dim (squeezed
  ``None`` dims are exempt: Mosaic squeezes them away);
* ``buffer_count`` >= 1; ``role`` is ``"input"`` or ``"output"``;
* grid entries are non-negative ints and there is one dimension semantic per
  grid axis, each ``"parallel"`` or ``"arbitrary"``;
* index maps that point outside the array are caught by the walker, which is
  the only place that evaluates them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import numpy as np

from perfmodel.hardware import canonical_dtype, dtype_bytes

ROLES = ("input", "output")
SEMANTICS = ("parallel", "arbitrary")
SUBLANE = 8
"""Second-to-last block dim must be a multiple of this (or the full array dim)."""
LANE = 128
"""Last block dim must be a multiple of this (or the full array dim)."""


def _check_positive_ints(owner: str, field: str, values) -> None:
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{owner}: {field} entries must be positive ints, got {field}={tuple(values)!r}")


@attrs.frozen(kw_only=True)
class Operand:
    """One HBM array a kernel reads (``role="input"``) or writes (``"output"``).

    ``block_shape`` uses ``None`` for a squeezed dimension (block size 1, as in
    ``pl.BlockSpec``). ``buffer_count`` VMEM buffers of one block each are
    allocated (2 = double buffering, Pallas's default).
    """

    name: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    dtype: str = attrs.field(converter=canonical_dtype)
    block_shape: tuple[int | None, ...] = attrs.field(converter=tuple)
    index_map: Callable
    role: str
    buffer_count: int = 2

    def __attrs_post_init__(self):
        who = f"operand {self.name!r}"
        if self.role not in ROLES:
            raise ValueError(f"{who}: role must be one of {ROLES}, got role={self.role!r}")
        if (not isinstance(self.buffer_count, (int, np.integer)) or isinstance(self.buffer_count, bool)
                or self.buffer_count < 1):
            raise ValueError(f"{who}: buffer_count must be an int >= 1, got buffer_count={self.buffer_count!r}")
        _check_positive_ints(who, "shape", self.shape)
        if len(self.block_shape) != len(self.shape):
            raise ValueError(
                f"{who}: block_shape rank must equal array rank {len(self.shape)}, "
                f"got block_shape={self.block_shape!r} for shape={self.shape!r}")
        _check_positive_ints(who, "block_shape", [b for b in self.block_shape if b is not None])
        if not callable(self.index_map):
            raise ValueError(f"{who}: index_map must be callable, got index_map={self.index_map!r}")
        nd = len(self.shape)
        for axis, multiple in ((nd - 1, LANE), (nd - 2, SUBLANE)):
            if axis < 0:
                continue
            b, dim = self.block_shape[axis], self.shape[axis]
            if b is None or b == dim or b % multiple == 0:
                continue
            raise ValueError(
                f"{who}: block dim {axis} must be divisible by {multiple} or equal the array dim "
                f"{dim} (TPU (8, 128) rule), got block_shape={self.block_shape!r} for shape={self.shape!r}")

    # -- derived -----------------------------------------------------------
    @property
    def block_dims(self) -> tuple[int, ...]:
        """Block shape with squeezed dims as 1."""
        return tuple(1 if b is None else b for b in self.block_shape)

    @property
    def itemsize(self) -> int:
        return dtype_bytes(self.dtype)

    @property
    def block_bytes(self) -> int:
        """Bytes of one full block in VMEM."""
        return math.prod(self.block_dims) * self.itemsize

    @property
    def array_bytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    @property
    def num_blocks(self) -> tuple[int, ...]:
        """Valid block-index range per dim: ceil(dim / block)."""
        return tuple(-(-d // b) for d, b in zip(self.shape, self.block_dims))

    @property
    def vmem_bytes(self) -> int:
        """VMEM this operand's pipeline buffers take: buffer_count x block bytes."""
        return self.buffer_count * self.block_bytes


@attrs.frozen(kw_only=True)
class KernelSpec:
    """A Pallas TPU kernel as concrete numbers (see the module docstring).

    * ``grid``: concrete grid, dynamic axes already resolved from the metadata.
      Steps run in row-major order (last axis fastest).
    * ``prefetch``: scalar-prefetch arrays passed after the grid indices to
      every index map (numpy int arrays).
    * ``step_matmuls``: ``(m, k, n)`` block matmuls executed every active grid
      step; the walker pads each dim to the chip's MXU tile.
    * ``compute_mask``: optional ``(*grid_indices, *prefetch) -> bool array``,
      False where a step skips its compute (``pl.when``); DMAs still follow
      the index maps.
    * ``step_vpu_flops``: elementwise (VPU) operations every active step
      (e.g. accumulator updates, activations), counted per element per op;
    * ``epilogue_vpu_ops`` / ``epilogue_mask``: VPU element operations of the
      store epilogue (mask, cast, select, store) on the active steps where
      ``epilogue_mask(*grid_indices, *prefetch)`` is True (default: every
      active step), e.g. the last k step of a k-tiled matmul.
    * ``useful_flops``: the mathematically needed FLOPs (e.g. ``2 m k n`` of a
      grouped matmul); default: unpadded FLOPs of the executed step matmuls.
    * ``mxu_dtype``: operand dtype on the MXU (selects the chip peak).
    * ``vmem_limit_bytes``: the scoped VMEM limit the kernel requests via
      ``pltpu.CompilerParams(vmem_limit_bytes=...)`` (None = compiler default).
    * ``scratch_includes_spill``: ``scratch_bytes`` already holds Mosaic's
      register-spill slots (the fused kernel's own calibrated terms), so
      :func:`perfmodel.tiling.vmem.mosaic_spill_bytes` adds none on top.
    """

    name: str
    grid: tuple[int, ...] = attrs.field(converter=tuple)
    dimension_semantics: tuple[str, ...] = attrs.field(converter=tuple)
    operands: tuple[Operand, ...] = attrs.field(converter=tuple)
    prefetch: tuple[np.ndarray, ...] = attrs.field(default=(), converter=lambda p: tuple(np.asarray(a) for a in p))
    scratch_bytes: int = 0
    step_matmuls: tuple[tuple[int, int, int], ...] = attrs.field(
        default=(), converter=lambda s: tuple(tuple(int(x) for x in mm) for mm in s))
    step_vpu_flops: int = 0
    step_transcendentals: int = 0
    compute_mask: Callable | None = None
    epilogue_vpu_ops: int = 0
    epilogue_mask: Callable | None = None
    useful_flops: int | None = None
    mxu_dtype: str = attrs.field(default="bf16", converter=canonical_dtype)
    vmem_limit_bytes: int | None = None
    scratch_includes_spill: bool = False

    def __attrs_post_init__(self):
        who = f"kernel {self.name!r}"
        for g in self.grid:
            if not isinstance(g, (int, np.integer)) or isinstance(g, bool) or g < 0:
                raise ValueError(f"{who}: grid entries must be ints >= 0, got grid={self.grid!r}")
        if len(self.dimension_semantics) != len(self.grid):
            raise ValueError(
                f"{who}: need one dimension semantic per grid axis ({len(self.grid)}), "
                f"got dimension_semantics={self.dimension_semantics!r}")
        for s in self.dimension_semantics:
            if s not in SEMANTICS:
                raise ValueError(f"{who}: dimension semantics must be in {SEMANTICS}, "
                                 f"got dimension_semantics={self.dimension_semantics!r}")
        if not self.operands:
            raise ValueError(f"{who}: needs at least one operand, got operands=()")
        names = [op.name for op in self.operands]
        if len(set(names)) != len(names):
            raise ValueError(f"{who}: operand names must be unique, got names={names!r}")
        for op in self.operands:
            if not isinstance(op, Operand):
                raise ValueError(f"{who}: operands must be Operand records, got {op!r}")
        for mm in self.step_matmuls:
            if len(mm) != 3:
                raise ValueError(f"{who}: step_matmuls entries are (m, k, n), got step_matmuls={self.step_matmuls!r}")
            _check_positive_ints(who, "step_matmuls", mm)
        for field in ("scratch_bytes", "step_vpu_flops", "step_transcendentals", "epilogue_vpu_ops"):
            v = getattr(self, field)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{who}: {field} must be an int >= 0, got {field}={v!r}")
        if self.useful_flops is not None and self.useful_flops < 0:
            raise ValueError(f"{who}: useful_flops must be >= 0, got useful_flops={self.useful_flops!r}")
        if self.vmem_limit_bytes is not None and self.vmem_limit_bytes <= 0:
            raise ValueError(f"{who}: vmem_limit_bytes must be > 0, got vmem_limit_bytes={self.vmem_limit_bytes!r}")

    # -- derived -----------------------------------------------------------
    @property
    def grid_steps(self) -> int:
        return math.prod(self.grid)

    @property
    def inputs(self) -> tuple[Operand, ...]:
        return tuple(op for op in self.operands if op.role == "input")

    @property
    def outputs(self) -> tuple[Operand, ...]:
        return tuple(op for op in self.operands if op.role == "output")

    def operand(self, name: str) -> Operand:
        for op in self.operands:
            if op.name == name:
                return op
        raise ValueError(f"kernel {self.name!r}: no operand {name=}; operands: {[o.name for o in self.operands]}")

    @property
    def vmem_bytes(self) -> int:
        """VMEM footprint: sum over operands of buffer_count x block bytes, plus scratch."""
        return sum(op.vmem_bytes for op in self.operands) + self.scratch_bytes

    def pallas_block_specs(self) -> tuple[list, list]:
        """``(in_specs, out_specs)`` as ``pl.BlockSpec(block_shape, index_map)``.

        A ``buffer_count`` other than 2 becomes ``pipeline_mode=pl.Buffered(n)``.
        """
        from jax.experimental import pallas as pl

        def spec(op: Operand):
            if op.buffer_count == 2:
                return pl.BlockSpec(op.block_shape, op.index_map)
            return pl.BlockSpec(op.block_shape, op.index_map, pipeline_mode=pl.Buffered(op.buffer_count))

        return [spec(op) for op in self.inputs], [spec(op) for op in self.outputs]
