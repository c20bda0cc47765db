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


def _visits(meta):
    """(tile, group) per executed visit, core 0's then core 1's."""
    steps = np.asarray(meta.core_steps)
    stride = meta.group_ids.shape[0] // steps.shape[0]
    return [(int(meta.m_tile_ids[c * stride + s]), int(meta.group_ids[c * stride + s]))
            for c in range(steps.shape[0]) for s in range(int(steps[c]))]


@settings(max_examples=40, deadline=None)
@given(data=group_sizes_st(), tm=st.sampled_from([8, 64]), cores=st.sampled_from([1, 2]))
@example(data=(256, np.array([256, 0, 0, 0], np.int32)), tm=64, cores=2)
@example(data=(200, np.array([0, 0, 0, 0], np.int32)), tm=64, cores=2)
@example(data=(200, np.array([0, 0, 0, 200], np.int32)), tm=64, cores=1)
def test_metadata_visits_every_row_block_once_per_group(data, tm, cores):
    T, sizes = data
    G = sizes.shape[0]
    tiles_m = -(-T // tm)
    if cores == 2 and tiles_m < 2:
        with pytest.raises(ValueError, match="cores=2 needs at least 2 token tiles"):
            make_group_metadata(group_sizes=sizes, m=T, tm=tm, cores=cores)
        return
    meta = make_group_metadata(group_sizes=sizes, m=T, tm=tm, cores=cores)
    offsets = np.asarray(meta.group_offsets)
    # Offsets: G real groups, then the tail group up to the padded end.
    np.testing.assert_array_equal(offsets[: G + 1], np.concatenate([[0], np.cumsum(sizes)]))
    assert offsets[G + 1] == tiles_m * tm
    visits = _visits(meta)
    # Expected: one visit per (tile, group) pair whose rows intersect, groups 0..G (G = tail).
    expected = []
    for t in range(tiles_m):
        for g in range(G + 1):
            lo, hi = max(offsets[g], t * tm), min(offsets[g + 1], (t + 1) * tm)
            if hi > lo:
                expected.append((t, g))
    # Tiles non-decreasing (revisits consecutive) and, with 2 cores, disjoint tile ranges.
    assert visits == expected
    assert tiles_m <= len(visits) <= tiles_m + G
    steps = np.asarray(meta.core_steps)
    assert steps.shape == (cores,) and (steps >= 1).all() and int(meta.num_steps) == steps.max()
    stride = tiles_m + G
    idle = np.asarray(meta.idle_steps).reshape(cores, stride).astype(bool)
    x_ids = np.asarray(meta.x_tile_ids).reshape(cores, stride)
    w_ids = np.asarray(meta.w_group_ids).reshape(cores, stride)
    groups = np.asarray(meta.group_ids).reshape(cores, stride)
    for c in range(cores):
        n = int(steps[c])
        # Idle = tail group or padding; idle steps reuse the previous x tile and weights (no DMA).
        np.testing.assert_array_equal(idle[c, :n], groups[c, :n] == G)
        assert idle[c, n:].all()
        for s in range(1, stride):
            if idle[c, s]:
                assert x_ids[c, s] == x_ids[c, s - 1] and w_ids[c, s] == w_ids[c, s - 1]
    assert (w_ids < G).all()


def test_walker_counts_one_output_write_per_tile_and_no_tail_dma():
    T, D, F, G, tm, tf = 1000, 256, 1024, 4, 128, 256
    sizes = np.array([300, 0, 150, 350], np.int32)  # 800 rows: tail of 200 rows, straddling tiles
    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=FusedTiles(tm=tm, tf=tf), glu=True,
                          group_sizes=sizes)
    cost = walk(spec, "v5e")
    meta = make_group_metadata(group_sizes=sizes, m=T, tm=tm)
    visits = _visits(meta)
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


