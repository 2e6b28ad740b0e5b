"""The CNI wire protocol's JSON (C accelerator) agrees with the json module."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from terway_agent import protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values)
def test_round_trip_matches_json_module(value: object) -> None:
    text = protocol.dumps(value)
    assert text == json.dumps(value)
    assert protocol.loads(text) == json.loads(text)
    assert protocol.loads(text.encode()) == value


@pytest.mark.parametrize("bad", ["", "{", "[1,", '{"a":1} x', "{'a': 1}", b"\xff"])
def test_malformed_input_raises_value_error(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        protocol.loads(bad)


def test_decode_requires_an_object() -> None:
    with pytest.raises(protocol.ProtocolError, match="not a JSON object"):
        protocol.decode(b"[1]")
    assert protocol.decode(protocol.encode({"v": 1})) == {"v": 1}
