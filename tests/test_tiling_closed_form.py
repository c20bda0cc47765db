"""Closed forms for uniform groups equal the grid walker's exact counts."""

import pytest
import sympy as sp

from perfmodel import symbols as S
from perfmodel.tiling.closed_form import gmm_closed_form
from perfmodel.tiling.gmm import gmm_spec
from perfmodel.tiling.walker import walk

SHAPES = [  # M, K, N, G, tm, tk, tn
    (1024, 512, 768, 8, 128, 256, 256),    # aligned groups, k tiled
    (1024, 512, 768, 8, 128, 512, 256),    # single k tile: blocks stay resident
    (768, 384, 640, 12, 128, 128, 256),    # 64-row groups: every other boundary straddles; n edge tile
    (960, 640, 512, 5, 64, 256, 512),      # 192-row groups, tm=64, k edge tile
    (4096, 1024, 4096, 8, 128, 1024, 1280),  # XLA's v5e tiling for this shape (FACTS section 2)
    (2048, 256, 384, 32, 256, 128, 128),   # groups smaller than a tile
]


@pytest.mark.parametrize("chip,tile", [("v5e", 128), ("v6e", 256)])
@pytest.mark.parametrize("M,K,N,G,tm,tk,tn", SHAPES)
def test_closed_form_equals_walker(chip, tile, M, K, N, G, tm, tk, tn):
    cf = gmm_closed_form(mxu_tile=tile, out_itemsize=4)
    v = cf.evaluate(M=M, K=K, N=N, G=G, tm=tm, tk=tk, tn=tn, q=2)
    c = walk(gmm_spec([M // G] * G, K, N, tm=tm, tk=tk, tn=tn, out_dtype="f32"), chip)
    assert v["grid_steps"] == c.grid_steps
    assert v["lhs_bytes"] == c.traffic("lhs").hbm_bytes
    assert v["rhs_bytes"] == c.traffic("rhs").hbm_bytes
    assert v["out_bytes"] == c.traffic("out").hbm_bytes
    assert v["hbm_bytes"] == c.hbm_bytes
    assert v["mxu_flops"] == c.mxu_flops
    assert v["useful_flops"] == c.useful_flops


def test_expressions_use_project_symbols_and_ceilings():
    cf = gmm_closed_form()
    assert {S.M, S.K, S.N, S.G, S.tm, S.tk, S.tn} <= set(cf.grid_steps.free_symbols)
    assert cf.grid_steps.has(sp.ceiling)
    # Groups aligned to tiles: visits reduce to M / tm.
    aligned = cf.row_tile_visits.subs({S.M: 4096, S.G: 8, S.tm: 128})
    assert aligned == 32


def test_assumptions_enforced():
    cf = gmm_closed_form()
    with pytest.raises(ValueError, match="divisible by G"):
        cf.evaluate(M=1000, K=128, N=128, G=3, tm=8, tk=128, tn=128, q=2)
    with pytest.raises(ValueError, match="missing"):
        cf.evaluate(M=1024, K=128)


@pytest.mark.parametrize("M,K,N,G,tm,tk,tn", SHAPES)
def test_tgmm_closed_form_equals_walker(M, K, N, G, tm, tk, tn):
    from perfmodel.tiling.closed_form import tgmm_closed_form
    from perfmodel.tiling.gmm import tgmm_spec

    v = tgmm_closed_form(out_itemsize=4).evaluate(M=M, K=K, N=N, G=G, tm=tm, tk=tk, tn=tn, q=2)
    c = walk(tgmm_spec([M // G] * G, K, N, tm=tm, tk=tk, tn=tn, out_dtype="f32"), "v5e")
    assert v["grid_steps"] == c.grid_steps
    assert v["lhs_bytes"] == c.traffic("lhs").hbm_bytes
    assert v["rhs_bytes"] == c.traffic("rhs").hbm_bytes
    assert v["out_bytes"] == c.traffic("out").hbm_bytes
    assert v["mxu_flops"] == c.mxu_flops
