"""Two XLA formulations of the MoE FFN on CPU and their cost model on the calibrated ``cpu`` chip.

Notation (scaling-book letters): ``T`` rows (tokens x k, sorted by expert),
``D`` width, ``F`` hidden, ``E`` experts, ``tf`` the F chunk, ``nc = F / tf``,
``q`` bytes per element, ``n_in`` = 1 (``act(x W_up)``) or 2 (GLU: up and gate).

How XLA on CPU runs ``jax.lax.ragged_dot`` (read from the optimized HLO, jax
0.10.2, FACTS section 2): a **dense masked expansion**. ``lhs [T, K]`` is
scattered into ``lhs_m [T, E K]`` (row ``r`` of group ``e`` lands in column
block ``e``, zeros elsewhere: a select + transpose copy), the weights
``[E, K, N]`` are transposed into ``[E K, N]`` (a copy; XLA orders the blocks
as ``(K, E)`` hence the transpose) and one dense dot ``[T, E K] @ [E K, N]``
does ``2 T E K N`` FLOPs: ``E`` times the useful work.

* :func:`moe_ffn_ragged_path` is ``kernels.moe_ffn(implementation="ragged_dot")``:
  up (and gate), activation, down, each ragged_dot expanded as above. The
  ``[T, F]`` intermediates cross op boundaries, and the down projection's
  expanded input ``h_m [T, E F]`` is written and re-read: ``E`` times the
  ``[T, F]`` round trip.
* :func:`moe_ffn_chunked` is the XLA formulation **without the [T, F] round
  trip**: the same masked expansion written by hand (x expanded once), then a
  ``lax.scan`` over ``nc`` F chunks: ``u = x_m W_up[:, chunk]`` ``[T, tf]`` ->
  activation -> ``h_m [T, E tf]`` -> ``y += h_m W_down[chunk]``. Only a
  ``[T, E tf]`` piece exists at a time (cache-resident when small); the price
  is re-reading ``x_m [T, E D]`` once per chunk and ``nc`` loop iterations of
  per-op overhead - the CPU analog of the fused TPU kernel's trade (round trip
  removed vs weights re-read per row tile, grid-step overhead).

Both pay ``E`` x the useful FLOPs (the same dense expansion), so on CPU the
comparison isolates the traffic/overhead trade that fusion makes.

Cost model (:func:`ragged_path_ops`, :func:`chunked_ops`): each formulation is
the list of XLA ops it compiles to (checked against
``jax.jit(f).lower(...).compile().cost_analysis()`` by :func:`xla_cost_check`:
bytes agree to a few hundred bytes), each op with its dot FLOPs and the bytes
of every tensor it reads or writes. Time (:func:`predict_time`)::

    t = c + sum_ops count x (max(flops / P, bytes / BW_kind(W)) + o)

``c`` the call (dispatch) overhead, ``P`` the matmul peak, ``o`` a per-op
overhead, and ``BW_kind(W)`` the rate at which an op of that kind (streaming
copy, blocked expansion, interleaved expansion; dots stream their operands)
moves bytes when its working set (the sum of the tensors it touches) is ``W``
bytes: the cache hierarchy makes a few-MiB pass ~5-10x faster than a 100 MiB
one here, and the masked expansions are slower than a plain copy out of
cache (both seen here). ``BW_kind(W)`` comes either from the
calibrated ``cpu`` chip (one stream bandwidth for everything, the plain
roofline: :meth:`CpuRates.from_chip`) or from micro-kernels of each kind timed
at a few working-set sizes (:func:`measure_rates`), interpolated in log-log.
Elementwise FLOPs (masks, selects, activation) are not counted in ``flops``:
those passes are memory- or overhead-bound.

Page faults (:func:`page_fault_s`, added to the calibrated ``cpu`` chip's roofline
only): XLA on CPU allocates a program's temporaries as one block per call
(``compiled.memory_analysis().temp_size_in_bytes``), and under glibc's default
heap a block of at least :data:`MMAP_THRESHOLD_MAX_BYTES` is a fresh mmap whose
pages fault on first touch at every call::

    t_fault = temp_bytes / R_fault   if the heap mmaps large blocks and temp_bytes >= 32 MiB, else 0

``R_fault`` is the chip's measured first-touch rate (``perfmodel calibrate cpu``).
Assumptions: the whole temp block is touched each call (seen: faulted bytes /
temp bytes = 1.00 above the threshold), smaller blocks are reused from the heap
after the first call (glibc raises its dynamic mmap threshold to the largest
freed block), and outputs are small. With ``GLIBC_TUNABLES`` setting
``glibc.malloc.mmap_max=0`` nothing is mmapped and the term is 0. The
micro-kernel rates of :func:`measure_rates` already pay those faults on their
64 MiB outputs, so no separate term is added to them.

Not modelled (seen here): dots run at one peak whatever their shape, and at
small in-cache shapes the ragged_dot path's expansion + dot pair runs ~1.2-1.5x
slower inside the full program than the same ops timed alone, so the model
calls near-ties there where the chunked formulation measurably wins.
"""

