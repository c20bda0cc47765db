"""XLA's ``jax.lax.ragged_dot`` on TPU as it really runs: the tiling of its Mosaic kernel.

XLA:TPU lowers ``ragged_dot`` (rows of ``lhs`` sorted into G groups, one weight
matrix per group) to two Mosaic custom calls (seen with libtpu 0.0.42):

1. ``ragged-dot-metadata``: a scalar kernel that turns ``group_sizes`` into
   megablox-style group metadata - for every row tile that holds rows of a group,
   a (group id, row-tile id) pair. There are ``ceil(m / tm) + G - 1`` slots: a
   row tile straddling a group boundary appears once per group.
2. ``ragged-dot-none``: the grouped matmul. Its Mosaic MLIR (base64 in the
   custom call's ``backend_config["custom_call_config"]["body"]``) carries
   ``iteration_bounds`` (the grid, ``INT64_MIN`` for the dynamic axis: the
   number of active tiles, known only at run time), ``dimension_semantics``,
   and per operand ``window_bounds`` (block shape), ``pipeline_mode`` and the
   name of its index map (``lhs_transform_indices``, ...). The HLO also carries
   ``frontend_attributes={ragged_dot_tiling="tm,tk,tn"}``.

Grid order (forward): ``(ceil(n / tn), <active row tiles>, ceil(k / tk))`` with
semantics (parallel, arbitrary, arbitrary); blocks ``lhs (tm, tk)``,
``rhs (1, tk, tn)``, ``out (tm, tn)``; inputs double buffered.

Variants (``ragged_dot_dimension_numbers`` as in tokamax's cache files):

* ``"forward"``: ``lhs[m, k] @ rhs[G, k, n] -> out[m, n]``; contracting
  ``([1], [1])``.
* ``"rhs_transposed"`` (the dlhs of a backward pass): ``lhs[m, k]``,
  ``rhs[G, n, k]``; contracting ``([1], [2])``. XLA first transposes ``rhs`` in
  HBM to ``[G, k, n]`` (a separate fusion: one extra read and write of the
  weights) and then runs the forward kernel.
* ``"ragged_contracting"`` (the drhs): ``lhs[m, k]``, ``rhs[m, n]`` ->
  ``out[G, k, n]``; contracting ``([0], [0])``. XLA:TPU has **no Mosaic kernel**
  for it: it masks and broadcasts both operands to ``[G, m, .]`` and runs one
  dense batched matmul, so it executes ``G * 2 m k n`` FLOPs (``lowering ==
  "dense"``, no tiles).

:func:`ragged_dot_tiling` answers from, in order: this process's memo, the
table shipped with perfmodel (``perfmodel/data/xla_ragged_dot_tilings.json``,
made by ``perfmodel validate xla-tiling --sweep``), the user cache
(``$PERFMODEL_CACHE_DIR`` or ``~/.cache/perfmodel``), a fresh libtpu compile
(then cached), and finally :func:`fallback_tiling`, the rule inferred from the
sweep.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping

import attrs

from perfmodel.hardware import canonical_dtype, dtype_bytes, get_chip

VARIANTS: tuple[str, ...] = ("forward", "rhs_transposed", "ragged_contracting")
_VARIANT_ALIASES = {"fwd": "forward", "dlhs": "rhs_transposed", "drhs": "ragged_contracting"}

DIMENSION_NUMBERS: Mapping[str, tuple] = {
    "forward": (((1,), (1,)), ((), ())),
    "rhs_transposed": (((1,), (2,)), ((), ())),
    "ragged_contracting": (((0,), (0,)), ((), ())),
}
"""``dot_dimension_numbers`` of each variant (lhs ragged along dim 0)."""

SOURCE_COMPILE = "libtpu AOT compile"
SOURCE_RULE = "fallback rule"

TABLE_PATH = pathlib.Path(__file__).parent / "data" / "xla_ragged_dot_tilings.json"
_DYNAMIC = -(2**63)  # iteration bound Mosaic prints for an axis sized at run time


def canonical_variant(variant: str) -> str:
    """``"forward"``, ``"rhs_transposed"`` or ``"ragged_contracting"`` (accepts dlhs / drhs)."""
    v = _VARIANT_ALIASES.get(variant, variant)
    if v not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} (or dlhs, drhs), got {variant=}")
    return v


def operand_shapes(variant: str, m: int, k: int, n: int, num_groups: int):
    """``(lhs_shape, rhs_shape, out_shape)`` of a ragged_dot variant (module docstring)."""
    v = canonical_variant(variant)
    if v == "forward":
        return (m, k), (num_groups, k, n), (m, n)
    if v == "rhs_transposed":
        return (m, k), (num_groups, n, k), (m, n)
    return (m, k), (m, n), (num_groups, k, n)


# -- decoding Mosaic custom calls ------------------------------------------------

@attrs.frozen(kw_only=True)
class Window:
    """One operand's BlockSpec as Mosaic sees it."""

    name: str  # from its index map: "lhs", "rhs", "out", or "operand<i>"
    block_shape: tuple[int, ...]
    pipeline_mode: str | None  # e.g. "double_buffered"; None = Mosaic's default
    buffer_count: int


