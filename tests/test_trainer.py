"""The pass trainer end to end on CPU: lossless tiering, exact update semantics, determinism, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hier_ps as hp
from hier_ps.hbm.rows import init_embeddings

OPTIMIZERS = ["sgd", "adagrad", "rowwise_adagrad", "adam", "ftrl"]


def tiny_config(tiny_data: dict, run_dir: Path, **over: object) -> dict:
    info, d = tiny_data["info"], tiny_data["dir"]
    slots = [{"name": c, "pooling": "mean" if kind == "multi" else "sum"} for c, kind in info["sparse"].items()]
    cfg = {
        "run": {"dir": str(run_dir), "seed": 1},
        "data": {
            "train": str(d / "train"),
            "eval": str(d / "eval"),
            "label": "label",
            "dense": info["dense"],
            "sparse": slots,
        },
        "tables": [{"name": s["name"], "dim": 4} for s in slots],
        "sparse_optimizer": {"name": "rowwise_adagrad", "lr": 0.05},
        "model": {"name": "dlrm", "args": {"bottom": [8, 4], "top": [8]}},
        "store": {"host_cache_bytes": "64MiB"},
        "train": {"device": "cpu", "batch_size": 512, "pass_examples": 1_000_000, "progress": False},
        "eval": {"every_passes": 0},
    }
    return hp.load_config(cfg, overrides=[f"{k}={v}" for k, v in over.items()])


def all_rows(trainer: hp.Trainer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for t in trainer.specs:
        keys = trainer.store.keys(t)
        out[t] = (keys, trainer.lookup(t, keys))
    return out


def dense_state(trainer: hp.Trainer) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_lossless_tiering(tiny_data: dict, tmp_path: Path, opt: str) -> None:
    """Tiny host cache + many small passes (SSD round trips) == everything in memory in one pass."""
    results = []
    policy = "lfu" if opt == "adam" else "lru"  # the eviction policy changes traffic, never results
    for name, cache, pass_examples in [("mem", "256MiB", 1_000_000), ("tiers", "2KiB", 1024)]:
        cfg = tiny_config(
            tiny_data,
            tmp_path / name,
            **{
                "sparse_optimizer.name": opt,
                "store.host_cache_bytes": cache,
                "train.pass_examples": pass_examples,
                "store.host_cache_policy": policy,
            },
        )
        with hp.Trainer(cfg) as tr:
            s = tr.fit()
            results.append((s, all_rows(tr), dense_state(tr)))
    (s_mem, rows_mem, dense_mem), (s_tier, rows_tier, dense_tier) = results
    assert s_mem["passes"] == 1 and s_tier["passes"] > 10
    assert s_mem["examples"] == s_tier["examples"] == tiny_data["info"]["train_rows"]
    for t, (keys, rows) in rows_mem.items():
        keys_t, rows_t = rows_tier[t]
        assert np.array_equal(keys, keys_t)
        np.testing.assert_allclose(rows_t, rows, rtol=0, atol=1e-6)
    for k in dense_mem:
        np.testing.assert_allclose(dense_tier[k], dense_mem[k], rtol=0, atol=1e-6)


def test_repeat_runs_are_bit_identical(tiny_data: dict, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        cfg = tiny_config(
            tiny_data,
            tmp_path / f"r{i}",
            **{
                "sparse_optimizer.name": "adam",
                "train.pass_examples": 4096,
                "train.shuffle": True,
                "store.host_cache_bytes": "16KiB",
            },
        )
        with hp.Trainer(cfg) as tr:
            tr.fit()
            rows = all_rows(tr)
            outs.append(
                ({t: r.tobytes() for t, (_, r) in rows.items()}, {k: v.tobytes() for k, v in dense_state(tr).items()})
            )
    assert outs[0] == outs[1]


def test_lookups_assembled_in_c_train_as_batch_lookups(
    tiny_data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer assembles each batch's lookup in C from the pass plan (PassLookups); without it (ranks, no C
    library) it builds BatchLookups from each batch's plan. Both train the same model, bit for bit."""
    from hier_ps.hbm import batched

    build = batched.PassLookups.build
    outs, used = [], []
    for c_lookups in (True, False):

        def built(*a: object, _on: bool = c_lookups, **k: object) -> batched.PassLookups | None:
            pre = build(*a, **k) if _on else None
            used.append(pre is not None)
            return pre

        monkeypatch.setattr(batched.PassLookups, "build", staticmethod(built))
        cfg = tiny_config(tiny_data, tmp_path / f"c{c_lookups}", **{"train.pass_examples": 4096})
        with hp.Trainer(cfg) as tr:
            tr.fit()
            rows = all_rows(tr)
            outs.append(
                ({t: r.tobytes() for t, (_, r) in rows.items()}, {k: v.tobytes() for k, v in dense_state(tr).items()})
            )
    passes = len(used) // 2
    assert passes > 1 and used == [True] * passes + [False] * passes
    assert outs[0] == outs[1]