from __future__ import annotations

import functools
import time

import attrs
import numpy as np

CHUNK_CANDIDATES = (32, 64, 128, 256, 512, 1024)
"""F chunks :func:`best_chunk` chooses from (those dividing F)."""

MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20
"""glibc's largest mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX`` = 4 MiB x sizeof(long), malloc.c
and mallopt(3)): under the default heap a block of at least this size is always a fresh mmap, so its pages
fault on first touch at every call."""


def heap_mmaps_large_blocks(glibc_tunables: str | None) -> bool:
    """Whether glibc with these ``GLIBC_TUNABLES`` serves large blocks by mmap (True unless ``mmap_max=0``)."""
    settings = dict(kv.split("=", 1) for kv in (glibc_tunables or "").split(":") if "=" in kv)
    return settings.get("glibc.malloc.mmap_max", "").strip() != "0"


def page_fault_s(temp_bytes: float, *, page_fault_bytes_per_s: float, mmaps_large_blocks: bool) -> float:
    """Per-call first-touch cost of a program's temp block (module docstring, *Page faults*).

    ``temp_bytes / page_fault_bytes_per_s`` if ``mmaps_large_blocks`` and ``temp_bytes >=``
    :data:`MMAP_THRESHOLD_MAX_BYTES`, else 0.
    """
    if temp_bytes < 0 or not page_fault_bytes_per_s > 0:
        raise ValueError(f"need temp_bytes >= 0 and page_fault_bytes_per_s > 0, got {temp_bytes=}, "
                         f"{page_fault_bytes_per_s=}")
    if not mmaps_large_blocks or temp_bytes < MMAP_THRESHOLD_MAX_BYTES:
        return 0.0
    return temp_bytes / page_fault_bytes_per_s


# -- the two formulations ------------------------------------------------------

def moe_ffn_ragged_path(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None):
    """The ragged_dot path: exactly ``kernels.moe_ffn(..., implementation="ragged_dot")``."""
    from kernels import moe_ffn

    return moe_ffn(x, group_sizes, w_up, w_down, w_gate, activation=activation, implementation="ragged_dot")


