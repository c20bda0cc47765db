"""The README's Python API example runs, and what its comments say it returns is what it returns."""

import pathlib
import re

import pytest
import sympy as sp

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _comment(block: str, code: str) -> str:
    """The comment on the line of ``block`` whose code starts with ``code``."""
    line = next(ln for ln in block.splitlines() if ln.startswith(code))
    return line.split("#", 1)[1].strip()


def _sympify(text: str, like: sp.Expr) -> sp.Expr:
    """``text`` as a sympy expression in the symbols of ``like`` (so ``N`` is a symbol, not sympy's N)."""
    return sp.sympify(text, locals={s.name: s for s in like.free_symbols})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    import os

    block = _api_block()
    ns: dict = {}
    here, work = os.getcwd(), tmp_path_factory.mktemp("readme_api")
    os.chdir(work)  # the plots are written where the user runs it
    try:
        exec(compile(block, str(README) + ":Python API", "exec"), ns)  # every line must run as written
    finally:
        os.chdir(here)
    ns["__workdir__"] = work
    return block, ns


def test_the_plot_example_writes_every_file_it_names(api):
    block, ns = api
    names = re.findall(r'"([\w.]+\.png)"', block)
    assert names == ["moe_roofline.png", "fusion_map_v6e.png"]
    for name in names:
        png = ns["__workdir__"] / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".svg").stat().st_size > 0


def test_matmul_roofline_is_as_the_readme_says(api):
    block, ns = api
    seconds, bound = re.fullmatch(r"([\d.]+) s, '(\w+)'", _comment(block, "p.roofline.lower_s")).groups()
    decimals = len(seconds.split(".")[1])
    assert f"{ns['p'].roofline.lower_s:.{decimals}f}" == seconds
    assert ns["p"].roofline.bound == bound
    flops = ns["p"].formula.flops
    claimed = _comment(block, "p.formula.flops").split()[0]
    assert sp.simplify(flops - _sympify(claimed, flops)) == 0


def test_moe_parts_and_fused_formula_are_as_the_readme_says(api):
    block, ns = api
    names = [n.strip() for n in _comment(block, "[(name, r.bound)").split(":", 1)[1].split(",")]
    assert [name for name, _ in ns["moe"].parts] == names
    import perfmodel

    op = perfmodel.get_op("moe_ffn_fused", glu=True)
    total = op.total("hbm_bytes")
    claimed = _comment(block, 'perfmodel.get_op("moe_ffn_fused"').removesuffix(" (sympy)")
    assert sp.srepr(total) == sp.srepr(_sympify(claimed, total))  # as printed, not only equal
    # .formula() returns the simplified expression as pretty text, which the README quotes verbatim
    assert _comment(block, 'print(perfmodel.get_op("moe_ffn_fused"').endswith(": " + op.formula("hbm_bytes"))


def test_layer_time_sums_its_kernels_as_the_readme_says(api):
    block, ns = api
    total, ffn = re.match(r"([\d.]+) ms, ([\d.]+) ms", _comment(block, "layer.time_s")).groups()
    layer = ns["layer"]
    assert (f"{layer.time_s * 1e3:.1f}", f"{layer.time_of('moe_ffn_unfused') * 1e3:.1f}") == (total, ffn)
    names = [n.strip() for n in _comment(block, "[name for name, _ in layer.kernels]").split(",")]
    assert [name for name, _ in layer.kernels][:3] == names
