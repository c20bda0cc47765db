"""Grouped-matmul spec builders: megablox metadata semantics, straddling tiles, variants."""

import importlib
import os

import numpy as np
import pytest

from perfmodel.tiling.gmm import (gmm_spec, group_metadata, ragged_dot_spec, tgmm_spec,
                                  tokamax_gmm_spec)
from perfmodel.tiling.walker import walk

CASES = [
    ([128, 128, 128, 128], 512, 128),
    ([100, 0, 200, 212], 512, 128),
    ([0, 0, 17, 0, 300], 512, 64),
    ([5, 3, 0, 8], 64, 8),
    ([40, 40], 128, 16),  # rows past sum(group_sizes) are not visited
]


@pytest.mark.parametrize("gs,m,tm", CASES)
@pytest.mark.parametrize("visit_empty", [False, True])
def test_metadata_matches_megablox(gs, m, tm, visit_empty):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp

    mb = importlib.import_module("jax.experimental.pallas.ops.tpu.megablox.gmm")
    (off, gid, mid), nt = mb.make_group_metadata(
        group_sizes=jnp.asarray(gs, jnp.int32), m=m, tm=tm, start_group=jnp.int32(0),
        num_nonzero_groups=len(gs), visit_empty_groups=visit_empty)
    me = group_metadata(gs, m, tm, visit_empty_groups=visit_empty)
    n = int(nt)
    assert me.num_tiles == n
    np.testing.assert_array_equal(me.group_offsets, np.asarray(off))
    np.testing.assert_array_equal(me.group_ids[:n], np.asarray(gid)[:n])
    np.testing.assert_array_equal(me.m_tile_ids[:n], np.asarray(mid)[:n])


def test_straddling_tiles_bounds():
    m, tm, G = 4096, 128, 8
    aligned = group_metadata([m // G] * G, m, tm)
    assert aligned.num_tiles == m // tm
    # Every boundary inside a tile: one extra visit per boundary.
    skew = group_metadata([m // G + 1] * (G - 1) + [m // G - (G - 1)], m, tm)
    assert skew.num_tiles == m // tm + G - 1


def test_group_sizes_validation():
    with pytest.raises(ValueError, match="sum"):
        group_metadata([300, 300], 512, 128)
    with pytest.raises(ValueError, match=">= 0"):
        group_metadata([300, -1], 512, 128)
    with pytest.raises(ValueError, match="divisible"):
        gmm_spec([100, 100], 256, 256, m=200, tm=128, tk=128, tn=128)


def test_gmm_straddling_tile_is_computed_twice_but_written_once():
    gs = [64, 192]  # boundary inside the first 128-row tile
    c = walk(gmm_spec(gs, 256, 256, tm=128, tk=256, tn=256, out_dtype="bf16"), "v5e")
    assert c.grid_steps == 3  # tiles: (g0, t0), (g1, t0), (g1, t1)
    assert c.mxu_flops == 3 * 2 * 128 * 256 * 256
    assert c.useful_flops == 2 * 256 * 256 * 256
    assert c.traffic("out").hbm_bytes == 256 * 256 * 2  # consecutive visits keep the block
    assert c.traffic("lhs").copies == 2
    assert c.traffic("rhs").copies == 2


def test_weights_reread_per_row_tile_when_k_tiled():
    m, k, n, G, tm, tk, tn = 1024, 512, 256, 4, 128, 256, 256
    c = walk(gmm_spec([m // G] * G, k, n, tm=tm, tk=tk, tn=tn), "v5e")
    assert c.traffic("rhs").hbm_bytes == (m // tm) * k * n * 2
    # one k tile: the rhs block stays while the group stays the same
    c1 = walk(gmm_spec([m // G] * G, k, n, tm=tm, tk=k, tn=tn), "v5e")
    assert c1.traffic("rhs").hbm_bytes == G * k * n * 2


def test_transposed_rhs_same_counts():
    gs = [300, 212]
    a = walk(gmm_spec(gs, 512, 384, tm=128, tk=256, tn=128), "v5e")
    b = walk(gmm_spec(gs, 512, 384, tm=128, tk=256, tn=128, transpose_rhs=True), "v5e")
    assert a.hbm_bytes == b.hbm_bytes and a.mxu_flops == b.mxu_flops


def test_tokamax_buffer_count_changes_vmem_only():
    gs = [256] * 4
    two = walk(tokamax_gmm_spec(gs, 512, 512, tm=128, tk=256, tn=256), "v5e")
    four = walk(tokamax_gmm_spec(gs, 512, 512, tm=128, tk=256, tn=256, input_buffer_count=4), "v5e")
    assert four.vmem_bytes - two.vmem_bytes == 2 * (128 * 256 + 256 * 256) * 2
    assert four.hbm_bytes == two.hbm_bytes


def test_tgmm_visits_empty_groups_without_compute():
    gs = [128, 0, 256]
    c = walk(tgmm_spec(gs, 256, 128, tm=128, tk=256, tn=128), "v5e")
    assert c.grid_steps == 4 and c.active_steps == 3
    assert c.traffic("out").copies == 3  # every group's [k, n] block written once
    assert c.traffic("out").hbm_bytes == 3 * 256 * 128 * 4


def test_ragged_dot_spec_with_explicit_tiles():
    spec = ragged_dot_spec("v5e", [512] * 8, 1024, 4096, dtype="bf16", tiling=(128, 1024, 1280))
    assert spec.grid == (4, 32, 1)
    assert spec.operand("out").dtype == "bf16"
    assert spec.operand("rhs").block_shape == (None, 1024, 1280)


def test_cli_tiling_gmm_and_bench(capsys):
    from perfmodel.cli import main

    assert main(["tiling", "gmm", "--impl", "tokamax", "M=1024", "K=512", "N=512", "G=4",
                 "tm=256", "tk=512", "tn=512"]) == 0
    out = capsys.readouterr().out
    assert "lhs" in out and "VMEM" in out and "time" in out
    assert main(["tiling", "gmm", "--impl", "megablox", "M=1000", "K=512", "N=512", "G=3",
                 "tm=128", "tk=512", "tn=512"]) == 2
    assert "multiple of G" in capsys.readouterr().err
    assert main(["tiling", "bench", "--steps", "2000"]) == 0
    assert "grid steps" in capsys.readouterr().out