def moe_ffn_chunked(x, group_sizes, w_up, w_down, w_gate=None, *, activation: str | None = None,
                    tf: int = 128):
    """MoE FFN without the ``[T, F]`` round trip: ``lax.scan`` over F chunks of width ``tf``.

    Same arguments and result as :func:`kernels.moe_ffn` (rows sorted by
    expert, zero rows past ``sum(group_sizes)``). Per chunk ``c``::

        u_c = x_m @ W_up_m[c]                       [T, tf]     (x_m: [T, E D] masked expansion)
        h_c = act(u_c)  |  act(x_m @ W_gate_m[c]) * u_c
        y  += mask(h_c) @ W_down_m[c]               [T, E tf] @ [E tf, D]

    accumulated in f32. Raises ``ValueError`` if ``tf`` does not divide ``F``.
    """
    import jax
    import jax.numpy as jnp

    from kernels.activations import ffn_hidden, resolve_activation

    activation = resolve_activation(activation, glu=w_gate is not None)
    T, D = x.shape
    E, _, F = w_up.shape
    if tf <= 0 or F % tf:
        raise ValueError(f"tf={tf} should be a positive divisor of F={F}")
    nc = F // tf
    gs = group_sizes.astype(jnp.int32)
    ends = jnp.cumsum(gs)
    rows = jnp.arange(T, dtype=jnp.int32)[:, None]
    mask = (rows >= (ends - gs)[None, :]) & (rows < ends[None, :])  # [T, E]: row r belongs to expert e
    x_m = jnp.where(mask[:, :, None], x[:, None, :], 0).reshape(T, E * D)

    def in_chunks(w):  # [E, D, F] -> [nc, E D, tf], block e of rows = expert e
        return w.reshape(E, D, nc, tf).transpose(2, 0, 1, 3).reshape(nc, E * D, tf)

    w_down_c = w_down.reshape(E, nc, tf, D).transpose(1, 0, 2, 3).reshape(nc, E * tf, D)
    xs = (in_chunks(w_up), w_down_c) + (() if w_gate is None else (in_chunks(w_gate),))

    def body(y, ws):
        up = jnp.dot(x_m, ws[0], preferred_element_type=jnp.float32).astype(x.dtype)
        gate = None if w_gate is None else jnp.dot(x_m, ws[2], preferred_element_type=jnp.float32).astype(x.dtype)
        h = ffn_hidden(up.astype(jnp.float32), None if gate is None else gate.astype(jnp.float32),
                       activation=activation).astype(x.dtype)
        h_m = jnp.where(mask[:, :, None], h[:, None, :], 0).reshape(T, E * tf)
        return y + jnp.dot(h_m, ws[1], preferred_element_type=jnp.float32), None

    y, _ = jax.lax.scan(body, jnp.zeros((T, D), jnp.float32), xs)
    return y.astype(x.dtype)


# -- cost model -----------------------------------------------------------------

@attrs.frozen(kw_only=True)
class Access:
    """One tensor read or written by an op; ``footprint`` = size of the whole array the bytes come from."""

    tensor: str
    bytes: float
    footprint: float | None = None

    @property
    def working_set_bytes(self) -> float:
        return self.bytes if self.footprint is None else self.footprint


@attrs.frozen(kw_only=True)
class XlaOp:
    """One XLA CPU op (fusion / dot), executed ``count`` times (loop iterations)."""

    name: str
    kind: str  # "dot", "copy", "expand_blocked" or "expand_interleaved" (picks the rate, see CpuRates)
    flops: float
    accesses: tuple[Access, ...]
    count: int = 1
    in_loop: bool = False

    @property
    def bytes(self) -> float:
        """Bytes read + written per execution (what XLA's cost analysis counts)."""
        return sum(a.bytes for a in self.accesses)

    @property
    def working_set_bytes(self) -> float:
        """Sum of the footprints of the tensors the op touches (decides which cache level serves it)."""
        return sum(a.working_set_bytes for a in self.accesses)


def _q(dtype: str) -> int:
    from perfmodel.hardware import dtype_bytes

    return dtype_bytes(dtype)


def _n_pre(activation: str) -> int:
    # gelu / silu: XLA materialises the transcendental part (tanh(...) or the
    # logistic) as its own [rows, width] loop fusion before the expansion that
    # consumes it (seen in the optimized HLO); relu fuses entirely.
    return 0 if activation == "relu" else 1


def _h_inputs(glu: bool, pre: int) -> tuple[str, ...]:
    # The expansion of h recomputes the cheap part of the activation from up
    # (and gate) and the materialised pre-pass output.
    return ("up",) + (("gate",) if glu else ()) + (("act",) if pre else ())


def ragged_path_ops(*, T: int, D: int, F: int, E: int, glu: bool, activation: str, dtype: str = "f32"):
    """XLA ops of the ragged_dot path on CPU, as in its optimized HLO (see the module docstring).

    Bytes: weights transposed ``2 (n_in + 1) E D F q``; x expanded ``T D q +
    T E D q``; up/gate dots ``n_in (T E D + E D F + T F) q``; activation
    pre-pass ``2 T F q``; h expanded ``(n_in + 1) T F q + T E F q``; down dot
    ``(T E F + E F D + T D) q``. FLOPs: ``2 T E D F`` per dot, ``n_in + 1`` dots.
    """
    q = _q(dtype)
    n_in = 2 if glu else 1
    pre = _n_pre(activation)
    transposes = tuple(XlaOp(name=f"transpose {w}", kind="copy", flops=0.0, accesses=(
        Access(tensor=w, bytes=E * D * F * q), Access(tensor=f"{w}_t", bytes=E * D * F * q)))
        for w in ("w_up", "w_gate")[:n_in] + ("w_down",))
    return transposes + _masked_ffn_ops(T=T, D=D, F=F, E=E, glu=glu, pre=pre, q=q, expand="expand_interleaved",
                                        weight_suffix="_t", y_bytes_per_el=q)