@attrs.frozen(kw_only=True)
class MosaicKernel:
    """A ``tpu_custom_call`` of an optimized HLO module, decoded."""

    hlo_name: str
    grid: tuple[int | None, ...]  # None marks an axis sized at run time
    dimension_semantics: tuple[str, ...]
    windows: tuple[Window, ...]
    scalar_prefetch: int
    scratch_operands: int
    frontend_attributes: tuple[tuple[str, str], ...]
    cost_estimate: tuple[tuple[str, float], ...]
    result_shapes: tuple[str, ...]
    mlir: str = attrs.field(repr=False)

    def window(self, name: str) -> Window:
        for w in self.windows:
            if w.name == name:
                return w
        raise ValueError(f"kernel {self.hlo_name} has no window {name=}; has {[w.name for w in self.windows]}")

    def attribute(self, key: str) -> str | None:
        return dict(self.frontend_attributes).get(key)


_BUFFERS = {"double_buffered": 2, "synchronous": 1, None: 2}


def _buffer_count(mode: str | None) -> int:
    if mode in _BUFFERS:
        return _BUFFERS[mode]
    m = re.search(r"(\d+)", mode or "")
    return int(m.group(1)) if m else 2


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"-?\d+", text))


def decode_mosaic_body(mlir: str, hlo_name: str = "", frontend_attributes=(), cost_estimate=(),
                       result_shapes=()) -> MosaicKernel:
    """Read grid, semantics and windows from a Mosaic module's ``@main`` attributes."""
    head = re.search(r"func\.func (?:private )?@main\(.*?\)\s*attributes\s*\{(.*?)\}\s*\{\n", mlir, re.S)
    attrs_text = head.group(1) if head else ""
    bounds = re.search(r"iteration_bounds\s*=\s*array<i64:([^>]*)>", attrs_text)
    grid = tuple(None if b == _DYNAMIC else b for b in _ints(bounds.group(1))) if bounds else ()
    sems = tuple(re.findall(r"dimension_semantics<(\w+)>", attrs_text))
    windows = []
    wp = re.search(r"window_params\s*=\s*\[(.*)\]", attrs_text, re.S)
    for i, entry in enumerate(re.findall(r"\{([^{}]*)\}", wp.group(1) if wp else "")):
        mode = re.search(r"pipeline_mode<(\w+)>", entry)
        name = re.search(r"transform_indices\s*=\s*@(\w+?)_transform_indices", entry)
        wb = re.search(r"window_bounds\s*=\s*array<i64:([^>]*)>", entry)
        mode_s = mode.group(1) if mode else None
        windows.append(Window(name=name.group(1) if name else f"operand{i}",
                              block_shape=_ints(wb.group(1)) if wb else (),
                              pipeline_mode=mode_s, buffer_count=_buffer_count(mode_s)))

    def count(key):
        m = re.search(rf"{key}\s*=\s*(\d+)", attrs_text)
        return int(m.group(1)) if m else 0

    return MosaicKernel(hlo_name=hlo_name, grid=grid, dimension_semantics=sems, windows=tuple(windows),
                        scalar_prefetch=count("scalar_prefetch"), scratch_operands=count("scratch_operands"),
                        frontend_attributes=tuple(frontend_attributes), cost_estimate=tuple(cost_estimate),
                        result_shapes=tuple(result_shapes), mlir=mlir)


def mosaic_kernels(hlo_text: str) -> tuple[MosaicKernel, ...]:
    """Every Mosaic (``tpu_custom_call``) kernel in an optimized HLO module, in order."""
    out = []
    for line in hlo_text.splitlines():
        if 'custom_call_target="tpu_custom_call"' not in line or "backend_config=" not in line:
            continue
        lhs, _, rest = line.partition(" = ")
        hlo_name = lhs.replace("ROOT", "").strip().lstrip("%")
        result = rest.split(" custom-call(")[0]
        shapes = tuple(re.findall(r"\w+\[[\d,]*\]", result))
        fa = re.search(r"frontend_attributes=\{([^}]*)\}", line)
        fattrs = tuple(re.findall(r'(\w+)="([^"]*)"', fa.group(1))) if fa else ()
        cfg, _ = json.JSONDecoder().raw_decode(line[line.index("backend_config=") + len("backend_config="):])
        ccc = cfg.get("custom_call_config", {})
        cost = tuple((k, float(v)) for k, v in ccc.get("cost_estimate", {}).items())
        mlir = base64.b64decode(ccc.get("body", "")).decode(errors="replace")
        out.append(decode_mosaic_body(mlir, hlo_name, fattrs, cost, shapes))
    return tuple(out)


