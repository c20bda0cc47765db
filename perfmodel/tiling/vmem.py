"""VMEM budget of a Pallas TPU kernel: the scoped limit that applies and the fit verdict.

A Pallas kernel's pipeline buffers and scratch live in the *scoped* VMEM of one
TensorCore. Its limit is the ``vmem_limit_bytes`` the kernel requests
(``pltpu.CompilerParams``), else a per-generation default that is lower than
the physical VMEM. The defaults below are the limits libtpu 0.0.42 prints when
it refuses a kernel ("Scoped allocation with size X and limit Y"; on v4 "Used X
of 16.00M vmem"), seen here by ``perfmodel validate vmem``:

=======  ==================  ====================
chip     default scoped      physical per core
=======  ==================  ====================
v4       16 MiB              16 MiB
v5e      16 MiB              128 MiB
v5p      16 MiB              64 MiB
v6e      32 MiB              128 MiB
tpu7x    32 MiB              64 MiB
=======  ==================  ====================

The footprint is :attr:`perfmodel.tiling.spec.KernelSpec.vmem_bytes` (buffers x
block bytes + scratch) plus, on the 128-wide-MXU generations (v4, v5e, v5p),
Mosaic's register-spill slots (:func:`mosaic_spill_bytes`): the kernel loads the
left matmul operand of a step as a vector value, which does not fit in the
64-vreg register file and spills to VMEM. v4's compiler lists every VMEM
allocation when it refuses a kernel; for megablox gmm the "register allocator
spill slots" were, by (tm, tk) (bf16): (128, 2048) 0.60 MiB, (256, 2048) 1.21,
(512, 2048) 2.45, (1024, 2048) 4.96, (1024, 1024) 2.96, (1024, 512) 1.50,
(512, 512) 0.75, (1024, 256) 1.00 - independent of tn, about 1.2x the
``tm x tk`` bf16 block (more for short k). We take 1.2x the left operand's
bytes. On v6e and 7x no spill showed: a 32.00 MiB megablox footprint compiles
under the 32 MiB limit there, and a (1024, 2048, 1024) tile (4 MiB lhs block,
28 MiB footprint) compiles too. Without this term the 14-config sweep agreed
67/70 (the three 16.00 MiB configs on v4, v5e, v5p failed to compile).
"""

from __future__ import annotations

import attrs

from perfmodel.hardware import Chip, get_chip

_MIB = 1024**2

DEFAULT_SCOPED_VMEM_BYTES = {"v4": 16 * _MIB, "v5e": 16 * _MIB, "v5p": 16 * _MIB, "v6e": 32 * _MIB,
                             "tpu7x": 32 * _MIB}
"""Default scoped VMEM limit per chip (libtpu 0.0.42, from its RESOURCE_EXHAUSTED messages)."""


def scoped_vmem_limit_bytes(chip: Chip | str, requested: int | None = None) -> int:
    """The scoped VMEM limit a kernel runs under: ``requested`` if given, else the chip default."""
    chip = get_chip(chip)
    if requested is not None:
        if requested <= 0:
            raise ValueError(f"requested vmem limit must be positive, got {requested=}")
        return int(requested)
    if chip.name not in DEFAULT_SCOPED_VMEM_BYTES:
        raise ValueError(f"no scoped VMEM default for chip {chip.name!r}; known: {sorted(DEFAULT_SCOPED_VMEM_BYTES)}")
    return DEFAULT_SCOPED_VMEM_BYTES[chip.name]


SPILL_FACTOR = 1.2
"""Spill slots per byte of a step's left matmul operand on 128-wide-MXU chips (see module docstring)."""


def mosaic_spill_bytes(spec, chip: Chip | str) -> int:
    """Estimated Mosaic register-spill VMEM of ``spec`` on ``chip`` (0 on v6e / 7x).

    ``SPILL_FACTOR`` x the largest left operand (``m x k`` of ``step_matmuls``)
    in the MXU dtype, on chips whose MXU is 128 wide; 0 for a spec whose scratch
    already counts its spill (``spec.scratch_includes_spill``).
    """
    from perfmodel.hardware import dtype_bytes

    chip = get_chip(chip)
    if chip.mxu_tile != 128 or not spec.step_matmuls or spec.scratch_includes_spill:
        return 0
    lhs = max(m * k for m, k, _ in spec.step_matmuls)
    return int(SPILL_FACTOR * lhs * dtype_bytes(spec.mxu_dtype))


@attrs.frozen(kw_only=True)
class VmemVerdict:
    """Does a footprint fit: ``vmem_bytes + spill_bytes <= min(limit_bytes, capacity_bytes)``."""

    chip: str
    vmem_bytes: int
    spill_bytes: int
    limit_bytes: int
    capacity_bytes: int

    @property
    def required_bytes(self) -> int:
        return self.vmem_bytes + self.spill_bytes

    @property
    def fits(self) -> bool:
        return self.required_bytes <= min(self.limit_bytes, self.capacity_bytes)

    @property
    def headroom_bytes(self) -> int:
        return min(self.limit_bytes, self.capacity_bytes) - self.required_bytes


def vmem_verdict(vmem_bytes: int, chip: Chip | str, requested_limit: int | None = None, *,
                 spill_bytes: int = 0) -> VmemVerdict:
    """Fit verdict of a footprint on ``chip`` under the kernel's (or the default) scoped limit."""
    chip = get_chip(chip)
    if chip.vmem_bytes_per_core is None:
        raise ValueError(f"chip {chip.name!r} has no VMEM")
    return VmemVerdict(chip=chip.name, vmem_bytes=int(vmem_bytes), spill_bytes=int(spill_bytes),
                       limit_bytes=scoped_vmem_limit_bytes(chip, requested_limit),
                       capacity_bytes=chip.vmem_bytes_per_core)


def spec_vmem_verdict(spec, chip: Chip | str) -> VmemVerdict:
    """Verdict for a :class:`~perfmodel.tiling.spec.KernelSpec`: its footprint, spill estimate and limit."""
    return vmem_verdict(spec.vmem_bytes, chip, spec.vmem_limit_bytes, spill_bytes=mosaic_spill_bytes(spec, chip))