def test_megacore_split_halves_the_work_without_extra_traffic():
    """On v5p the token tiles are cut between the two TensorCores (a "parallel" axis)."""
    T, D, F, G, tm, tf = 4096, 512, 2048, 8, 256, 512
    kw = dict(T=T, D=D, F=F, G=G, dtype="bf16", tiles=FusedTiles(tm=tm, tf=tf), glu=True)
    one, two = fused_moe_spec(**kw, chip="v5e"), fused_moe_spec(**kw, chip="v5p")
    assert one.grid[0] == 1 and two.grid == (2, 8, F // tf)
    c1, c2 = walk(one, "v5e"), walk(two, "v5p")
    assert c2.cores == 2 and c1.cores == 1
    # Uniform groups of 512 rows = 2 tiles each: no straddles, 16 visits, 8 per core, same bytes.
    assert c1.hbm_bytes == c2.hbm_bytes and c1.active_steps == c2.active_steps == 16 * (F // tf)


def test_tiles_validation_messages():
    with pytest.raises(ValueError, match="tm=100 should be a multiple of 8"):
        FusedTiles(tm=100, tf=128)
    with pytest.raises(ValueError, match="tf=200 should be a multiple of 128 .lanes. or equal F=384"):
        fused_moe_spec(T=256, D=128, F=384, G=2, dtype="f32", tiles=FusedTiles(tm=128, tf=200), glu=False)
    fused_moe_spec(T=5, D=64, F=96, G=2, dtype="f32", tiles=FusedTiles(tm=8, tf=96), glu=False)  # tf = F
    with pytest.raises(ValueError, match="F=384 should be divisible by tf=256"):
        fused_moe_spec(T=256, D=128, F=384, G=2, dtype="f32", tiles=FusedTiles(tm=128, tf=256), glu=False)


def test_a_gpu_chip_is_refused_by_name():
    """A GPU has no VMEM: its None capacity used to reach a comparison (TypeError), also via kernels.moe_ffn(chip=)."""
    with pytest.raises(ValueError, match="chip must be a TPU, got chip='a100'"):
        default_tiles(T=256, D=128, F=256, G=2, dtype="f32", glu=False, chip="a100")
    with pytest.raises(ValueError, match="chip must be a TPU, got chip='h100'"):
        fused_moe_spec(T=256, D=128, F=256, G=2, dtype="f32", tiles=FusedTiles(tm=128, tf=128), glu=False,
                       chip="h100")


@pytest.mark.parametrize("chip", ["v4", "v5e", "v5p", "v6e", "tpu7x"])
def test_default_tiles_fit_vmem(chip):
    T, D, F, G = 8192, 4096, 16384, 8
    tiles = default_tiles(T=T, D=D, F=F, G=G, dtype="bf16", glu=True, chip=chip)
    assert tiles in candidate_tiles(T=T, F=F)
    spec = fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=tiles, glu=True, chip=chip)
    assert spec.vmem_bytes <= spec.vmem_limit_bytes <= get_chip(chip).vmem_bytes_per_core
    assert spec.grid[0] == (2 if get_chip(chip).megacore else 1)


@pytest.mark.parametrize("chip, tm, cores", [("v4", 8, 2), ("v5p", 8, 2), ("v5e", 16, 1)])
def test_few_rows_on_a_megacore_chip_get_two_token_tiles(chip, tm, cores):
    """16 rows (2 per expert): the only candidates used to be one 16-row tile, leaving v4's and v5p's second
    TensorCore idle while one core streamed every expert's weights; half the rows per tile splits them."""
    T, D, F, G = 16, 512, 2048, 8
    tiles = default_tiles(T=T, D=D, F=F, G=G, dtype="bf16", glu=True, chip=chip)
    assert tiles.tm == tm
    assert fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=tiles, glu=True, chip=chip).grid[0] == cores
    assert {t.tm for t in candidate_tiles(T=200, F=F, split_cores=True)} == {128, 200}  # 128 already splits


def test_an_f_without_a_lane_aligned_chunk_is_named_as_the_cause():
    """F=8191: no F chunk divides it, so tf = F; the message blamed D (which changes nothing here)."""
    with pytest.raises(ValueError, match=r"No F chunk in \(128, 256, 512, 1024, 2048\) divides F=8191.*"
                                         r"pad F to a multiple of 128"):
        default_tiles(T=4096, D=2048, F=8191, G=8, dtype="bf16", glu=False, chip="v5e")


def test_when_no_tiles_fit_the_error_says_how_far_off_and_why():
    """D is never tiled: on v4 (16 MiB) D=6144 bf16 does not fit at any candidate; the message names the
    smallest footprint (the spec's own count) against the chip's VMEM and points at D."""
    T, D, F, G = 4096, 6144, 4096, 8
    with pytest.raises(ValueError) as err:
        default_tiles(T=T, D=D, F=F, G=G, dtype="bf16", glu=False, chip="v4")
    footprints = {t: fused_moe_spec(T=T, D=D, F=F, G=G, dtype="bf16", tiles=t, glu=False, chip="v4").vmem_bytes
                  for t in candidate_tiles(T=T, F=F)}
    t = min(footprints, key=footprints.get)
    assert footprints[t] > get_chip("v4").vmem_bytes_per_core
    msg = str(err.value)
    assert f"T={T}, D={D}, F={F}, dtype=bf16" in msg
    assert f"the smallest, tm={t.tm} tf={t.tf}, needs {footprints[t] / 2**20:.1f} MiB of the 16 MiB" in msg
    assert "never D" in msg


def test_numpy_and_jax_metadata_are_identical():
    """The cost model builds metadata with numpy (no compile); the kernel with jax. Same body, same arrays."""
    import jax.numpy as jnp

    from kernels.fused_moe import make_group_metadata

    rng = np.random.default_rng(1)
    for _ in range(60):
        G, m = int(rng.integers(1, 9)), int(rng.integers(1, 600))
        tm = int(rng.choice([8, 64, 128]))
        gs = rng.multinomial(int(rng.integers(0, m + 1)), np.ones(G) / G).astype(np.int32)
        for cores in (1, 2):
            if cores == 2 and -(-m // tm) < 2:
                continue
            a = make_group_metadata(group_sizes=gs, m=m, tm=tm, cores=cores)
            b = make_group_metadata(group_sizes=jnp.asarray(gs), m=m, tm=tm, cores=cores)
            for x, y in zip((*a.prefetch(), a.num_steps), (*b.prefetch(), b.num_steps)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