def test_end_to_end_learns_and_reports(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_data,
        tmp_path / "run",
        **{"train.pass_examples": 8192, "eval.every_passes": 1, "store.host_cache_bytes": "32KiB", "train.epochs": 2},
    )
    with hp.Trainer(cfg) as tr:
        s = tr.fit()
        unseen = np.array([2**64 - 1, 12345678901234], np.uint64)
        spec = tr.specs["C1"]
        np.testing.assert_array_equal(tr.lookup("C1", unseen), init_embeddings(1, "C1", unseen, 4, spec.init))
    for key in ("examples", "passes", "train_loss", "eval_auc", "eval_logloss", "examples_per_s"):
        assert s[key] is not None
    assert s["examples"] == 2 * tiny_data["info"]["train_rows"]
    assert s["oracle_auc"] == pytest.approx(tiny_data["info"]["oracle_auc"])
    assert s["eval_auc"] > 0.6, s
    run = tmp_path / "run"
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == s["passes"] and [r["pass"] for r in recs] == list(range(s["passes"]))
    assert {"read", "plan", "pull", "load", "train", "push", "eval"} <= set(recs[0]["seconds"])
    assert all(r["examples"] > 0 and r["eval_auc"] > 0 for r in recs)
    assert sum(recs[0]["new_keys"].values()) == sum(recs[0]["working_set_keys"].values())  # first pass: all new
    assert sum(recs[-1]["new_keys"].values()) < sum(recs[-1]["working_set_keys"].values())
    assert recs[-1]["host_cache"]["misses"] > 0  # the tiny cache sends traffic to the SSD tier
    assert (run / "config.yaml").is_file() and (run / "dense.pt").is_file() and (run / "summary.json").is_file()
    again = hp.load_config(run / "config.yaml")
    assert again.train.pass_examples == 8192


class TinyLinear(torch.nn.Module):
    """logit = b + sum_s <pooled_s, u_s> + dense @ v: simple enough to differentiate by hand."""

    def __init__(self, dims: dict[str, int], dense_dim: int) -> None:
        super().__init__()
        self.names = list(dims)
        self.u = torch.nn.ParameterDict({s: torch.nn.Parameter(torch.linspace(0.5, 1.5, d)) for s, d in dims.items()})
        self.v = torch.nn.Parameter(torch.linspace(-0.3, 0.3, dense_dim))
        self.b = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, dense: torch.Tensor, sparse: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.b + dense @ self.v
        for s in self.names:
            out = out + sparse[s] @ self.u[s]
        return out


