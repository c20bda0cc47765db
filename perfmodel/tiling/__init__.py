"""Tiling-aware cost model of Pallas TPU kernels.

* :mod:`perfmodel.tiling.spec` - :class:`KernelSpec` / :class:`Operand`: a kernel
  as grid, blocks, index maps, buffers (the contract kernels and builders share).
* :mod:`perfmodel.tiling.walker` - :func:`walk`: exact HBM bytes, padded MXU FLOPs,
  grid steps, VMEM footprint and pipelined time of a spec on a chip.
* :mod:`perfmodel.tiling.closed_form` - sympy closed forms for uniform groups.
* :mod:`perfmodel.tiling.gmm` - spec builders: megablox gmm/tgmm, tokamax's Pallas
  grouped matmul, XLA's ragged_dot Mosaic kernel.
* :mod:`perfmodel.tiling.predict` - time of one grouped-matmul call (XLA or tokamax).
* :mod:`perfmodel.tiling.params` - the timing constants (``DEFAULT``, ``FITTED``).
* :mod:`perfmodel.tiling.vmem` - scoped VMEM limits and the fit verdict.
"""

from perfmodel.tiling.params import DEFAULT, FITTED, TimingParams
from perfmodel.tiling.spec import KernelSpec, Operand
from perfmodel.tiling.walker import KernelCost, walk

__all__ = ["DEFAULT", "FITTED", "KernelCost", "KernelSpec", "Operand", "TimingParams", "walk"]
