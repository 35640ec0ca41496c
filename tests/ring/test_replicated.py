"""Data parallel = single process (DESIGN.md contract 4): real ranks under torchrun, gloo on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hier_ps as hp
from hier_ps.config import config_to_dict
from hier_ps.hbm.working_set import table_specs
from hier_ps.ssd import SSDStore
from tests.test_lifecycle import with_lifecycle
from tests.test_trainer import tiny_config

REPO = Path(__file__).resolve().parents[2]


def make_cfg(tiny_data: dict, run: Path, opt: str, batch: int, **extra: object) -> hp.Config:
    over = {
        "sparse_optimizer.name": opt,
        "train.batch_size": batch,
        "train.pass_examples": 2304,
        "store.host_cache_bytes": "16KiB",
        "checkpoint.every_passes": 3,
        **extra,
    }
    return tiny_config(tiny_data, run, **over)


def torchrun(nproc: int, cfg: hp.Config, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    cfg_file = tmp / f"cfg-{nproc}.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "hier_ps", "-q", "train", str(cfg_file)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp)


def store_rows(cfg: hp.Config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every table's keys and rows (embedding + optimizer state) over all rank stores of a finished run."""
    specs = table_specs(cfg)
    widths = {n: s.layout.width for n, s in specs.items()}
    dirs = sorted(cfg.store_dir.parent.glob(f"{cfg.store_dir.name}-w*/rank-*")) or [cfg.store_dir]
    out: dict[str, list] = {n: [] for n in specs}
    for d in dirs:
        with SSDStore(d, widths, readonly=True) as st:
            for n, s in specs.items():
                k = st.keys(n)
                rows, _ = st.read(n, k)
                out[n].append((k, np.ascontiguousarray(rows[:, : s.dim + s.layout.state])))
    result = {}
    for n, parts in out.items():
        k = np.concatenate([p[0] for p in parts])
        r = np.concatenate([p[1] for p in parts])
        order = np.argsort(k)
        assert len(np.unique(k)) == len(k), f"{n}: a key is stored on two ranks"
        result[n] = (k[order], r[order])
    return result


def dense(run: Path) -> dict[str, np.ndarray]:
    state = torch.load(run / "dense.pt", weights_only=True)["model"]
    return {k: v.numpy() for k, v in state.items()}