def _write_small(path: Path) -> dict:
    a = [[1], [2], [1], [3], [2], [2], [5], [1]]
    b = [[1, 4], [], [2, 2, 1], [4], [5], [1, 6], [], [3]]  # shares table T with slot a, mean pooled
    dense = [0.5, -1.0, 2.0, 0.0, 1.0, -0.5, 0.25, 1.5]
    labels = [1, 0, 1, 0, 0, 1, 1, 0]
    path.mkdir()
    pq.write_table(
        pa.table(
            {
                "y": pa.array(labels, pa.float32()),
                "x": pa.array(dense, pa.float32()),
                "a": pa.array([v[0] for v in a], pa.int64()),
                "b": pa.array(b, pa.list_(pa.int64())),
            }
        ),
        path / "part-0.parquet",
    )
    return {"a": a, "b": b, "dense": np.array(dense), "labels": np.array(labels, float)}


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_updates_match_hand_computation(tmp_path: Path, opt: str) -> None:
    """Sum of occurrence gradients across slots sharing a table, mean pooling, one update per row per batch."""
    d = _write_small(tmp_path / "data")
    dim, lr, lr_dense, bs = 3, 0.1, 0.05, 4
    cfg = hp.load_config(
        {
            "run": {"dir": str(tmp_path / "run"), "seed": 7},
            "data": {
                "train": str(tmp_path / "data"),
                "label": "y",
                "dense": ["x"],
                "sparse": [{"name": "a", "table": "T"}, {"name": "b", "table": "T", "pooling": "mean"}],
            },
            "tables": [{"name": "T", "dim": dim, "init": {"name": "uniform", "scale": 0.5}}],
            "sparse_optimizer": {"name": opt, "lr": lr, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8},
            "dense_optimizer": {"name": "sgd", "lr": lr_dense},
            "store": {"host_cache_bytes": 0},
            "train": {"device": "cpu", "batch_size": bs, "pass_examples": 4, "progress": False},
        }
    )
    model = TinyLinear({"a": dim, "b": dim}, 1)
    u = {s: p.detach().numpy().astype(np.float64).copy() for s, p in model.u.items()}
    v, b0 = model.v.detach().numpy().astype(np.float64).copy(), float(model.b.detach())
    keys = np.arange(1, 7, dtype=np.uint64)
    w = {
        int(k): r.astype(np.float64)
        for k, r in zip(keys, init_embeddings(7, "T", keys, dim, cfg.tables[0].init), strict=True)
    }
    m = {k: np.zeros(dim) for k in w}
    vv = {k: np.zeros(dim) for k in w}
    t = dict.fromkeys(w, 0)
    for start in range(0, 8, bs):
        rows = range(start, start + bs)
        pa_ = {i: sum(w[k] for k in d["a"][i]) for i in rows}
        pb_ = {i: (sum(w[k] for k in d["b"][i]) / len(d["b"][i])) if d["b"][i] else np.zeros(dim) for i in rows}
        logit = {i: b0 + d["dense"][i] * v[0] + pa_[i] @ u["a"] + pb_[i] @ u["b"] for i in rows}
        r = {i: (1 / (1 + np.exp(-logit[i])) - d["labels"][i]) / bs for i in rows}  # dL/dlogit, mean loss
        g: dict[int, np.ndarray] = {}
        for i in rows:
            for k in d["a"][i]:
                g[k] = g.get(k, 0) + r[i] * u["a"]
            for k in d["b"][i]:
                g[k] = g.get(k, 0) + r[i] * u["b"] / len(d["b"][i])
        # dense SGD step (uses the pre-update embeddings)
        u = {
            "a": u["a"] - lr_dense * sum(r[i] * pa_[i] for i in rows),
            "b": u["b"] - lr_dense * sum(r[i] * pb_[i] for i in rows),
        }
        v = v - lr_dense * sum(r[i] * d["dense"][i] for i in rows)
        b0 = b0 - lr_dense * sum(r.values())
        for k, gk in g.items():
            if opt == "sgd":
                w[k] = w[k] - lr * gk
            else:
                t[k] += 1
                m[k] = 0.9 * m[k] + 0.1 * gk
                vv[k] = 0.99 * vv[k] + 0.01 * gk * gk
                w[k] = w[k] - lr * (m[k] / (1 - 0.9 ** t[k])) / (np.sqrt(vv[k] / (1 - 0.99 ** t[k])) + 1e-8)
    with hp.Trainer(cfg, model=model) as tr:
        s = tr.fit()
        got = tr.lookup("T", keys)
    assert s["passes"] == 2
    np.testing.assert_allclose(got, np.stack([w[int(k)] for k in keys]), rtol=0, atol=2e-6)
    np.testing.assert_allclose(model.u["a"].detach().numpy(), u["a"], atol=2e-6)
    np.testing.assert_allclose(float(model.b.detach()), b0, atol=2e-6)


def test_store_in_use_and_existing_model_are_refused(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "run", **{"train.max_passes": 1})
    with hp.Trainer(cfg) as tr:
        with pytest.raises(hp.StoreLockedError, match="in use"):
            hp.Trainer(cfg)
        tr.fit()
    never = tiny_config(tiny_data, tmp_path / "run", **{"train.max_passes": 1, "train.resume": "never"})
    with hp.Trainer(never) as tr, pytest.raises(hp.HierPSError, match="already holds a model"):
        tr.fit()
    with hp.Trainer(tiny_config(tiny_data, tmp_path / "run", **{"run.overwrite": True, "train.max_passes": 1})) as tr:
        assert tr.fit()["passes"] == 1