def chunked_ops(*, T: int, D: int, F: int, E: int, glu: bool, activation: str, tf: int, dtype: str = "f32"):
    """XLA ops of :func:`moe_ffn_chunked` on CPU (its optimized HLO), loop ops with ``count = nc``.

    Outside the loop: weights re-laid into chunks ``2 (n_in + 1) E D F q``,
    mask ``T E`` (1 byte), x expanded ``T D q + T E + T E D q``, accumulator
    init ``4 T D``. Per iteration: weight chunk slices ``2 (n_in + 1) E D tf q``,
    up/gate dots ``n_in (T E D + E D tf + T tf) q``, activation pre-pass
    ``2 T tf q``, h expanded ``(n_in + 1) T tf q + T E + T E tf q``, down dot
    ``(T E tf + E tf D) q + 4 T D``, accumulate ``12 T D``. FLOPs: ``2 T E D tf``
    per dot per iteration, i.e. the same ``2 (n_in + 1) T E D F`` in total as the
    ragged_dot path.

    One chunk (``tf = F``) is a different program: XLA removes the trip-1
    loop, the weight re-layouts and slices become bitcasts and the mask is
    computed inside the expansions, leaving x expanded ``T D q + T E D q``,
    the dots, the pre-pass and h expanded ``(n_in + 1) T F q + T E F q``:
    the ragged_dot path without its weight transposes and with the blocked
    expansion layout.
    """
    if tf <= 0 or F % tf:
        raise ValueError(f"tf={tf} should be a positive divisor of F={F}")
    q = _q(dtype)
    n_in = 2 if glu else 1
    nc = F // tf
    pre = _n_pre(activation)
    ws = ("w_up", "w_gate")[:n_in] + ("w_down",)
    if nc == 1:
        return _single_chunk_ops(T=T, D=D, F=F, E=E, glu=glu, pre=pre, q=q)
    ops = []
    for w in ws:
        ops.append(XlaOp(name=f"chunk {w}", kind="copy", flops=0.0, accesses=(
            Access(tensor=w, bytes=E * D * F * q), Access(tensor=f"{w}_c", bytes=E * D * F * q))))
    ops.append(XlaOp(name="mask", kind="copy", flops=0.0, accesses=(Access(tensor="mask", bytes=T * E),)))
    ops.append(XlaOp(name="expand x", kind="expand_blocked", flops=0.0, accesses=(
        Access(tensor="x", bytes=T * D * q), Access(tensor="mask", bytes=T * E),
        Access(tensor="x_m", bytes=T * E * D * q))))
    ops.append(XlaOp(name="init y", kind="copy", flops=0.0, accesses=(Access(tensor="y", bytes=4 * T * D),)))
    loop = dict(count=nc, in_loop=True)
    for w in ws:
        # The slice is read from the [nc, E D, tf] chunked array (too big for
        # cache when the weights are) and written as a contiguous operand.
        ops.append(XlaOp(name=f"slice {w}", kind="copy", flops=0.0, accesses=(
            Access(tensor=f"{w}_c", bytes=E * D * tf * q, footprint=E * D * F * q),
            Access(tensor=f"{w}_s", bytes=E * D * tf * q)), **loop))
    for w, out in (("w_up", "up"), ("w_gate", "gate"))[:n_in]:
        ops.append(XlaOp(name=f"dot {out}", kind="dot", flops=2.0 * T * E * D * tf, accesses=(
            Access(tensor="x_m", bytes=T * E * D * q), Access(tensor=f"{w}_s", bytes=E * D * tf * q),
            Access(tensor=out, bytes=T * tf * q)), **loop))
    if pre:
        ops.append(XlaOp(name="activation pre-pass", kind="copy", flops=0.0, accesses=(
            Access(tensor="gate" if glu else "up", bytes=T * tf * q), Access(tensor="act", bytes=T * tf * q)),
            **loop))
    ops.append(XlaOp(name="expand h", kind="expand_blocked", flops=0.0, accesses=tuple(
        Access(tensor=t, bytes=T * tf * q) for t in _h_inputs(glu, pre))
        + (Access(tensor="mask", bytes=T * E), Access(tensor="h_m", bytes=T * E * tf * q)), **loop))
    ops.append(XlaOp(name="dot down", kind="dot", flops=2.0 * T * E * tf * D, accesses=(
        Access(tensor="h_m", bytes=T * E * tf * q), Access(tensor="w_down_s", bytes=E * tf * D * q),
        Access(tensor="partial", bytes=4 * T * D)), **loop))
    ops.append(XlaOp(name="accumulate", kind="copy", flops=0.0, accesses=(
        Access(tensor="y", bytes=4 * T * D), Access(tensor="partial", bytes=4 * T * D),
        Access(tensor="y", bytes=4 * T * D)), **loop))
    return tuple(ops)


