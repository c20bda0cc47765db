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
block bytes + scratch). Mosaic also allocates internal scratch of its own
inside the same limit (seen: a 16.00 MiB megablox footprint needs 16.84 MiB on
v5e); we do not model it, so footprints within a few hundred KiB of the limit
can be judged wrongly (``perfmodel validate vmem`` reports how often).
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


@attrs.frozen(kw_only=True)
class VmemVerdict:
    """Does a footprint fit: ``vmem_bytes <= limit_bytes`` and ``<= capacity_bytes``."""

    chip: str
    vmem_bytes: int
    limit_bytes: int
    capacity_bytes: int

    @property
    def fits(self) -> bool:
        return self.vmem_bytes <= min(self.limit_bytes, self.capacity_bytes)

    @property
    def headroom_bytes(self) -> int:
        return min(self.limit_bytes, self.capacity_bytes) - self.vmem_bytes


def vmem_verdict(vmem_bytes: int, chip: Chip | str, requested_limit: int | None = None) -> VmemVerdict:
    """Fit verdict of a footprint on ``chip`` under the kernel's (or the default) scoped limit."""
    chip = get_chip(chip)
    if chip.vmem_bytes_per_core is None:
        raise ValueError(f"chip {chip.name!r} has no VMEM")
    return VmemVerdict(chip=chip.name, vmem_bytes=int(vmem_bytes),
                       limit_bytes=scoped_vmem_limit_bytes(chip, requested_limit),
                       capacity_bytes=chip.vmem_bytes_per_core)