# -- the tiling record -----------------------------------------------------------

@attrs.frozen(kw_only=True)
class RaggedDotTiling:
    """How XLA:TPU runs one ``ragged_dot`` call.

    ``lowering`` is ``"mosaic"`` (grouped-matmul kernel; tile fields set) or
    ``"dense"`` (ragged_contracting: one dense batched matmul of ``G * 2 m k n``
    FLOPs; tile fields None). ``grid`` holds None for the dynamic row-tile
    axis. ``rhs_pre_transposed`` is True when XLA copies ``rhs`` to ``[G, k, n]``
    in HBM before the kernel. ``metadata_tile_slots`` = ``ceil(m / tm) + G - 1``
    as sized by the ragged-dot-metadata call. ``xla_*`` are the whole program's
    ``cost_analysis()`` numbers when the tiling came from a compile.
    """

    chip: str
    m: int
    k: int
    n: int
    num_groups: int
    dtype: str
    variant: str
    lowering: str
    tm: int | None
    tk: int | None
    tn: int | None
    grid: tuple[int | None, ...]
    dimension_semantics: tuple[str, ...]
    lhs_block: tuple[int, ...]
    rhs_block: tuple[int, ...]
    out_block: tuple[int, ...]
    buffer_count: int
    rhs_pre_transposed: bool
    metadata_tile_slots: int | None
    source: str
    xla_flops: float | None = None
    xla_bytes_accessed: float | None = None
    xla_optimal_seconds: float | None = None

    @property
    def key(self) -> str:
        return tiling_key(self.chip, self.m, self.k, self.n, self.num_groups, self.dtype, self.variant)

    def to_json(self) -> dict:
        return attrs.asdict(self, recurse=False, value_serializer=lambda _, __, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_json(cls, d: Mapping) -> RaggedDotTiling:
        tup = {"grid", "dimension_semantics", "lhs_block", "rhs_block", "out_block"}
        return cls(**{k: (tuple(v) if k in tup else v) for k, v in d.items() if k in _FIELDS})


_FIELDS = {f.name for f in attrs.fields(RaggedDotTiling)}


def tiling_key(chip, m, k, n, num_groups, dtype, variant) -> str:
    return (f"{get_chip(chip).name}|{canonical_variant(variant)}|{canonical_dtype(dtype)}"
            f"|m={int(m)}|k={int(k)}|n={int(n)}|g={int(num_groups)}")


def _check(chip, m, k, n, num_groups, dtype, variant):
    c = get_chip(chip)
    if c.vendor != "google":
        raise ValueError(f"ragged_dot tiling is modelled for TPU chips only, got chip={chip!r}")
    for name, v in (("m", m), ("k", k), ("n", n), ("num_groups", num_groups)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={v!r}")
    return c.name, int(m), int(k), int(n), int(num_groups), canonical_dtype(dtype), canonical_variant(variant)


# -- extraction by compiling ---------------------------------------------------------

def _ragged_dot_fn(variant: str):
    from jax import lax

    (contract, batch) = DIMENSION_NUMBERS[variant]
    dn = lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(tuple(map(list, contract)), tuple(map(list, batch))),
        lhs_ragged_dimensions=[0], rhs_group_dimensions=[] if variant == "ragged_contracting" else [0])

    def fn(lhs, rhs, group_sizes):
        return lax.ragged_dot_general(lhs, rhs, group_sizes, dn)

    return fn


def extract_ragged_dot_tiling(chip, m, k, n, num_groups, dtype="bf16", *,
                              variant="forward") -> RaggedDotTiling:
    """Compile ``ragged_dot`` for ``chip`` with libtpu and read the kernel's tiling (~0.3-1 s)."""
    from perfmodel import tpu_compile

    chip, m, k, n, g, dt, v = _check(chip, m, k, n, num_groups, dtype, variant)
    lhs, rhs, _ = operand_shapes(v, m, k, n, g)
    prog = tpu_compile.compile_for_tpu(_ragged_dot_fn(v), [(lhs, dt), (rhs, dt), ((g,), "int32")], chip)
    return tiling_from_hlo(prog.hlo_text, chip, m, k, n, g, dt, v, xla=(
        prog.flops, prog.bytes_accessed, prog.optimal_seconds))


def tiling_from_hlo(hlo_text, chip, m, k, n, num_groups, dtype, variant, xla=(None, None, None)) -> RaggedDotTiling:
    """Build the record from an optimized HLO module of one ragged_dot call."""
    kernels = mosaic_kernels(hlo_text)
    common = dict(chip=chip, m=m, k=k, n=n, num_groups=num_groups, dtype=dtype, variant=variant,
                  source=SOURCE_COMPILE, xla_flops=xla[0], xla_bytes_accessed=xla[1],
                  xla_optimal_seconds=xla[2])
    mm = [kk for kk in kernels if any(w.name == "lhs" for w in kk.windows)]
    if not mm:
        return RaggedDotTiling(lowering="dense", tm=None, tk=None, tn=None, grid=(), dimension_semantics=(),
                               lhs_block=(), rhs_block=(), out_block=(), buffer_count=0,
                               rhs_pre_transposed=False, metadata_tile_slots=None, **common)
    kern = mm[0]
    lhs_b, rhs_b, out_b = (kern.window(x).block_shape for x in ("lhs", "rhs", "out"))
    tm, tk = lhs_b
    tn = out_b[-1]
    slots = None
    for kk in kernels:
        if kk is not kern and kk.result_shapes:
            # results: (group offsets [G+1], group ids [slots], tile ids [slots], num active [1])
            sizes = [int(s.split("[")[1].rstrip("]") or 1) for s in kk.result_shapes]
            slots = sizes[1] if len(sizes) > 1 else None
    pre_t = variant == "rhs_transposed" and rhs_b[1] == tk
    return RaggedDotTiling(lowering="mosaic", tm=tm, tk=tk, tn=tn, grid=kern.grid,
                           dimension_semantics=kern.dimension_semantics, lhs_block=lhs_b, rhs_block=rhs_b,
                           out_block=out_b, buffer_count=kern.window("rhs").buffer_count,
                           rhs_pre_transposed=pre_t, metadata_tile_slots=slots, **common)


# -- caches ---------------------------------------------------------------------------

def user_cache_path() -> pathlib.Path:
    """``$PERFMODEL_CACHE_DIR`` or ``$XDG_CACHE_HOME/perfmodel`` or ``~/.cache/perfmodel``, + the table's name."""
    env = os.environ
    return _user_cache_path(env.get("PERFMODEL_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=16)
def _user_cache_path(cache_dir: str | None, xdg_cache_home: str | None, home: str | None) -> pathlib.Path:
    # keyed on the environment it reads (HOME through expanduser): maps look it up once per cell
    root = cache_dir or os.path.join(xdg_cache_home or os.path.expanduser("~/.cache"), "perfmodel")
    return pathlib.Path(root) / "xla_ragged_dot_tilings.json"


def load_table(path: os.PathLike | str = TABLE_PATH) -> dict[str, RaggedDotTiling]:
    """Tilings stored in a JSON table (``{"entries": {key: record}}``), by key.

    A missing file is an empty table (a sweep starts one; no user cache yet). A file that is not such a
    table is a ``ValueError`` naming it.
    """
    p = pathlib.Path(path)
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
        return {k: RaggedDotTiling.from_json(v) for k, v in data.get("entries", {}).items()}
    except (ValueError, AttributeError, KeyError, TypeError) as err:  # bad JSON, or JSON of another shape
        raise ValueError(f"{str(p)!r} is not a tiling table ({type(err).__name__}: {str(err)[:200]})") from None


def save_table(tilings: Iterable[RaggedDotTiling], path: os.PathLike | str, **meta) -> None:
    """Write tilings as a JSON table (sorted keys, so diffs stay readable)."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted((t.key, t.to_json()) for t in tilings)
    head = json.dumps(meta)[1:-1]
    lines = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in entries]
    tmp = p.with_suffix(".tmp")
    # One entry per line: compact, and diffs of a re-run sweep stay readable.
    tmp.write_text("{" + (head + ",\n" if head else "") + '"entries": {\n' + ",\n".join(lines) + "\n}}\n")
    tmp.replace(p)


@functools.cache
def shipped_table() -> Mapping[str, RaggedDotTiling]:
    return load_table(TABLE_PATH)


_USER_TABLE: dict = {}


def user_table() -> Mapping[str, RaggedDotTiling]:
    """The user cache table, parsed once per file version (path, mtime, size)."""
    p = user_cache_path()
    try:
        st = p.stat()
        version = (str(p), st.st_mtime_ns, st.st_size)
    except OSError:
        return {}
    if _USER_TABLE.get("version") != version:
        _USER_TABLE.update(version=version, table=load_table(p))
    return _USER_TABLE["table"]


_MEMO: dict[str, RaggedDotTiling] = {}


def ragged_dot_tiling(chip, m, k, n, num_groups, dtype="bf16", *, variant="forward",
                      allow_compile: bool = True) -> RaggedDotTiling:
    """XLA's tiling of ``ragged_dot`` for these shapes on ``chip``.

    Looks the call up in the shipped table and the user cache; otherwise
    compiles with libtpu when available (and ``allow_compile``) and caches the
    result; otherwise applies :func:`fallback_tiling` (``source ==
    "fallback rule"``).
    """
    args = _check(chip, m, k, n, num_groups, dtype, variant)
    key = tiling_key(*args)
    if key in _MEMO:
        return _MEMO[key]
    found = shipped_table().get(key) or user_table().get(key)
    if found is None and allow_compile:
        from perfmodel.tpu_compile import libtpu_available

        if libtpu_available():
            found = extract_ragged_dot_tiling(*args[:6], variant=args[6])
            cache = load_table(user_cache_path())
            cache[key] = found
            save_table(cache.values(), user_cache_path())
    if found is None:
        found = fallback_tiling(*args[:6], variant=args[6])
    _MEMO[key] = found
    return found


# -- the fallback rule ------------------------------------------------------------------

def fallback_tiling(chip, m, k, n, num_groups, dtype="bf16", *, variant="forward") -> RaggedDotTiling:
    """XLA's tiling as predicted by the rule inferred from the sweep (:func:`rule_tiles`)."""
    chip, m, k, n, g, dt, v = _check(chip, m, k, n, num_groups, dtype, variant)
    common = dict(chip=chip, m=m, k=k, n=n, num_groups=g, dtype=dt, variant=v, source=SOURCE_RULE)
    tiles = None if v == "ragged_contracting" else rule_tiles(chip, m, k, n, g, dt)
    if tiles is None:
        return RaggedDotTiling(lowering="dense", tm=None, tk=None, tn=None, grid=(), dimension_semantics=(),
                               lhs_block=(), rhs_block=(), out_block=(), buffer_count=0,
                               rhs_pre_transposed=False, metadata_tile_slots=None, **common)
    tm, tk, tn = tiles
    return RaggedDotTiling(
        lowering="mosaic", tm=tm, tk=tk, tn=tn, grid=(math.ceil(n / tn), None, math.ceil(k / tk)),
        dimension_semantics=("parallel", "arbitrary", "arbitrary"), lhs_block=(tm, tk),
        rhs_block=(1, tk, tn), out_block=(tm, tn), buffer_count=2,
        rhs_pre_transposed=v == "rhs_transposed", metadata_tile_slots=math.ceil(m / tm) + g - 1, **common)


@attrs.frozen(kw_only=True)
class TilingRule:
    """Per-chip constants of XLA's ragged_dot tile choice (inferred from the sweep).

    ``tm_max``: the largest row tile; ``step``: tk and tn are multiples of it
    when they do not span the whole dimension (the MXU side); ``budget_bytes``:
    the VMEM budget :func:`xla_vmem_estimate_bytes` must stay strictly under.
    """

    tm_max: int
    step: int
    budget_bytes: int


_MIB = 1024**2
RULES: Mapping[str, TilingRule] = {
    "v4": TilingRule(tm_max=128, step=128, budget_bytes=8 * _MIB),
    "v5p": TilingRule(tm_max=128, step=128, budget_bytes=8 * _MIB),
    "v5e": TilingRule(tm_max=128, step=128, budget_bytes=8 * _MIB),
    "v6e": TilingRule(tm_max=256, step=256, budget_bytes=24 * _MIB),
    "tpu7x": TilingRule(tm_max=256, step=256, budget_bytes=24 * _MIB),
}
"""Rule constants per chip; each budget is the one interval the sweep allows (see
``validation/results/compiler/xla_tiling_rule.md``)."""


def xla_vmem_estimate_bytes(tm: int, tk: int, tn: int, dtype: str = "bf16") -> int:
    """The VMEM estimate XLA's tile choice for ragged_dot behaves as if it used.

    ``2 q tk tn`` (rhs block, double buffered) ``+ 2 q tm tk`` (lhs block,
    double buffered) ``+ tm tn (2 q + 8)`` (out block double buffered in the
    operand dtype, plus the f32 matmul result and the i32 row mask the kernel
    materialises, 4 bytes each); ``q`` = bytes per element. Inferred, not read
    from XLA's source: it is the simplest buffer sum that separates every
    chosen tiling of the sweep from its next-larger rejected one.
    """
    return _estimate_bytes(dtype_bytes(dtype), tm, tk, tn)


def _estimate_bytes(q: int, tm: int, tk: int, tn: int) -> int:
    return 2 * q * tk * tn + 2 * q * tm * tk + tm * tn * (2 * q + 8)


def rule_tiles(chip, m, k, n, num_groups, dtype="bf16") -> tuple[int, int, int] | None:
    """``(tm, tk, tn)`` by the rule inferred from the sweep, or None for the dense lowering.

    1. ``m`` not a multiple of 8: XLA uses no Mosaic kernel (dense lowering).
    2. ``tm`` = the largest power of two <= ``tm_max`` dividing ``m`` (>= 8).
    3. ``tk`` = ``k`` if ``(tm, k, min(n, step))`` fits the budget, else the
       largest multiple of ``step`` that fits.
    4. ``tn`` = ``n`` if ``(tm, tk, n)`` fits, else the largest multiple of
       ``step`` that fits.
    "Fits" means :func:`xla_vmem_estimate_bytes` < ``budget_bytes``. The
    group count does not enter (seen: G from 1 to 256 gives the same tiles).
    """
    chip = get_chip(chip).name
    rule = RULES.get(chip)
    if rule is None:
        raise ValueError(f"no ragged_dot tiling rule for chip={chip!r}; rules exist for {sorted(RULES)}")
    if m % 8:
        return None
    tm = rule.tm_max
    while m % tm:
        tm //= 2
    return (tm, *_rule_tk_tn(chip, tm, int(k), int(n), dtype_bytes(dtype)))


@functools.lru_cache(maxsize=65536)
def _rule_tk_tn(chip: str, tm: int, k: int, n: int, q: int) -> tuple[int, int]:
    """Steps 3-4 of :func:`rule_tiles`: they depend on ``m`` only through ``tm`` (cached: maps reuse them)."""
    rule = RULES[chip]

    def fits(tk, tn):
        return _estimate_bytes(q, tm, tk, tn) < rule.budget_bytes

    def largest(full, ok):
        """``full`` if it fits, else the largest multiple of ``step`` (>= 2 steps) that fits, else one step.

        The estimate grows with the tile, so ``ok`` is monotone: binary search over multiples.
        """
        if ok(full):
            return full
        lo, hi = 1, full // rule.step  # answer j in [1, hi]; j = 1 is the floor whether it fits or not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid * rule.step):
                lo = mid
            else:
                hi = mid - 1
        return max(lo * rule.step if full >= rule.step else 0, min(full, rule.step))

    tk = largest(k, lambda t: fits(t, min(n, rule.step)))
    tn = largest(n, lambda t: fits(tk, t))
    return tk, tn


@attrs.frozen(kw_only=True)
class RuleAgreement:
    """How often :func:`rule_tiles` reproduces extracted tilings."""

    rows: tuple[tuple[str, str, int, int], ...]  # (chip, dtype, matches, total)
    mismatches: tuple[tuple[RaggedDotTiling, RaggedDotTiling], ...]  # (extracted, rule)
    text: str
    markdown: str

    @property
    def matches(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r[3] for r in self.rows)


def _same(a: RaggedDotTiling, b: RaggedDotTiling) -> bool:
    return a.lowering == b.lowering and (a.tm, a.tk, a.tn) == (b.tm, b.tk, b.tn)


def rule_agreement(table: Mapping[str, RaggedDotTiling], *, chips=None, dtypes=None) -> RuleAgreement:
    """Score the fallback rule on every extracted tiling (optionally of some chips and dtypes)."""
    from perfmodel.tables import markdown_table, text_table

    counts: dict[tuple[str, str], list[int]] = {}
    bad = []
    for t in table.values():
        if t.source != SOURCE_COMPILE or (chips and t.chip not in chips) or (dtypes and t.dtype not in dtypes):
            continue
        if t.chip not in RULES:
            continue
        r = fallback_tiling(t.chip, t.m, t.k, t.n, t.num_groups, t.dtype, variant=t.variant)
        c = counts.setdefault((t.chip, t.dtype), [0, 0])
        c[1] += 1
        if _same(t, r):
            c[0] += 1
        else:
            bad.append((t, r))
    rows = tuple((ch, dt, c[0], c[1]) for (ch, dt), c in sorted(counts.items()))
    head = ("chip", "dtype", "rule = extracted", "calls", "agreement")
    body = [(ch, dt, a, n, f"{100 * a / n:.1f}%") for ch, dt, a, n in rows]
    tot_a, tot_n = sum(r[2] for r in rows), sum(r[3] for r in rows)
    body.append(("all", "", tot_a, tot_n, f"{100 * tot_a / tot_n:.1f}%" if tot_n else "-"))  # 0 of 0 is no score
    mis_head = ("chip", "dtype", "variant", "m", "k", "n", "G", "extracted tm/tk/tn", "rule tm/tk/tn")
    mis = [(t.chip, t.dtype, t.variant, t.m, t.k, t.n, t.num_groups,
            f"{t.lowering} {t.tm}/{t.tk}/{t.tn}", f"{r.lowering} {r.tm}/{r.tk}/{r.tn}") for t, r in bad]
    text = text_table(head, body) + ("\n\nmismatches:\n" + text_table(mis_head, mis[:40]) if mis else "")
    md = ["# XLA ragged_dot tiling: fallback rule vs extracted tilings", "",
          "Made by `perfmodel validate xla-tiling`; extracted tilings: `perfmodel/data/xla_ragged_dot_tilings.json` "
          "(libtpu AOT compiles). Rule: `perfmodel.xla_tiling.rule_tiles`:", "",
          "1. `m` not a multiple of 8, or the ragged_contracting (drhs) variant: no Mosaic kernel (dense lowering).",
          "2. `tm` = the largest power of two <= `tm_max` dividing `m`.",
          "3. `tk` = `k` if `(tm, k, min(n, step))` fits, else the largest fitting multiple of `step`.",
          "4. `tn` = `n` if `(tm, tk, n)` fits, else the largest fitting multiple of `step`.",
          "",
          "Fits: `2 q tk tn + 2 q tm tk + tm tn (2 q + 8) < budget` (q = bytes per element: rhs and lhs "
          "blocks double buffered, out block double buffered plus an f32 result and an i32 row mask). "
          "The group count G never changes the tiles. The sweep pins each budget to the interval "
          "(largest estimate of a chosen tiling, smallest estimate of a rejected next-larger one]: "
          "(7.9375, 8] MiB on v4, v5e, v5p and (23.75, 24] MiB on v6e and 7x, bf16 and f32 together.", "",
          "| chip | tm_max | step | budget |", "|---|---|---|---|"]
    md += [f"| {c} | {r.tm_max} | {r.step} | {r.budget_bytes / _MIB:g} MiB |" for c, r in RULES.items()]
    md += ["", markdown_table(head, body), ""]
    if mis:
        md += ["## Mismatches", "", markdown_table(mis_head, mis), ""]
    return RuleAgreement(rows=rows, mismatches=tuple(bad), text=text, markdown="\n".join(md))


# -- the sweep that feeds the shipped table -----------------------------------------------

SWEEP_KN: tuple[int, ...] = (128, 256, 512, 768, 1024, 1536, 2048, 2880, 4096, 7168, 8192)
SWEEP_M: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SWEEP_GROUPS: tuple[int, ...] = (1, 2, 8, 32, 128, 256)


def sweep_shapes(chip: str, dtype: str) -> list[tuple[int, int, int, int, str]]:
    """``(m, k, n, G, variant)`` calls the sweep extracts for one chip and dtype.

    A full (k, n) grid at m=4096, G=8 (forward); m and G varied at three
    (k, n); a few rhs_transposed and ragged_contracting calls to confirm how
    those variants lower; for bf16, every call shape of tokamax's v5e cache
    (``../shared/data/tokamax``), so measured shapes are covered on every chip.
    """
    calls = [(4096, k, n, 8, "forward") for k in SWEEP_KN for n in SWEEP_KN]
    for k, n in ((1024, 4096), (4096, 1024), (2048, 2048)):
        calls += [(m, k, n, 8, "forward") for m in SWEEP_M if m != 4096]
        calls += [(4096, k, n, g, "forward") for g in SWEEP_GROUPS if g != 8]
    for k, n in ((1024, 4096), (4096, 1024), (768, 2880)):
        calls += [(4096, k, n, 8, "rhs_transposed"), (4096, k, n, 8, "ragged_contracting")]
    if canonical_dtype(dtype) == "bf16":
        calls += list(TOKAMAX_CALLS)
    seen, out = set(), []
    for c in calls:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def holdout_calls(count: int, seed: int = 0) -> list[tuple[int, int, int, int, str]]:
    """Random forward calls off the sweep grid, to test the rule out of sample.

    m: a multiple of 8 in [8, 32768]; k, n: multiples of 64 in [64, 12288]
    (so some are not multiples of 128); G in [1, 64].
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    return [(int(8 * rng.integers(1, 4097)), int(64 * rng.integers(1, 193)), int(64 * rng.integers(1, 193)),
             int(rng.integers(1, 65)), "forward") for _ in range(count)]


# (m, k, n, G, variant) of every ragged_dot call in tokamax's v5e autotuning cache
# (lhs [m, k]; forward rhs [G, k, n]; rhs_transposed rhs [G, n, k]; ragged_contracting
# rhs [m, n]), read from ../shared/data/tokamax/tpu_v5_lite/*.json.
TOKAMAX_CALLS: tuple[tuple[int, int, int, int, str], ...] = (
    (8, 4096, 4096, 8, 'forward'),
    (4096, 4096, 4096, 8, 'forward'),
    (8192, 4096, 14336, 8, 'forward'),
    (65536, 7168, 2048, 256, 'ragged_contracting'),
    (131072, 512, 7168, 256, 'forward'),
    (131072, 512, 7168, 256, 'ragged_contracting'),
    (131072, 512, 7168, 256, 'rhs_transposed'),
    (131072, 768, 2048, 128, 'rhs_transposed'),
    (131072, 1024, 7168, 256, 'forward'),
    (131072, 1024, 7168, 256, 'ragged_contracting'),
    (131072, 1024, 7168, 256, 'rhs_transposed'),
    (131072, 1536, 4096, 128, 'forward'),
    (131072, 1536, 4096, 128, 'ragged_contracting'),
    (131072, 1536, 4096, 128, 'rhs_transposed'),
    (131072, 2048, 768, 128, 'forward'),
    (131072, 2048, 768, 128, 'ragged_contracting'),
    (131072, 2048, 7168, 128, 'rhs_transposed'),
    (131072, 2048, 7168, 256, 'rhs_transposed'),
    (131072, 4096, 1536, 128, 'forward'),
    (131072, 4096, 1536, 128, 'ragged_contracting'),
    (131072, 4096, 1536, 128, 'rhs_transposed'),
    (131072, 7168, 512, 256, 'forward'),
    (131072, 7168, 512, 256, 'ragged_contracting'),
    (131072, 7168, 512, 256, 'rhs_transposed'),
    (131072, 7168, 1024, 256, 'forward'),
    (131072, 7168, 1024, 256, 'ragged_contracting'),
    (131072, 7168, 1024, 256, 'rhs_transposed'),
    (131072, 7168, 2048, 256, 'forward'),
    (131072, 7168, 2048, 256, 'ragged_contracting'),
    (262144, 256, 7168, 256, 'forward'),
    (262144, 512, 7168, 256, 'forward'),
    (262144, 512, 7168, 256, 'ragged_contracting'),
    (262144, 512, 7168, 256, 'rhs_transposed'),
    (262144, 1024, 7168, 256, 'forward'),
    (262144, 1024, 7168, 256, 'ragged_contracting'),
    (262144, 1024, 7168, 256, 'rhs_transposed'),
    (262144, 1536, 4096, 128, 'forward'),
    (262144, 1536, 4096, 128, 'ragged_contracting'),
    (262144, 1536, 4096, 128, 'rhs_transposed'),
    (262144, 4096, 1536, 128, 'forward'),
    (262144, 4096, 1536, 128, 'ragged_contracting'),
    (262144, 4096, 1536, 128, 'rhs_transposed'),
    (262144, 7168, 256, 256, 'rhs_transposed'),
    (262144, 7168, 512, 256, 'forward'),
    (262144, 7168, 512, 256, 'ragged_contracting'),
    (262144, 7168, 512, 256, 'rhs_transposed'),
    (262144, 7168, 1024, 256, 'forward'),
    (262144, 7168, 1024, 256, 'rhs_transposed'),
    (327680, 2880, 2880, 128, 'forward'),
    (327680, 2880, 2880, 128, 'ragged_contracting'),
    (327680, 2880, 2880, 128, 'rhs_transposed'),
    (393216, 768, 2048, 128, 'forward'),
    (393216, 768, 2048, 128, 'ragged_contracting'),
    (393216, 768, 2048, 128, 'rhs_transposed'),
    (393216, 2048, 768, 128, 'forward'),
    (393216, 2048, 768, 128, 'ragged_contracting'),
    (393216, 2048, 768, 128, 'rhs_transposed'),
    (524288, 1536, 4096, 128, 'forward'),
    (524288, 1536, 4096, 128, 'rhs_transposed'),
    (524288, 4096, 1536, 128, 'forward'),
    (524288, 4096, 1536, 128, 'ragged_contracting'),
    (524288, 4096, 1536, 128, 'rhs_transposed'),
)