def _single_chunk_ops(*, T, D, F, E, glu, pre, q):
    # One chunk: XLA compiles no loop and no weight transposes; the down dot writes f32.
    return _masked_ffn_ops(T=T, D=D, F=F, E=E, glu=glu, pre=pre, q=q, expand="expand_blocked",
                           weight_suffix="", y_bytes_per_el=4)


def _masked_ffn_ops(*, T, D, F, E, glu, pre, q, expand: str, weight_suffix: str, y_bytes_per_el: int):
    """The dense masked expansion both CPU programs share: expand x, up/gate dots, optional
    activation pre-pass, expand h, down dot. ``expand`` names the expansion layout's rate kind."""
    n_in = 2 if glu else 1
    ops = [XlaOp(name="expand x", kind=expand, flops=0.0, accesses=(
        Access(tensor="x", bytes=T * D * q), Access(tensor="x_m", bytes=T * E * D * q)))]
    for w, out in (("w_up", "up"), ("w_gate", "gate"))[:n_in]:
        ops.append(XlaOp(name=f"dot {out}", kind="dot", flops=2.0 * T * E * D * F, accesses=(
            Access(tensor="x_m", bytes=T * E * D * q), Access(tensor=w + weight_suffix, bytes=E * D * F * q),
            Access(tensor=out, bytes=T * F * q))))
    if pre:
        ops.append(XlaOp(name="activation pre-pass", kind="copy", flops=0.0, accesses=(
            Access(tensor="gate" if glu else "up", bytes=T * F * q), Access(tensor="act", bytes=T * F * q))))
    ops.append(XlaOp(name="expand h", kind=expand, flops=0.0, accesses=tuple(
        Access(tensor=t, bytes=T * F * q) for t in _h_inputs(glu, pre)) + (Access(tensor="h_m", bytes=T * E * F * q),)))
    ops.append(XlaOp(name="dot down", kind="dot", flops=2.0 * T * E * F * D, accesses=(
        Access(tensor="h_m", bytes=T * E * F * q), Access(tensor="w_down" + weight_suffix, bytes=E * F * D * q),
        Access(tensor="y", bytes=y_bytes_per_el * T * D))))
    return tuple(ops)


