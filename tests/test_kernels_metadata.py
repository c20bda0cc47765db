"""Group metadata, tile config and the kernel description (no kernel execution)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels.fused_moe import FusedTiles, candidate_tiles, default_tiles, fused_moe_spec, make_group_metadata
from perfmodel.hardware import get_chip
from perfmodel.tiling.walker import walk


@st.composite
def group_sizes_st(draw, *, G=None, T=None):
    """Random split of at most T rows into G groups (zeros, all-in-one and partial sums included)."""
    # Few distinct (T, G) so the jitted metadata builder compiles a handful of times.
    T = T if T is not None else draw(st.sampled_from([1, 200, 256]))
    G = G if G is not None else draw(st.sampled_from([1, 4]))
    total = draw(st.integers(0, T))
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=G - 1, max_size=G - 1)))
    sizes = np.diff([0, *cuts, total]).astype(np.int32)
    return T, sizes


def _visits(meta, G):
    n = int(meta.num_steps)
    return [(int(meta.m_tile_ids[s]), int(meta.group_ids[s])) for s in range(n)]


@settings(max_examples=40, deadline=None)
@given(data=group_sizes_st(), tm=st.sampled_from([8, 64]))
@example(data=(256, np.array([256, 0, 0, 0], np.int32)), tm=64)
@example(data=(200, np.array([0, 0, 0, 0], np.int32)), tm=64)
@example(data=(200, np.array([0, 0, 0, 200], np.int32)), tm=64)
def test_metadata_visits_every_row_block_once_per_group(data, tm):
    T, sizes = data
    G = sizes.shape[0]
    meta = make_group_metadata(group_sizes=sizes, m=T, tm=tm)
    tiles_m = -(-T // tm)
    offsets = np.asarray(meta.group_offsets)
    # Offsets: G real groups, then the tail group up to the padded end.
    np.testing.assert_array_equal(offsets[: G + 1], np.concatenate([[0], np.cumsum(sizes)]))
    assert offsets[G + 1] == tiles_m * tm
    visits = _visits(meta, G)
    # Expected: one visit per (tile, group) pair whose rows intersect, groups 0..G (G = tail).
    expected = []
    for t in range(tiles_m):
        for g in range(G + 1):
            lo, hi = max(offsets[g], t * tm), min(offsets[g + 1], (t + 1) * tm)
            if hi > lo:
                expected.append((t, g))
    assert visits == expected  # also: tiles non-decreasing, so revisits are consecutive
    assert tiles_m <= len(visits) <= tiles_m + G
    # Tail steps reuse the previous step's x tile and weight group (no DMA).
    tail = np.asarray(meta.tail_steps)[: len(visits)].astype(bool)
    np.testing.assert_array_equal(tail, [g == G for _, g in visits])
    x_ids, w_ids = np.asarray(meta.x_tile_ids), np.asarray(meta.w_group_ids)
    for s in np.flatnonzero(tail):
        if s > 0:
            assert x_ids[s] == x_ids[s - 1] and w_ids[s] == w_ids[s - 1]
    assert (w_ids[: len(visits)] < G).all()


def test_walker_counts_one_output_write_per_tile_and_no_tail_dma():
    T, D, F, G, tm, tf = 1000, 256, 1024, 4, 128, 256
    sizes = np.array([300, 0, 150, 350], np.int32)  # 800 rows: tail of 200 rows, straddling tiles
    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=FusedTiles(tm=tm, tf=tf), glu=True,
                          group_sizes=sizes)
    cost = walk(spec, "v5e")
    meta = make_group_metadata(group_sizes=sizes, m=T, tm=tm)
    visits = _visits(meta, G)
    real = [v for v in visits if v[1] < G]
    tiles_m = -(-T // tm)
    # Output: written once per token tile, edge tile clipped to T rows.
    assert cost.traffic("out").copies == tiles_m
    assert cost.traffic("out").hbm_bytes == T * D * 2
    # Weights: each real visit streams all F chunks of its group once; tail steps stream nothing.
    for name in ("w_up", "w_gate", "w_down"):
        assert cost.traffic(name).hbm_bytes == len(real) * D * F * 2
    # x: one fetch per real visit that changes tile.
    x_tiles = [t for t, _ in real]
    changes = 1 + sum(a != b for a, b in zip(x_tiles, x_tiles[1:]))
    assert cost.traffic("x").copies == changes
    # MXU work only on real steps: 3 matmuls of (tm, D, tf) per step.
    assert cost.active_steps == len(real) * (F // tf)
    assert cost.useful_flops == 2 * 800 * D * F * 3


def test_tiles_validation_messages():
    with pytest.raises(ValueError, match="tm=100 should be a multiple of 8"):
        FusedTiles(tm=100, tf=128)
    with pytest.raises(ValueError, match="tf=200 should be a multiple of 128"):
        FusedTiles(tm=128, tf=200)
    with pytest.raises(ValueError, match="F=384 should be divisible by tf=256"):
        fused_moe_spec(T=256, D=128, F=384, G=2, dtype="f32", tiles=FusedTiles(tm=128, tf=256), glu=False)


@pytest.mark.parametrize("chip", ["v4", "v5e", "v5p", "v6e", "tpu7x"])
def test_default_tiles_fit_vmem(chip):
    T, D, F, G = 8192, 4096, 16384, 8
    tiles = default_tiles(T=T, D=D, F=F, G=G, dtype="bf16", glu=True, chip=chip)
    assert tiles in candidate_tiles(T=T, F=F)
    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=tiles, glu=True, chip=chip)
    assert spec.vmem_bytes <= spec.vmem_limit_bytes <= get_chip(chip).vmem_bytes_per_core
