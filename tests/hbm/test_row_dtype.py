"""16-bit row storage (``tables[].dtype``): tiering stays lossless and the tiers below hold the stored values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hier_ps as hp
from hier_ps.config import RowDtype
from tests.test_trainer import all_rows, tiny_config


def _run(tiny_data: dict, run_dir: Path, dtype: str, cache: str, pass_examples: int) -> dict:
    cfg = tiny_config(tiny_data, run_dir, **{"store.host_cache_bytes": cache, "train.pass_examples": pass_examples})
    for t in cfg.tables:
        t.dtype = RowDtype(dtype)
    with hp.Trainer(cfg) as tr:
        s = tr.fit()
        dims = {t: spec.dim for t, spec in tr.specs.items()}
        return {"summary": s, "rows": all_rows(tr), "dims": dims}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_16bit_rows_tier_losslessly(tiny_data: dict, tmp_path: Path, dtype: str) -> None:
    """One pass in RAM == many small passes through a tiny host cache (SSD round trips), bit for bit."""
    mem = _run(tiny_data, tmp_path / "mem", dtype, "256MiB", 1_000_000)
    tiers = _run(tiny_data, tmp_path / "tiers", dtype, "2KiB", 1024)
    ref32 = _run(tiny_data, tmp_path / "fp32", "fp32", "256MiB", 1_000_000)
    assert mem["summary"]["passes"] == 1 and tiers["summary"]["passes"] > 10
    np_dtype = {"fp16": np.float16, "bf16": None}[dtype]
    for t, (keys, rows) in mem["rows"].items():
        keys_t, rows_t = tiers["rows"][t]
        assert np.array_equal(keys, keys_t)
        assert np.array_equal(rows_t, rows)  # exact: 16-bit values survive float32 tiers unchanged
        emb = rows[:, : mem["dims"][t]]
        if np_dtype is not None:
            assert np.array_equal(emb.astype(np_dtype).astype(np.float32), emb)
        else:  # bfloat16 values: the low 16 bits of their float32 are zero
            assert not (emb.view(np.uint32) & 0xFFFF).any()
    # The dtype is really used: 16-bit rows differ from float32 training somewhere.
    assert any(not np.array_equal(mem["rows"][t][1], ref32["rows"][t][1]) for t in mem["rows"])