@attrs.frozen(kw_only=True)
class CpuRates:
    """Rates the CPU time model charges each op kind (:attr:`XlaOp.kind`).

    * ``flops_per_s``: dot FLOPs (matmul peak);
    * ``copy``: streaming passes (weight transposes, slices, elementwise
      passes) and the operand traffic of dots;
    * ``expand_blocked``: the masked expansion with ``D`` innermost
      (``[T, E, D]``, contiguous runs of ``D``), as :func:`moe_ffn_chunked` writes it;
    * ``expand_interleaved``: XLA's own ragged_dot expansion, with ``E``
      innermost (``[T, K, E]``: each output line gathers from ``E`` rows);
    * ``op_overhead_s``: fixed cost per op execution (each loop iteration
      runs every op of its body);
    * ``call_overhead_s``: fixed cost per call of a jitted function (dispatch);
    * ``page_fault_bytes_per_s``: first-touch rate of fresh pages for :func:`page_fault_s`
      (set for the calibrated chip only; the micro-kernel rates carry faults implicitly).

    Byte rates are ``((working_set_bytes, bytes_per_s), ...)`` ascending in
    working set, interpolated in log-log and clamped at the ends.
    """

    flops_per_s: float
    copy: tuple[tuple[float, float], ...]
    expand_blocked: tuple[tuple[float, float], ...]
    expand_interleaved: tuple[tuple[float, float], ...]
    op_overhead_s: float
    call_overhead_s: float
    source: str
    page_fault_bytes_per_s: float | None = None

    @classmethod
    def from_chip(cls, chip, dtype: str = "f32") -> "CpuRates":
        """The roofline of ``chip``: every byte at its HBM (here: DRAM) bandwidth, launch overhead per op,
        and the chip's page-fault rate (None on accelerators) for :func:`page_fault_s`."""
        from perfmodel.hardware import get_chip

        c = get_chip(chip)
        bw = ((1.0, c.hbm_bytes_per_s),)
        return cls(flops_per_s=c.peak_flops_per_s(dtype), copy=bw, expand_blocked=bw, expand_interleaved=bw,
                   op_overhead_s=c.launch_overhead_s, call_overhead_s=0.0,
                   page_fault_bytes_per_s=c.page_fault_bytes_per_s,
                   source=f"calibrated '{c.name}' chip: {c.sources.get('hbm_bytes_per_s', '')}"
                   + (f"; page faults: {c.sources['page_fault_bytes_per_s']}"
                      if c.page_fault_bytes_per_s is not None and "page_fault_bytes_per_s" in c.sources else ""))

    def bytes_per_s(self, kind: str, working_set_bytes: float) -> float:
        table = {"dot": self.copy, "copy": self.copy, "expand_blocked": self.expand_blocked,
                 "expand_interleaved": self.expand_interleaved}[kind]
        if len(table) == 1:
            return float(table[0][1])
        ws = np.log([w for w, _ in table])
        r = np.log([v for _, v in table])
        return float(np.exp(np.interp(np.log(max(working_set_bytes, 1.0)), ws, r)))


