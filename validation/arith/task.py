"""Arithmetic task: "a+b=c" strings, tokenizer, seeded training stream, held-out set.

Vocabulary (V = 14 tokens, fixed for every task family)::

    id    0..9   10    11   12   13
    char  0..9   ' '   '+'  '='  '*'

Format: ``f"{a}{op}{b}={c}"`` with decimal operands (no leading zeros),
``op`` in ``+`` / ``*`` and ``c`` the exact result, right-padded with spaces
to ``T + 1`` characters; the model reads positions ``0..T-1`` and predicts
positions ``1..T`` (next token). ``T = 4 n + 4`` for ``n``-digit operands
(longest problem ``n + 1 + n + 1 + 2n`` characters, one terminating space,
one spare), so 3-digit problems give T = 16.

Loss: mean cross-entropy over the *answer* targets only: every digit of ``c``
and the first space after it (the end marker: the model must know where the
answer stops). The operands are random, so predicting them is not part of the
task; the padding after the end marker is ignored too.

Held-out set: a problem ``(a, op, b)`` is held out iff a 64-bit hash of it
falls below ``held_out_fraction``. The training stream rejects held-out
problems, so the two are disjoint by construction, for every seed, without
storing any list. The test set is a fixed-seed sample of held-out problems
(all of them when the problem space is small).
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

CHARS = "0123456789 +=*"
VOCAB = len(CHARS)
SPACE, PLUS, EQUALS, TIMES = 10, 11, 12, 13
_OP_CHAR = {"+": PLUS, "*": TIMES}
_OP_CODE = {"+": 1, "*": 2}


@attrs.frozen(kw_only=True)
class TaskConfig:
    """A task family: operands uniform in ``[0, 10**n_digits)``, op uniform in ``ops``.

    ``mul_digits`` caps the operands of ``*`` (default ``n_digits``): a mixture
    such as 5-digit addition with 3-digit multiplication keeps T from growing.
    """

    n_digits: int = 3
    ops: tuple[str, ...] = ("+",)
    mul_digits: int | None = None
    held_out_fraction: float = 0.02

    def __attrs_post_init__(self):
        if not isinstance(self.n_digits, int) or not 1 <= self.n_digits <= 9:
            raise ValueError(f"n_digits must be an integer in 1..9, got n_digits={self.n_digits!r}")
        if not self.ops or any(o not in _OP_CHAR for o in self.ops):
            raise ValueError(f"ops must be a non-empty subset of ('+', '*'), got ops={self.ops!r}")
        if self.mul_digits is not None and not 1 <= self.mul_digits <= self.n_digits:
            raise ValueError(f"mul_digits must lie in 1..n_digits={self.n_digits}, got mul_digits={self.mul_digits!r}")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise ValueError(f"held_out_fraction must lie in (0, 0.5), got {self.held_out_fraction=}")

    @property
    def seq_len(self) -> int:
        """Model positions T (the token rows are T + 1 long)."""
        return 4 * self.n_digits + 4

    @property
    def name(self) -> str:
        parts = [f"add{self.n_digits}" if o == "+" else f"mul{self.mul_digits or self.n_digits}" for o in self.ops]
        return "+".join(parts)

    @classmethod
    def parse(cls, name: str, **kwargs) -> "TaskConfig":
        """Inverse of :attr:`name`: ``add3``, ``mul2``, ``add5+mul3`` ..."""
        ops, digits = [], {}
        for part in name.split("+"):
            kind, n = part[:3], part[3:]
            if kind not in ("add", "mul") or not n.isdigit():
                raise ValueError(f"task must look like add3, mul2 or add5+mul3, got task={name!r}")
            op = "+" if kind == "add" else "*"
            ops.append(op)
            digits[op] = int(n)
        n_digits = max(digits.values())
        mul = digits.get("*")
        return cls(n_digits=digits.get("+", n_digits) if "+" in digits else n_digits, ops=tuple(ops),
                   mul_digits=mul if (mul is not None and mul != n_digits) else None, **kwargs)


def encode(text: str, length: int | None = None) -> np.ndarray:
    """Characters -> int32 ids, right-padded with spaces to ``length``."""
    if any(c not in CHARS for c in text):
        raise ValueError(f"text must use only {CHARS!r}, got text={text!r}")
    if length is not None and len(text) > length:
        raise ValueError(f"text={text!r} is longer than length={length}")
    text = text if length is None else text.ljust(length)
    return np.array([CHARS.index(c) for c in text], dtype=np.int32)


def decode(ids) -> str:
    return "".join(CHARS[int(i)] for i in np.asarray(ids).reshape(-1))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def is_held_out(a: np.ndarray, op_code: np.ndarray, b: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic membership in the held-out set (hash of the problem < fraction)."""
    with np.errstate(over="ignore"):
        key = (np.asarray(a, np.uint64) * np.uint64(1_000_000_007)
               + np.asarray(b, np.uint64)) * np.uint64(4) + np.asarray(op_code, np.uint64)
        h = _splitmix64(key)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