def assert_equivalent(a: hp.Config, b: hp.Config, atol: float | None = None) -> None:
    if atol is None:
        # Ranks sum dense gradients in another order than one process, and sparse Adam's per-element normalization
        # magnifies such last-bit differences on rows with near-zero gradients: over run seeds 1-4 (2 ranks,
        # replicated, adam) the largest difference was 3e-6 to 2.3e-5 with autograd's pairwise-dots backward, 8e-6 to
        # 2.4e-5 with the one-bmm backward (hier_ps.models.layers). A wrong update moves a row by about lr = 0.05.
        atol = 1e-4 if a.sparse_optimizer.name.value == "adam" else 1e-5
    ra, rb = store_rows(a), store_rows(b)
    for n, (keys, rows) in ra.items():
        assert np.array_equal(keys, rb[n][0]), n
        np.testing.assert_allclose(rb[n][1], rows, rtol=0, atol=atol, err_msg=n)
    da, db = dense(Path(a.run.dir)), dense(Path(b.run.dir))
    for k, v in da.items():
        np.testing.assert_allclose(db[k], v, rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("mode", ["replicated", "row_wise"])
@pytest.mark.parametrize("opt", ["rowwise_adagrad", "adam"])
@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_equal_one_process_with_the_global_batch(
    tiny_data: dict, tmp_path: Path, opt: str, nproc: int, mode: str
) -> None:
    ref = make_cfg(tiny_data, tmp_path / "one", opt, 128 * nproc)
    with hp.Trainer(ref) as tr:
        one = tr.fit()
    cfg = make_cfg(tiny_data, tmp_path / "many", opt, 128, **{"train.embedding_sharding": mode})
    p = torchrun(nproc, cfg, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)
    summary = json.loads((tmp_path / "many" / "summary.json").read_text())
    assert summary["ranks"] == nproc and summary["passes"] == one["passes"]
    assert summary["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)
    assert len(list((tmp_path / "many" / f"store-w{nproc}").glob("rank-*"))) == nproc
    lines = (tmp_path / "many" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == one["passes"]  # rank 0 alone writes metrics
    ref_recs = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for line, ref_rec in zip(lines, ref_recs, strict=True):
        rec = json.loads(line)
        # Each rank read only its slice of every global batch into its plan; the slices make the pass.
        share = rec["rank_share"]
        assert len(share["examples"]) == nproc and sum(share["examples"]) == rec["examples"]
        assert max(share["examples"]) <= -(-rec["examples"] // nproc) + 128
        assert max(share["key_occurrences"]) < 0.8 * sum(share["key_occurrences"])
        assert rec["working_set_keys"] == ref_rec["working_set_keys"]
        assert rec["comm_bytes"]["key_all_to_all"] > 0  # keys went to their owners
        assert ("working_set_all_gather" in rec["comm_bytes"]) == (mode == "replicated")


@pytest.mark.parametrize("mode", ["replicated", "row_wise"])
def test_ranks_with_admission_and_eviction(tiny_data: dict, tmp_path: Path, mode: str) -> None:
    life = {"admission": {"min_count": 2, "sketch_bytes": "16KiB"}, "eviction": {"ttl_passes": 2}}
    ref = with_lifecycle(make_cfg(tiny_data, tmp_path / "one", "rowwise_adagrad", 256), **life)
    with hp.Trainer(ref) as tr:
        tr.fit()
    over = {"train.embedding_sharding": mode}
    cfg = with_lifecycle(make_cfg(tiny_data, tmp_path / "many", "rowwise_adagrad", 128, **over), **life)
    p = torchrun(2, cfg, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)
    recs = [json.loads(x) for x in (tmp_path / "many" / "metrics.jsonl").read_text().splitlines()]
    ref_recs = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for rec, ref_rec in zip(recs, ref_recs, strict=True):
        assert rec["admission"] == ref_rec["admission"]  # the same keys admitted and turned away as one process
        assert rec["comm_bytes"]["admission_all_gather"] > 0 and max(rec["rank_share"]["examples"]) < rec["examples"]


def test_stop_and_resume_on_the_same_ranks(tiny_data: dict, tmp_path: Path) -> None:
    ref = make_cfg(tiny_data, tmp_path / "one", "adam", 256)
    with hp.Trainer(ref) as tr:
        tr.fit()
    cfg = make_cfg(tiny_data, tmp_path / "many", "adam", 128, **{"train.max_passes": 4})
    assert torchrun(2, cfg, tmp_path).returncode == 0
    cfg = make_cfg(tiny_data, tmp_path / "many", "adam", 128)
    p = torchrun(2, cfg, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)


@pytest.mark.parametrize("then", [3, 1])
def test_checkpoint_of_two_ranks_resumes_on_another_number(tiny_data: dict, tmp_path: Path, then: int) -> None:
    """2 ranks x 192 (replicated), then `then` ranks (row-wise) with the same global batch of 384 == one process x
    384 throughout."""
    ref = make_cfg(tiny_data, tmp_path / "one", "rowwise_adagrad", 384)
    with hp.Trainer(ref) as tr:
        tr.fit()
    run = tmp_path / "run"
    p = torchrun(2, make_cfg(tiny_data, run, "rowwise_adagrad", 192, **{"train.max_passes": 4}), tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = make_cfg(tiny_data, run, "rowwise_adagrad", 384 // then, **{"train.embedding_sharding": "row_wise"})
    if then == 1:
        with hp.Trainer(cfg) as tr:
            assert tr.pass_index == 4
            tr.fit()
    else:
        p = torchrun(then, cfg, tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_equivalent(ref, cfg)
    # The 2-rank stores are gone once no kept checkpoint needs them (keep: 2, checkpoints every 3 passes).
    assert not (tmp_path / "run" / "store-w2").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_give_the_same_result(tiny_data: dict, tmp_path: Path) -> None:
    """Two torchrun invocations, --nnodes=2 with a c10d rendezvous, one rank each: the multi-node path."""
    ref = make_cfg(tiny_data, tmp_path / "one", "rowwise_adagrad", 256)
    with hp.Trainer(ref) as tr:
        tr.fit()
    cfg = make_cfg(tiny_data, tmp_path / "nodes", "rowwise_adagrad", 128)
    cfg_file = tmp_path / "nodes.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}"]
        cmd += ["--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=t"]
        cmd += ["-m", "hier_ps", "-q", "train", str(cfg_file)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    assert_equivalent(ref, cfg)


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(tiny_data: dict, tmp_path: Path) -> None:
    """Ranks started by hand (no torchrun agent to stop the survivors): rank 1 is SIGKILLed mid-run."""
    cfg = make_cfg(tiny_data, tmp_path / "run", "adam", 128, **{"train.epochs": 200, "train.pass_examples": 512})
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1"}
    base.update(MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = []
    for rank in range(2):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, "-m", "hier_ps", "-q", "train", str(cfg_file)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    assert time.monotonic() - t0 < 60
    procs[1].wait()
    assert procs[0].returncode == 2
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("hier-ps: error: rank 0 of 2: lost contact with another rank"), err.decode()[-2000:]


def test_ranks_on_different_row_kernels_stop_with_a_clear_error(tiny_data: dict, tmp_path: Path) -> None:
    """Rank 1 on the torch twins, rank 0 on the C kernels: replicas would drift apart by rounding, so both stop."""
    from hier_ps.hbm import cpu_kernels

    if cpu_kernels.optional() is None:
        pytest.skip("no C kernels here: every rank runs the twins")
    cfg = make_cfg(tiny_data, tmp_path / "run", "rowwise_adagrad", 128)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1"}
    base.update(MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    base.pop("HIER_PS_KERNELS", None)
    procs = []
    for rank in range(2):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        if rank == 1:
            env["HIER_PS_KERNELS"] = "torch"
        cmd = [sys.executable, "-m", "hier_ps", "-q", "train", str(cfg_file)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2, (p.returncode, err.decode()[-4000:])
        last = err.decode().strip().splitlines()[-1]
        assert "the ranks run different row kernels (rank 0: cpu, rank 1: torch twins)" in last, err.decode()[-2000:]


def test_row_wise_with_16_bit_rows_is_a_clear_config_error(tiny_data: dict, tmp_path: Path) -> None:
    first = next(iter(tiny_data["info"]["sparse"]))
    over = {"train.embedding_sharding": "row_wise", f"tables.{first}.dtype": "fp16"}
    cfg = make_cfg(tiny_data, tmp_path / "run", "rowwise_adagrad", 256, **over)
    p = torchrun(2, cfg, tmp_path, timeout=120)
    assert p.returncode != 0
    assert f"tables.{first}.dtype: fp16" in p.stderr and "row_wise" in p.stderr, p.stderr[-2000:]
    assert "hier_ps/trainer.py" not in p.stderr, p.stderr[-2000:]  # one line, no traceback of ours
