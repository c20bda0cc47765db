"""Strict JSON output (perfmodel/jsonout.py): what every report's .json and --json output is written with."""

import json

import numpy as np
import pytest

from perfmodel import jsonout


def test_non_finite_numbers_become_null_and_numpy_values_plain_json():
    obj = {"a": float("nan"), "b": [np.float32(1.5), np.int64(3), np.inf], "c": (True, np.bool_(False)),
           "d": np.array([[1.0, np.nan]]), 2: "two", None: 0}
    text = jsonout.dumps(obj, indent=None)
    assert json.loads(text, parse_constant=lambda t: pytest.fail(f"non-JSON token {t}")) == {
        "a": None, "b": [1.5, 3, None], "c": [True, False], "d": [[1.0, None]], "2": "two", "null": 0}
    # keys as json.dumps writes them
    assert list(json.loads(jsonout.dumps({1: 0, 2.5: 2, False: 1}))) == list(json.loads(json.dumps({1: 0, 2.5: 2,
                                                                                                 False: 1})))


def test_unknown_objects_go_through_default_or_are_named():
    class Thing:
        def __str__(self):
            return "thing"

    assert json.loads(jsonout.dumps({"x": Thing()}, default=str)) == {"x": "thing"}
    with pytest.raises(TypeError, match="not JSON serialisable: Thing"):
        jsonout.dumps({"x": Thing()})


def test_loads_object_names_where_and_what_is_wrong():
    from perfmodel.jsonout import loads_object

    assert loads_object('{"a": 1}', "f.jsonl:3") == {"a": 1}
    with pytest.raises(ValueError, match=r"^f.jsonl:3: not valid JSON \(Expecting value\); fix it$"):
        loads_object("nope", "f.jsonl:3", fix="; fix it")
    with pytest.raises(ValueError, match=r"^f.jsonl:3: expected a JSON object \(one run per line\), got list$"):
        loads_object("[1, 2]", "f.jsonl:3", hint=" (one run per line)")