def _render(task: TaskConfig, a: np.ndarray, op_code: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[B] problems -> [B, T + 1] int32 token rows (vectorized digit rendering)."""
    rows = np.full((len(a), task.seq_len + 1), SPACE, dtype=np.int32)
    c = np.where(op_code == 1, a + b, a * b)
    for i in range(len(a)):  # python strings: ~1 us per problem, fine at these batch sizes
        s = f"{a[i]}{'+' if op_code[i] == 1 else '*'}{b[i]}={c[i]}"
        rows[i, :len(s)] = [CHARS.index(ch) for ch in s]
    return rows


def _sample(task: TaskConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    op_idx = rng.integers(0, len(task.ops), size=n)
    op_code = np.array([_OP_CODE[o] for o in task.ops], dtype=np.int64)[op_idx]
    hi_add, hi_mul = 10**task.n_digits, 10 ** (task.mul_digits or task.n_digits)
    hi = np.where(op_code == 1, hi_add, hi_mul)
    a = (rng.random(n) * hi).astype(np.int64)
    b = (rng.random(n) * hi).astype(np.int64)
    return a, op_code, b


def loss_mask(tokens: np.ndarray) -> np.ndarray:
    """[B, T + 1] token rows -> [B, T] float32 mask of the answer targets.

    Target j (= token j + 1) counts iff it comes after '=' and is an answer
    digit or the first space after the answer.
    """
    tgt = tokens[:, 1:]
    after_eq = np.cumsum(tokens[:, :-1] == EQUALS, axis=1) > 0
    space_before = np.cumsum(tgt == SPACE, axis=1) - (tgt == SPACE)  # spaces strictly before j
    return (after_eq & (space_before == 0)).astype(np.float32)


def batches(task: TaskConfig, batch_size: int, seed: int):
    """Infinite stream of ``(tokens [B, T + 1] int32, mask [B, T] float32)`` training batches.

    Deterministic in ``seed``; held-out problems are rejected and redrawn.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size=}")
    rng = np.random.default_rng(seed)
    while True:
        a, op, b = _sample(task, rng, 2 * batch_size + 64)
        keep = ~is_held_out(a, op, b, task.held_out_fraction)
        a, op, b = a[keep][:batch_size], op[keep][:batch_size], b[keep][:batch_size]
        if len(a) < batch_size:  # only for tiny problem spaces; draw again
            continue
        tokens = _render(task, a, op, b)
        yield tokens, loss_mask(tokens)


@functools.lru_cache(maxsize=8)
def held_out_set(task: TaskConfig, size: int = 2048, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``size`` distinct held-out problems as ``(tokens, mask)``; fixed by ``seed``."""
    n_add = 10 ** (2 * task.n_digits) if "+" in task.ops else 0
    n_mul = 10 ** (2 * (task.mul_digits or task.n_digits)) if "*" in task.ops else 0
    if n_add + n_mul <= 200_000:  # small space: enumerate every held-out problem
        parts = []
        for op, n_op, hi in (("+", n_add, 10**task.n_digits), ("*", n_mul, 10 ** (task.mul_digits or task.n_digits))):
            if n_op:
                a, b = np.divmod(np.arange(n_op, dtype=np.int64), hi)
                parts.append((a, np.full(n_op, _OP_CODE[op]), b))
        a, op, b = (np.concatenate(x) for x in zip(*parts))
        keep = is_held_out(a, op, b, task.held_out_fraction)
        a, op, b = a[keep], op[keep], b[keep]
        idx = np.random.default_rng(seed).permutation(len(a))[:size]
        a, op, b = a[idx], op[idx], b[idx]
    else:
        rng = np.random.default_rng(seed)
        seen, out = set(), []
        while len(out) < size:
            a, op, b = _sample(task, rng, 64 * size)
            keep = is_held_out(a, op, b, task.held_out_fraction)
            for t in zip(a[keep].tolist(), op[keep].tolist(), b[keep].tolist()):
                if t not in seen and len(out) < size:
                    seen.add(t)
                    out.append(t)
        a, op, b = (np.array(x, dtype=np.int64) for x in zip(*out))
    tokens = _render(task, a, op, b)
    mask = loss_mask(tokens)
    tokens.setflags(write=False)  # cached: shared between callers
    mask.setflags(write=False)
    return tokens, mask
