from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hier_ps.config import InitConfig
from hier_ps.hbm import rows
from hier_ps.hbm.rows import RowLayout, init_embeddings


@settings(max_examples=30, deadline=None)
@given(keys=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40, unique=True), seed=st.integers(0, 2**40))
def test_init_is_a_pure_function_of_seed_table_key(keys: list[int], seed: int) -> None:
    k = np.array(keys, np.uint64)
    for name in ("uniform", "normal"):
        cfg = InitConfig(name=name, scale=0.1, std=0.2)
        full = init_embeddings(seed, "T", k, 8, cfg)
        # Each key alone, and the keys reversed: same rows.
        alone = np.concatenate([init_embeddings(seed, "T", k[i : i + 1], 8, cfg) for i in range(len(k))])
        rev = init_embeddings(seed, "T", k[::-1], 8, cfg)[::-1]
        assert np.array_equal(full, alone) and np.array_equal(full, rev)
        assert not np.array_equal(full, init_embeddings(seed, "U", k, 8, cfg))  # table name matters
        assert not np.array_equal(full, init_embeddings(seed + 1, "T", k, 8, cfg))  # seed matters


def test_init_distributions() -> None:
    k = np.arange(20000, dtype=np.uint64)
    u = init_embeddings(0, "T", k, 4, InitConfig(name="uniform", scale=0.05))
    assert u.dtype == np.float32 and u.shape == (20000, 4)
    assert np.abs(u).max() <= 0.05 and abs(u.mean()) < 2e-3 and abs(u.std() - 0.05 / np.sqrt(3)) < 1e-3
    nrm = init_embeddings(0, "T", k, 4, InitConfig(name="normal", std=0.5))
    assert abs(nrm.std() - 0.5) < 0.01 and abs(nrm.mean()) < 0.01
    assert (init_embeddings(0, "T", k, 3, InitConfig(name="constant", value=2.0)) == 2.0).all()
    assert (init_embeddings(0, "T", k, 3, InitConfig(name="zeros")) == 0.0).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 20), dim=st.integers(1, 8), state=st.integers(0, 17), seed=st.integers(0, 1000))
def test_pack_unpack_roundtrip(n: int, dim: int, state: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lay = RowLayout(dim, state)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    st_ = rng.normal(size=(n, state)).astype(np.float32)
    meta = rng.integers(-(2**62), 2**62, size=(n, 2), dtype=np.int64)
    rows = lay.pack(emb, st_, meta)
    assert rows.shape == (n, dim + state + 4)
    e2, s2, m2 = lay.unpack(rows)
    assert np.array_equal(e2, emb) and np.array_equal(s2, st_) and np.array_equal(m2, meta)


def test_new_rows_metadata() -> None:
    lay = RowLayout(3, 1)
    rows = lay.new_rows(0, "T", np.array([5, 6], np.uint64), InitConfig())
    _, state, meta = lay.unpack(rows)
    assert (state == 0).all() and meta[:, 0].tolist() == [0, 0] and meta[:, 1].tolist() == [-1, -1]


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=60, unique=True),
    seed=st.integers(0, 2**64 - 1),
    dim=st.sampled_from([1, 3, 16, 64]),
    scale=st.sampled_from([0.05, 1.0, 1e-3, 3.7]),
)
def test_c_uniform_rows_are_the_numpy_paths_bits(keys: list[int], seed: int, dim: int, scale: float) -> None:
    """The C initializer (cpu_kernels/rows.c) and the numpy one give the same bits: a key's initial row does not
    depend on whether a compiler was there (DESIGN.md contract 2)."""
    k = np.array([0, 2**64 - 1, *keys], np.uint64)  # the extremes of the key space too
    got = rows._uniform_c(seed, "C1", k, dim, scale)
    if got is None:
        pytest.skip("no CPU kernels here: the numpy path is the only one")
    saved, rows._C_INIT = rows._C_INIT, None
    try:
        want = init_embeddings(seed, "C1", k, dim, InitConfig(name="uniform", scale=scale))
    finally:
        rows._C_INIT = saved
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
