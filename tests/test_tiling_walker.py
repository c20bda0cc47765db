"""Grid walker: copy-on-index-change traffic, MXU padding, megacore, time breakdown."""

import numpy as np
import pytest

from perfmodel.hardware import get_chip
from perfmodel.tiling import KernelSpec, Operand
from perfmodel.tiling.params import TimingParams
from perfmodel.tiling.walker import mxu_flops, walk


def lhs_map(i, j, kk):
    return i, kk


def rhs_map(i, j, kk):
    return kk, j


def out_map(i, j, kk):
    return i, j


def matmul_spec(M, K, N, tm, tk, tn, *, sem=("parallel", "parallel", "arbitrary"), dtype="bf16"):
    """Dense tiled matmul, grid (M/tm, N/tn, K/tk), k fastest (the Pallas matmul tutorial)."""
    return KernelSpec(
        name="matmul", grid=(-(-M // tm), -(-N // tn), -(-K // tk)), dimension_semantics=sem,
        operands=(
            Operand(name="x", shape=(M, K), dtype=dtype, block_shape=(tm, tk), index_map=lhs_map, role="input"),
            Operand(name="w", shape=(K, N), dtype=dtype, block_shape=(tk, tn), index_map=rhs_map, role="input"),
            Operand(name="y", shape=(M, N), dtype=dtype, block_shape=(tm, tn), index_map=out_map, role="output"),
        ),
        scratch_bytes=tm * tn * 4, step_matmuls=((tm, tk, tn),), mxu_dtype=dtype)


def test_matmul_traffic_follows_copy_rule():
    M, K, N, tm, tk, tn = 1024, 2048, 768, 256, 512, 256
    c = walk(matmul_spec(M, K, N, tm, tk, tn), "v5e")
    # k is the fastest axis with K/tk > 1: x and w blocks change every step, so
    # x is read once per n-tile and w once per m-tile; y is written once.
    assert c.traffic("x").hbm_bytes == M * K * 2 * (N // tn)
    assert c.traffic("w").hbm_bytes == K * N * 2 * (M // tm)
    assert c.traffic("y").hbm_bytes == M * N * 2
    assert c.traffic("y").copies == (M // tm) * (N // tn)
    assert c.hbm_read_bytes == c.traffic("x").hbm_bytes + c.traffic("w").hbm_bytes
    assert c.grid_steps == (M // tm) * (N // tn) * (K // tk)
    assert c.useful_flops == c.mxu_flops == 2 * M * K * N


def test_single_k_tile_keeps_lhs_block_resident():
    M, K, N, tm, tn = 512, 256, 1024, 128, 256
    c = walk(matmul_spec(M, K, N, tm, K, tn), "v5e")
    # x's block index (i, 0) stays fixed while j runs: read exactly once.
    assert c.traffic("x").hbm_bytes == M * K * 2
    assert c.traffic("x").copies == M // tm
    assert c.traffic("w").hbm_bytes == K * N * 2 * (M // tm)


def test_edge_blocks_are_clipped():
    M, K, N = 300, 256, 200
    c = walk(matmul_spec(M, K, N, 128, 256, 128, sem=("arbitrary",) * 3), "v5e")
    # Output written once, only in-bounds bytes.
    assert c.traffic("y").hbm_bytes == M * N * 2
    # One k tile: x's block stays resident across n tiles, read once (clipped rows).
    assert c.traffic("x").hbm_bytes == M * K * 2
    # w re-read per m tile (3 m tiles); the last n block is clipped.
    assert c.traffic("w").hbm_bytes == K * N * 2 * 3


def test_mxu_padding_depends_on_chip_tile():
    assert mxu_flops(64, 64, 64, 128) == 2 * 64 * 128 * 128
    assert mxu_flops(5, 300, 200, 256) == 2 * 8 * 512 * 256
    spec = matmul_spec(512, 512, 512, 128, 128, 128)
    v5e, v6e = walk(spec, "v5e"), walk(spec, "v6e")
    assert v5e.mxu_flops == v5e.useful_flops
    assert v6e.mxu_flops == 4 * v6e.useful_flops  # 128x128 weight tiles padded to 256x256


def test_time_breakdown_adds_up():
    c = walk(matmul_spec(2048, 2048, 2048, 256, 512, 512), "v5e")
    parts = c.launch_s + c.prologue_s + c.pipelined_s + c.overhead_s + c.epilogue_s
    assert c.time_s == pytest.approx(parts)
    chip = get_chip("v5e")
    assert c.overhead_s == pytest.approx(c.grid_steps * chip.grid_step_overhead_s)
    # Pipelined time is at least each of compute and DMA (minus unhidden prologue/epilogue).
    assert c.pipelined_s >= c.compute_s * (1 - 1e-12)
    assert c.pipelined_s + c.prologue_s + c.epilogue_s >= c.dma_s * (1 - 1e-12)


def test_compute_bound_time_close_to_flops_over_peak():
    c = walk(matmul_spec(4096, 4096, 4096, 512, 1024, 1024), "v5e", TimingParams(grid_step_overhead_s=0.0))
    ideal = 2 * 4096**3 / get_chip("v5e").peak_flops_per_s("bf16")
    assert ideal <= c.time_s <= 1.05 * ideal


def test_megacore_splits_first_parallel_axis():
    spec = matmul_spec(4096, 4096, 4096, 512, 1024, 1024)
    v5p = walk(spec, "v5p")
    assert v5p.cores == 2
    serial = walk(matmul_spec(4096, 4096, 4096, 512, 1024, 1024, sem=("arbitrary",) * 3), "v5p")
    assert serial.cores == 1
    assert v5p.time_s < 0.6 * serial.time_s
    # Single-core chips never split.
    assert walk(spec, "v5e").cores == 1 and walk(spec, "tpu7x").cores == 1


def test_megacore_split_restarts_copy_history():
    # One m tile per core, k resident: each core must fetch its own x block.
    spec = matmul_spec(256, 128, 128, 128, 128, 128)
    assert walk(spec, "v5p").traffic("x").copies == 2
    assert walk(spec, "v5e").traffic("x").copies == 2


def test_compute_mask_skips_flops_not_dma():
    spec = matmul_spec(512, 512, 512, 128, 128, 128)
    import attrs

    masked = attrs.evolve(spec, compute_mask=lambda i, j, kk: i % 2 == 0)
    c, cm = walk(spec, "v5e"), walk(masked, "v5e")
    assert cm.active_steps == c.grid_steps // 2
    assert cm.mxu_flops == c.mxu_flops // 2
    assert cm.hbm_bytes == c.hbm_bytes


def test_fits_vmem_uses_kernel_limit_else_scoped_default():
    import attrs

    spec = matmul_spec(4096, 4096, 4096, 2048, 2048, 2048)
    c = walk(spec, "v5e")
    assert c.vmem_bytes == spec.vmem_bytes
    from perfmodel.tiling.vmem import DEFAULT_SCOPED_VMEM_BYTES

    assert c.fits_vmem("v5e") == (spec.vmem_bytes <= DEFAULT_SCOPED_VMEM_BYTES["v5e"])
    big = walk(attrs.evolve(spec, vmem_limit_bytes=100 * 2**20), "v5e")
    assert big.fits_vmem() == (spec.vmem_bytes <= 100 * 2**20)
    small = walk(attrs.evolve(spec, vmem_limit_bytes=1024), "v5e")
    assert not small.fits_vmem()


def test_fused_kernel_spill_is_counted_once():
    # The fused spec's scratch holds its own calibrated x spill (kernels.fused_spec.vmem_scratch_bytes), so the
    # walker's verdict must be the one libtpu's compiles were checked against: spec.vmem_bytes within the limit.
    # At tm=1024, D=4096 on v5e adding the generic 1.2 x lhs spill on top turned a fitting kernel into a misfit.
    from kernels.fused_spec import FusedTiles, fused_moe_spec
    from perfmodel.tiling.vmem import mosaic_spill_bytes

    for chip, tm, tf in (("v5e", 1024, 512), ("v5p", 256, 1024), ("v5e", 512, 512), ("v5p", 1024, 512)):
        spec = fused_moe_spec(T=8192, D=4096, F=8192, G=8, dtype="bf16", tiles=FusedTiles(tm=tm, tf=tf), glu=True,
                              chip=chip)
        assert mosaic_spill_bytes(spec, chip) == 0
        assert walk(spec, chip).fits_vmem() == (spec.vmem_bytes <= spec.vmem_limit_bytes)
    fits = fused_moe_spec(T=8192, D=4096, F=8192, G=8, dtype="bf16", tiles=FusedTiles(tm=1024, tf=512), glu=True,
                          chip="v5e")
    assert walk(fits, "v5e").fits_vmem()
    # a spec that does not count its spill still gets the generic estimate on 128-wide MXUs
    plain = matmul_spec(1024, 1024, 1024, 256, 512, 256)
    assert mosaic_spill_bytes(plain, "v5e") == int(1.2 * 256 * 512 * 2) and mosaic_spill_bytes(plain, "v6e") == 0


def test_zero_step_grid_costs_launch_only():
    spec = matmul_spec(256, 256, 256, 128, 128, 128)
    import attrs

    empty = attrs.evolve(spec, grid=(0, 2, 2))
    c = walk(empty, "v5e")
    assert c.grid_steps == 0 and c.hbm_bytes == 0 and c.time_s == get_chip("v5e").launch_overhead_s


def test_prefetch_driven_index_map_vectorised():
    order = np.array([3, 3, 1, 0])

    def x_map(i, perm):
        return perm[i], 0

    spec = KernelSpec(
        name="gather", grid=(4,), dimension_semantics=("arbitrary",), prefetch=(order,),
        operands=(Operand(name="x", shape=(512, 128), dtype="f32", block_shape=(128, 128),
                          index_map=x_map, role="input"),))
    c = walk(spec, "v5e")
    assert c.traffic("x").copies == 3  # block 3 reused by the second step