def _interleaved_medians_s(calls, repeats: int) -> list[float]:
    """Median time of each ``(fn, args)`` in ``calls``, timed round-robin so all share the machine's load."""
    for fn, args in calls:
        fn(*args).block_until_ready()  # compile + warm-up
    samples = [[] for _ in calls]
    for _ in range(repeats):
        for i, (fn, args) in enumerate(calls):
            t0 = time.perf_counter()
            fn(*args).block_until_ready()
            samples[i].append(time.perf_counter() - t0)
    return [sorted(s)[len(s) // 2] for s in samples]


MEASURE_SIZES_MIB = (4, 64)
"""Output sizes (MiB) of the micro-kernels :func:`measure_rates` times: within the L3 (32 MiB here) and DRAM-sized."""


def measure_rates(*, repeats: int = 7, sizes_mib=MEASURE_SIZES_MIB, K: int = 128, E: int = 8,
                  matmul_n: int = 768, loop_iterations: int = 400) -> CpuRates:
    """Time one micro-kernel per op kind and size on this machine (f32, medians of round-robin rounds).

    For each output size ``S`` (``T = S / (E K 4)`` rows):

    * copy: ``x + 1`` on ``T E K`` floats, working set ``2 T E K 4``;
    * expansions: ``[T, K] -> [T, E K]`` masked selects in both layouts,
      working set ``(T K + T E K) 4`` (what :func:`ragged_path_ops` /
      :func:`chunked_ops` count for the same op);

    plus a ``matmul_n^3`` dot (``2 n^3 / t``), a ``lax.scan`` of
    ``loop_iterations`` steps of 3 tiny ops (``t / (3 iterations)`` per op) and
    a jitted op on 8 floats timed on its own (the call overhead, subtracted
    from every other kernel's time before a rate is derived).
    Toy kernels, independent of the validation sweep (nothing is fitted to
    its timings); the harness runs this at the start so the rates share the
    sweep's machine load.
    """
    import datetime

    import jax
    import jax.numpy as jnp

    tiny = jax.jit(lambda v: v + 1.0)
    (call,) = _interleaved_medians_s([(tiny, (jnp.ones((8,), jnp.float32),))], 21)
    calls, meta = [], []
    a = jnp.ones((matmul_n, matmul_n), jnp.float32)
    calls.append((jax.jit(lambda u, v: u @ v), (a, a)))
    meta.append(("dot", 2.0 * matmul_n**3, 0.0))

    def body(c, _):
        return jnp.tanh(c @ c) + 1.0, None

    small = jnp.eye(8, dtype=jnp.float32) * 0.1
    calls.append((jax.jit(lambda c: jax.lax.scan(body, c, None, length=loop_iterations)[0]), (small,)))
    meta.append(("loop", 0.0, 0.0))
    for mib in sizes_mib:
        T = max(E, int(mib * 2**20) // (E * K * 4))
        n = T * E * K
        x = jnp.ones((T, K), jnp.float32)
        mask = jnp.arange(T)[:, None] // (T // E) == jnp.arange(E)[None, :]
        calls.append((jax.jit(lambda v: v + 1.0), (jnp.ones((n,), jnp.float32),)))
        meta.append(("copy", 2.0 * n * 4, 2.0 * n * 4))
        exp_bytes = (T * K + n) * 4.0
        calls.append((jax.jit(lambda v, m, T=T: jnp.where(m[:, :, None], v[:, None, :], 0).reshape(T, E * K)),
                      (x, mask)))
        meta.append(("expand_blocked", exp_bytes, exp_bytes))
        calls.append((jax.jit(lambda v, m, T=T: jnp.where(m.T[:, :, None], v[None], 0).transpose(1, 2, 0)
                              .reshape(T, K * E)), (x, mask)))
        meta.append(("expand_interleaved", exp_bytes, exp_bytes))
    times = _interleaved_medians_s(calls, repeats)
    tables = {"copy": [], "expand_blocked": [], "expand_interleaved": []}
    flops = overhead = 0.0
    for (kind, work, ws), t in zip(meta, times):
        t = max(t - call, 0.05 * t)
        if kind == "dot":
            flops = work / t
        elif kind == "loop":
            overhead = t / (3 * loop_iterations)
        else:
            tables[kind].append((ws, work / t))
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return CpuRates(flops_per_s=flops, op_overhead_s=overhead, call_overhead_s=call,
                    **{k: tuple(sorted(v)) for k, v in tables.items()},
                    source=f"micro-kernels timed at {when}: f32 {matmul_n}^3 dot; x+1 and both masked expansions "
                           f"writing {', '.join(f'{m:g}' for m in sizes_mib)} MiB; {loop_iterations}-step scan "
                           f"of 3 tiny ops; medians of {repeats} round-robin rounds")


@attrs.frozen(kw_only=True)
class CpuPrediction:
    """Predicted time of one formulation: sums over ops x executions."""

    formulation: str
    time_s: float
    compute_s: float  # sum of per-op flops / peak
    memory_s: float  # sum of per-op bytes / rate of the op's kind at its working set
    overhead_s: float  # op executions x per-op overhead
    flops: float  # executed dot FLOPs (E x useful)
    useful_flops: float
    bytes: float  # all bytes read + written (cost-analysis convention), all executions
    op_executions: int
    tf: int | None = None

    @property
    def bound(self) -> str:
        return max((self.compute_s, "compute"), (self.memory_s, "memory"), (self.overhead_s, "overhead"))[1]


def predict_time(ops, rates: CpuRates, *, formulation: str, useful_flops: float,
                 tf: int | None = None) -> CpuPrediction:
    """``c + sum_ops count (max(flops / P, bytes / BW_kind(W)) + o)`` (see the module docstring)."""
    time_s, compute_s, memory_s, overhead_s = rates.call_overhead_s, 0.0, 0.0, rates.call_overhead_s
    for op in ops:
        cs = op.flops / rates.flops_per_s
        ms = op.bytes / rates.bytes_per_s(op.kind, op.working_set_bytes)
        time_s += op.count * (max(cs, ms) + rates.op_overhead_s)
        compute_s += op.count * cs
        memory_s += op.count * ms
        overhead_s += op.count * rates.op_overhead_s
    return CpuPrediction(
        formulation=formulation, time_s=time_s, compute_s=compute_s, memory_s=memory_s, overhead_s=overhead_s,
        flops=sum(op.count * op.flops for op in ops), useful_flops=useful_flops,
        bytes=sum(op.count * op.bytes for op in ops), op_executions=sum(op.count for op in ops), tf=tf)


def useful_flops(*, T: int, D: int, F: int, glu: bool) -> float:
    """Useful matmul FLOPs of the MoE FFN: ``2 (n_in + 1) T D F``."""
    return 2.0 * (3 if glu else 2) * T * D * F


def _rates(rates_or_chip, dtype: str) -> CpuRates:
    return rates_or_chip if isinstance(rates_or_chip, CpuRates) else CpuRates.from_chip(rates_or_chip, dtype)


def predict_ragged_path(rates, *, T, D, F, E, glu, activation, dtype="f32") -> CpuPrediction:
    """Predicted ragged_dot-path time; ``rates`` is a :class:`CpuRates` or a chip (its roofline)."""
    ops = ragged_path_ops(T=T, D=D, F=F, E=E, glu=glu, activation=activation, dtype=dtype)
    return predict_time(ops, _rates(rates, dtype), formulation="ragged_dot",
                        useful_flops=useful_flops(T=T, D=D, F=F, glu=glu))


def predict_chunked(rates, *, T, D, F, E, glu, activation, tf, dtype="f32") -> CpuPrediction:
    """Predicted time of :func:`moe_ffn_chunked`; ``rates`` is a :class:`CpuRates` or a chip."""
    ops = chunked_ops(T=T, D=D, F=F, E=E, glu=glu, activation=activation, tf=tf, dtype=dtype)
    return predict_time(ops, _rates(rates, dtype), formulation="chunked", tf=tf,
                        useful_flops=useful_flops(T=T, D=D, F=F, glu=glu))


def best_chunk(rates, *, T, D, F, E, glu, activation, dtype="f32") -> int:
    """The F chunk in :data:`CHUNK_CANDIDATES` (dividing F) with the lowest predicted time (F if none divides)."""
    cands = [tf for tf in CHUNK_CANDIDATES if tf <= F and F % tf == 0] or [F]
    return min(cands, key=lambda tf: predict_chunked(rates, T=T, D=D, F=F, E=E, glu=glu, activation=activation,
                                                     tf=tf, dtype=dtype).time_s)


# -- check against XLA's own cost analysis -------------------------------------

@attrs.frozen(kw_only=True)
class XlaCostCheck:
    """Model vs ``compiled.cost_analysis()`` for one formulation.

    XLA counts a while loop's body **once** (it does not know the trip count),
    so the comparable model figure is (outside-loop ops) + (one iteration).
    ``xla_flops`` also includes elementwise FLOPs (mask compares, selects,
    activation) that the model leaves out; ``model_flops`` are dot FLOPs only.
    """

    formulation: str
    xla_flops: float
    model_flops: float
    xla_bytes: float
    model_bytes: float

    @property
    def bytes_ratio(self) -> float:
        return self.model_bytes / self.xla_bytes

    @property
    def flops_ratio(self) -> float:
        return self.model_flops / self.xla_flops


def _once(ops):
    """(dot FLOPs, bytes) with every op counted once: XLA's convention for loop bodies."""
    return sum(op.flops for op in ops), sum(op.bytes for op in ops)


def xla_cost_check(fn, args, ops, *, formulation: str) -> XlaCostCheck:
    """Compile ``fn(*args)`` for CPU and compare its cost analysis with ``ops``."""
    import jax

    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    mf, mb = _once(ops)
    return XlaCostCheck(formulation=formulation, xla_flops=float(ca.get("flops", 0.0)), model_flops=mf,
                        xla_bytes=float(ca.get("bytes accessed", 0.0)), model_bytes=mb)


def formulations(*, activation: str, tf: int):
    """``{"ragged_dot": f, "chunked": g}``: callables ``(x, group_sizes, w_up, w_down[, w_gate])``."""
    return {"ragged_dot": functools.partial(moe_ffn_ragged_path, activation=activation),
            "chunked": functools.partial(moe_ffn_chunked, activation=activation, tf=tf)}
