"""KernelSpec / Operand validation: the contract kernels and builders rely on."""

import numpy as np
import pytest

from perfmodel.tiling import KernelSpec, Operand
from perfmodel.tiling.walker import walk


def _ij(i, j):
    return i, j


def _op(**kw):
    base = dict(name="x", shape=(256, 512), dtype="bf16", block_shape=(128, 256), index_map=_ij, role="input")
    base.update(kw)
    return Operand(**base)


def _spec(*ops, grid=(2, 2), sem=("parallel", "arbitrary"), **kw):
    return KernelSpec(name="k", grid=grid, dimension_semantics=sem, operands=ops or (_op(),), **kw)


def test_valid_operand_derived_sizes():
    op = _op(buffer_count=3)
    assert op.block_bytes == 128 * 256 * 2
    assert op.vmem_bytes == 3 * 128 * 256 * 2
    assert op.num_blocks == (2, 2)


@pytest.mark.parametrize("block", [(128, 200), (12, 256)])
def test_block_violating_8_128_rule_names_operand(block):
    with pytest.raises(ValueError, match=r"operand 'x'.*\(8, 128\) rule"):
        _op(block_shape=block)


def test_block_equal_to_array_dims_is_allowed():
    op = _op(shape=(12, 200), block_shape=(12, 200))
    assert op.num_blocks == (1, 1)


def test_squeezed_dims_count_as_one():
    op = _op(shape=(4, 256, 512), block_shape=(None, 128, 256), index_map=lambda i, j: (0, i, j))
    assert op.block_dims == (1, 128, 256)


@pytest.mark.parametrize("count", [0, -1, 1.5])
def test_bad_buffer_count(count):
    with pytest.raises(ValueError, match=r"operand 'x'.*buffer_count"):
        _op(buffer_count=count)


def test_bad_role_and_rank():
    with pytest.raises(ValueError, match="role"):
        _op(role="inout")
    with pytest.raises(ValueError, match="rank"):
        _op(block_shape=(128,))


def test_semantics_must_match_grid():
    with pytest.raises(ValueError, match="dimension_semantics"):
        _spec(sem=("parallel",))
    with pytest.raises(ValueError, match="dimension_semantics"):
        _spec(sem=("parallel", "sequential"))


def test_duplicate_operand_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        _spec(_op(), _op())


def test_out_of_bounds_index_map_caught_by_walk():
    spec = _spec(_op(index_map=lambda i, j: (i, j + 1)))
    with pytest.raises(ValueError, match=r"operand 'x'.*out of bounds.*grid step \(0, 1\)"):
        walk(spec, "v5e")


def test_vmem_footprint_is_buffers_times_blocks_plus_scratch():
    out = _op(name="y", role="output", dtype="f32")
    spec = _spec(_op(), out, scratch_bytes=1000)
    assert spec.vmem_bytes == 2 * 128 * 256 * 2 + 2 * 128 * 256 * 4 + 1000


def test_pallas_block_specs_use_same_index_maps():
    out = _op(name="y", role="output")
    spec = _spec(_op(buffer_count=3), out)
    ins, outs = spec.pallas_block_specs()
    assert len(ins) == 1 and len(outs) == 1
    assert ins[0].pipeline_mode is not None and ins[0].pipeline_mode.buffer_count == 3
    assert tuple(outs[0].block_shape) == (128, 256)


def test_prefetch_arrays_are_numpy():
    spec = _spec(prefetch=([1, 2, 3],))
    assert isinstance(spec.prefetch[0], np.ndarray)
