"""hash_strings is FNV-1a 64 over UTF-8 bytes, whatever the input container."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.data import hash_strings


def fnv1a64(b: bytes) -> int:
    """The textbook definition, one byte at a time (the oracle)."""
    h = 0xCBF29CE484222325
    for byte in b:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def test_published_vectors() -> None:
    # FNV-1a 64 test vectors from the reference implementation's test suite
    got = hash_strings(["", "a", "b", "foobar"]).tolist()
    assert got == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0xAF63DF4C8601F1A5, 0x85944171F73967E8]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.text(max_size=30), max_size=40))
def test_matches_bytewise_definition(values: list[str]) -> None:
    expected = [fnv1a64(v.encode()) for v in values]
    got = hash_strings(values)
    assert got.dtype == np.uint64 and got.tolist() == expected


def test_every_container_gives_the_same_hashes() -> None:
    values = ["x", "", "héllo wörld", "a" * 100, "ab"]
    want = [fnv1a64(v.encode()) for v in values]
    inputs = [
        values,
        np.array(values),
        np.array(values, dtype=object),
        np.array([v.encode() for v in values], dtype=object),
        pa.array(values),
        pa.array(values, pa.large_string()),
        pa.array([v.encode() for v in values], pa.binary()),
        pa.array([v.encode() for v in values], pa.large_binary()),
        pa.chunked_array([values[:2], values[2:]]),
        pa.array(values).dictionary_encode(),
    ]
    for x in inputs:
        assert hash_strings(x).tolist() == want, type(x)
    sliced = pa.array(["zz", *values, "zz"]).slice(1, len(values))  # non-zero array offset
    assert hash_strings(sliced).tolist() == want


def test_nulls_hash_as_empty_and_empty_input() -> None:
    assert hash_strings(pa.array(["a", None])).tolist() == [fnv1a64(b"a"), fnv1a64(b"")]
    assert hash_strings([]).tolist() == [] and hash_strings([None, None]).tolist() == [fnv1a64(b"")] * 2
    with pytest.raises(TypeError, match="expected strings or bytes"):
        hash_strings(pa.array([1, 2]))
