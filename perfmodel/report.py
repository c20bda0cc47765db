"""``perfmodel report``: the main job, a self-contained folder of markdown, JSON and plots.

Each section is a function returning a :class:`Section`; the report writes
``report.md`` from the sections' markdown and ``report.json`` from their data,
so every number in the markdown comes from the JSON written beside it.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import attrs

from perfmodel.hardware import CATALOG, DEFAULT_CHIPS, format_si, get_chip
from perfmodel.tables import markdown_table


@attrs.frozen
class Section:
    key: str
    title: str
    markdown: str
    data: object
    files: tuple[str, ...] = ()


def hardware_section(out: pathlib.Path, chips: Sequence[str]) -> Section:
    rows, data = [], []
    for name in CATALOG:
        c = CATALOG[name]
        rec = {"chip": c.name, "bf16_flops_per_s": c.bf16_flops_per_s, "hbm_bytes_per_s": c.hbm_bytes_per_s,
               "ridge_bf16_flops_per_byte": c.ridge_flops_per_byte("bf16"),
               "vmem_bytes_per_core": c.vmem_bytes_per_core, "tensor_cores_per_chip": c.tensor_cores_per_chip,
               "sources": dict(c.sources), "alternatives": dict(c.alternatives)}
        data.append(rec)
        rows.append([c.name + (" (default)" if c.name in chips else ""), format_si(c.bf16_flops_per_s, "FLOP/s"),
                     format_si(c.hbm_bytes_per_s, "B/s"), f"{rec['ridge_bf16_flops_per_byte']:.0f}",
                     f"{c.vmem_bytes_per_core // 2**20} MiB" if c.vmem_bytes_per_core else "-",
                     c.tensor_cores_per_chip, c.sources["bf16_flops_per_s"], c.sources["hbm_bytes_per_s"]])
    md = markdown_table(["chip", "bf16 peak", "HBM BW", "ridge (FLOP/B)", "VMEM/TC", "TC/chip",
                         "peak source", "bandwidth source"], rows)
    alts = [f"- {c['chip']} `{f}`: {a}" for c in data for f, a in c["alternatives"].items()]
    md += "\n\nWhere sources disagree we picked one; the alternatives:\n\n" + "\n".join(alts)
    return Section("hardware", "Hardware catalog", md, data)


def roofline_section(out: pathlib.Path, chips: Sequence[str]) -> Section:
    from perfmodel.api import predict
    from perfmodel.plots import RooflinePoint, roofline_plot

    shape = dict(T=2048, D=2048, F=8192, E=8, k=2)
    pts, data = [], []
    for glu in (False,):
        unf = predict("moe_ffn_unfused", chip=chips[0], glu=glu, **shape)
        for name, r in unf.parts:
            pts.append(RooflinePoint(f"{name} kernel", r.flops, r.hbm_bytes, "ragged_dot MoE FFN"))
        fus = predict("moe_ffn_fused", chip=chips[0], glu=glu, **shape)
        pts.append(RooflinePoint("one kernel", fus.roofline.flops, fus.roofline.hbm_bytes, "fused MoE FFN"))
    for M in (256, 8192):
        p = predict("matmul", chip=chips[0], M=M, K=8192, N=8192)
        pts.append(RooflinePoint(f"matmul {M}x8192x8192", p.roofline.flops, p.roofline.hbm_bytes, "dense matmul"))
    for p in pts:
        data.append({"label": p.label, "flops": p.flops, "hbm_bytes": p.hbm_bytes,
                     "intensity_flops_per_byte": p.flops / p.hbm_bytes})
    path = roofline_plot(chips, pts, out / "roofline.png",
                         title="Roofline, bf16: MoE FFN (T=2048 tokens, D=2048, F=8192, E=8, k=2) and matmuls")
    rows = [[d["label"], format_si(d["flops"]), format_si(d["hbm_bytes"], "B"),
             f"{d['intensity_flops_per_byte']:.1f}"] for d in data]
    md = (f"![roofline]({path.name})\n\nIdeal-traffic costs (perfmodel.ops), bf16, "
          f"MoE shape {shape}:\n\n" + markdown_table(["op", "FLOPs", "HBM bytes", "FLOP/B"], rows))
    return Section("roofline", "Roofline", md, {"shape": shape, "points": data}, (path.name, path.with_suffix(".svg").name))


SECTIONS: tuple[Callable[[pathlib.Path, Sequence[str]], Section], ...] = (hardware_section, roofline_section)


def write_report(out: str | pathlib.Path = "perfmodel-report", chips: Sequence[str] = DEFAULT_CHIPS,
                 *, log=print) -> pathlib.Path:
    """Write ``report.md``, ``report.json`` and plots into ``out``; returns the markdown path."""
    chips = [get_chip(c).name for c in chips]
    if not chips:
        raise ValueError("chips must name at least one chip, got chips=[]")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for fn in SECTIONS:
        t0 = time.perf_counter()
        sections.append(fn(out, chips))
        log(f"[report] {sections[-1].title}: {time.perf_counter() - t0:.1f} s")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    md = [f"# perfmodel report\n\nGenerated {now} by `perfmodel report` for chips: {', '.join(chips)}.\n"]
    md += [f"## {s.title}\n\n{s.markdown}\n" for s in sections]
    (out / "report.json").write_text(json.dumps(
        {"generated_at": now, "chips": chips, "sections": {s.key: s.data for s in sections}}, indent=2, default=str))
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
