"""Arithmetic task: tokenizer round trip, padding, loss mask, held-out disjointness."""

import numpy as np
import pytest

from validation.arith import task


def test_round_trip_and_padding():
    ids = task.encode("12+345=357", length=17)
    assert ids.dtype == np.int32 and ids.shape == (17,)
    assert task.decode(ids) == "12+345=357".ljust(17)
    assert (ids[10:] == task.SPACE).all()
    with pytest.raises(ValueError, match="text="):
        task.encode("1-2")
    with pytest.raises(ValueError, match="longer than length"):
        task.encode("123456", length=3)


def test_batches_are_correct_problems_with_fixed_length():
    tc = task.TaskConfig(n_digits=3, ops=("+", "*"))
    tokens, mask = next(task.batches(tc, 64, seed=0))
    assert tokens.shape == (64, tc.seq_len + 1) and mask.shape == (64, tc.seq_len)
    for row, m in zip(tokens, mask):
        text = task.decode(row)
        lhs, c = text.strip().split("=")
        assert int(c) == eval(lhs)  # a+b or a*b
        answer_targets = len(c) + 1  # digits + the end-marking space
        assert m.sum() == answer_targets
        first = text.index("=")  # target j predicts token j + 1: the answer starts at target index of '='
        assert m[first] == 1 and m[first - 1] == 0


def test_stream_is_deterministic_in_seed():
    tc = task.TaskConfig(n_digits=2)
    a = next(task.batches(tc, 16, seed=3))[0]
    b = next(task.batches(tc, 16, seed=3))[0]
    c = next(task.batches(tc, 16, seed=4))[0]
    assert (a == b).all() and not (a == c).all()


@pytest.mark.parametrize("name", ["add1", "add3", "add3+mul3"])
def test_held_out_disjoint_from_training(name):
    tc = task.TaskConfig.parse(name, held_out_fraction=0.1 if name == "add1" else 0.02)
    ho, _ = task.held_out_set(tc, 512)
    held = {task.decode(r) for r in ho}
    assert len(held) == len(ho) > 0  # distinct problems
    gen = task.batches(tc, 256, seed=0)
    seen = {task.decode(r) for _ in range(20) for r in next(gen)[0]}
    assert not held & seen
    if name == "add1":  # the whole 1-digit space is covered by train + held-out
        assert len(held | seen) == 100


def test_task_names_parse_back():
    for name in ("add3", "mul2", "add5+mul3", "add3+mul3"):
        assert task.TaskConfig.parse(name).name == name
    assert task.TaskConfig.parse("add5+mul3").seq_len == 24
    with pytest.raises(ValueError, match="task="):
        task.TaskConfig.parse("sub3")