def test_bad_column_writes_nothing(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "run", **{"data.dense": "[I1, nope]"})
    with pytest.raises(hp.DataError, match="nope"):
        hp.Trainer(cfg)
    assert not (tmp_path / "run").exists()


def test_overwrite_refuses_a_store_in_use(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "run", **{"train.max_passes": 1})
    with hp.Trainer(cfg) as tr:
        tr.fit()
        tr.store.commit()
        with pytest.raises(hp.StoreLockedError):
            hp.Trainer(tiny_config(tiny_data, tmp_path / "run", **{"run.overwrite": True}))
        assert tr.store.num_rows("C1") > 0 and list((tmp_path / "run" / "store").glob("manifest.*.json"))


def test_bad_data_mid_run_leaves_store_at_last_commit(tiny_data: dict, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = sorted((tiny_data["dir"] / "train").glob("*.parquet"))
    for f in files:
        (data / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(files[-1])
    labels = t.column("label").to_numpy().copy()
    labels[5] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels)), data / files[-1].name)
    cfg = tiny_config(
        tiny_data,
        tmp_path / "run",
        **{"data.train": str(data), "train.pass_examples": 2048, "checkpoint.every_passes": 0},
    )
    with (
        pytest.raises(hp.DataError, match=f"{files[-1].name}: column 'label': NaN/inf at row 5"),
        hp.Trainer(cfg) as tr,
    ):
        tr.fit()
    from hier_ps.ssd import SSDStore

    with SSDStore(tmp_path / "run" / "store", {n: s.layout.width for n, s in tr.specs.items()}) as store:
        assert all(store.num_rows(n) == 0 for n in tr.specs)  # nothing of the failed run was committed
    skip = tiny_config(tiny_data, tmp_path / "run2", **{"data.train": str(data), "data.on_invalid": "skip"})
    with hp.Trainer(skip) as tr:
        s = tr.fit()
    assert s["invalid_examples_skipped"] == 1 and s["examples"] == tiny_data["info"]["train_rows"] - 1


def test_multi_task_and_exact_pass_cuts(tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_config(
        tiny_data,
        tmp_path / "run",
        **{
            "data.label": "[label, label]",
            "train.pass_examples": 3000,
            "train.batch_size": 1024,
            "model.name": "dcn_v2",
            "model.args": "{hidden: [8], cross_layers: 1}",
        },
    )
    with hp.Trainer(cfg) as tr:
        s = tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["examples"] for r in recs] == [3000] * 6 + [2000]
    assert len(s["eval_auc_per_task"]) == 2 and all(0 < a < 1 for a in s["eval_auc_per_task"])
    assert s["eval_auc"] == pytest.approx(np.mean(s["eval_auc_per_task"]))


def test_synthetic_data_is_made_once_and_remade_when_settings_change(tmp_path: Path) -> None:
    def cfg(seed: int) -> hp.Config:
        return hp.load_config(
            {
                "run": {"dir": str(tmp_path / f"run{seed}")},
                "data": {
                    "train": str(tmp_path / "d" / "train"),
                    "dense": ["I1"],
                    "sparse": [{"name": "C1"}],
                    "synthetic": {
                        "dir": str(tmp_path / "d"),
                        "preset": "tiny",
                        "seed": seed,
                        "train_rows": 500,
                        "eval_rows": 100,
                    },
                },
                "tables": [{"name": "C1", "dim": 2}],
                "train": {"device": "cpu", "progress": False},
            }
        )

    hp.Trainer(cfg(0)).close()
    made = (tmp_path / "d" / "oracle.json").stat().st_mtime_ns
    hp.Trainer(cfg(0)).close()
    assert (tmp_path / "d" / "oracle.json").stat().st_mtime_ns == made  # same settings: not remade
    hp.Trainer(cfg(1)).close()
    assert json.loads((tmp_path / "d" / "oracle.json").read_text())["seed"] == 1
