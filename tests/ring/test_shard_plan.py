"""Sharded planning: each rank plans only its slice of every global batch, and what it gets from the collectives is
exactly what one process's plan of the whole pass says (real gloo ranks, spawned on a free port)."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from hier_ps.admission import Admission
from hier_ps.config import AdmissionConfig
from hier_ps.data import ExampleChunk
from hier_ps.plan import plan_pass
from hier_ps.ring.group import owner
from hier_ps.ring.shard_plan import rank_examples

SLOT_TABLES = {"a": "T", "b": "T", "c": "U"}  # a and b share table T
TABLE_SLOTS = {"T": ["a", "b"], "U": ["c"]}
BATCH = 7  # per rank


def make_chunk(n: int, seed: int) -> ExampleChunk:
    rng = np.random.default_rng(seed)
    sparse = {}
    for slot, vocab in (("a", 300), ("b", 40), ("c", 9)):
        lengths = rng.integers(0, 4, n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        sparse[slot] = (
            offsets,
            rng.integers(0, vocab, offsets[-1]).astype(np.uint64) * np.uint64(7919) + np.uint64(2**63),
        )
    return ExampleChunk(rng.random((n, 1), dtype=np.float32), np.zeros((n, 0), np.float32), sparse)


def admission() -> Admission:
    return Admission({"T": AdmissionConfig(min_count=3, sketch_bytes=2048)})  # small: collisions happen


def _rank_main(rank: int, world: int, port: int, out: str, n: int, row_wise: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    from hier_ps.ring.group import Ring
    from hier_ps.ring.shard_plan import plan_rank_pass

    ring = Ring.from_env("cpu", timeout_s=60)
    assert ring is not None
    chunk, adm = make_chunk(n, 0), admission()
    result = []
    for index in range(2):  # two passes: the sketch carries over
        idx, starts, glens = rank_examples(n, BATCH * world, world, rank)
        plan = plan_rank_pass(
            chunk.take(idx), n, starts, glens, SLOT_TABLES, index, ring, row_wise=row_wise, admit=adm.admit,
            admission_tables={"T"},
        )  # fmt: skip
        batches = [plan.batch(i) for i in range(plan.num_batches)]
        ex = [plan.exchange(i) for i in range(plan.num_batches)] if row_wise else None
        result.append((plan.keys, plan.counts, plan.rejected, plan.share, plan.working_set, batches, ex))
    result.append(adm.state_dict()["T"].numpy())
    Path(out, f"rank-{rank}.pkl").write_bytes(pickle.dumps(result))
    ring.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp: Path, world: int, n: int, row_wise: bool) -> list:
    mp.start_processes(
        _rank_main, args=(world, free_port(), str(tmp), n, row_wise), nprocs=world, join=True, start_method="spawn"
    )
    return [pickle.loads((tmp / f"rank-{r}.pkl").read_bytes()) for r in range(world)]


def test_rank_examples_are_contract_4_slices() -> None:
    idx, starts, glens = rank_examples(10, 4, 2, 1)
    assert idx.tolist() == [2, 3, 6, 7, 9] and starts.tolist() == [0, 2, 4, 5] and glens.tolist() == [4, 4, 2]
    for n, world in ((0, 2), (1, 3), (50, 3), (63, 4)):
        parts = [rank_examples(n, 5 * world, world, r)[0] for r in range(world)]
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))  # every example once


@pytest.mark.parametrize("row_wise", [False, True])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_plans_agree_with_one_process(tmp_path: Path, world: int, row_wise: bool) -> None:
    n = 200  # the last global batch is short
    ranks = run_ranks(tmp_path, world, n, row_wise)
    chunk, adm = make_chunk(n, 0), admission()
    for index in range(2):
        ref = plan_pass(chunk, SLOT_TABLES, BATCH * world, index, admit=adm.admit, admission_tables={"T"})
        per_rank = [r[index] for r in ranks]
        if index == 0:  # admission turns keys and occurrences away (the null row is used)
            assert min(ref.rejected["T"]) > 0
        # Each rank planned only its share: its examples and key occurrences, and all shares make the pass.
        share = per_rank[0][3]
        assert sum(share["examples"]) == n and max(share["examples"]) <= -(-n // world) + BATCH
        total_occ = sum(len(chunk.sparse[s][1]) for s in SLOT_TABLES)
        assert sum(share["key_occurrences"]) == total_occ and max(share["key_occurrences"]) < total_occ
        for keys, counts, rejected, _, ws, _, _ in per_rank:
            assert rejected == ref.rejected
            assert ws == ref.working_set_sizes()
            if not row_wise:
                for t in TABLE_SLOTS:
                    assert np.array_equal(keys[t], ref.keys[t]) and np.array_equal(counts[t], ref.counts[t])
        if row_wise:  # the owners' parts make the working set, each key with its global count
            for t in TABLE_SLOTS:
                k = np.concatenate([p[0][t] for p in per_rank])
                c = np.concatenate([p[1][t] for p in per_rank])
                order = np.argsort(k)
                assert np.array_equal(k[order], ref.keys[t]) and np.array_equal(c[order], ref.counts[t])
                for r, p in enumerate(per_rank):
                    assert (owner(p[0][t], world) == r).all()
        for i in range(ref.num_batches):
            rb = ref.batch(i)
            m = len(rb)
            for r, p in enumerate(per_rank):
                b = p[5][i]
                s = rb.slice(r * m // world, (r + 1) * m // world)  # what this rank trained before: the slice
                assert np.array_equal(b.labels, s.labels)
                for t, slots in TABLE_SLOTS.items():
                    occ_ref = np.concatenate([s.slots[x][1] for x in slots])  # rows of the whole working set
                    inv = b.tables[t][1]
                    if not row_wise:
                        assert np.array_equal(b.tables[t][0], rb.tables[t][0])  # the global batch's unique rows
                        assert np.array_equal(b.tables[t][0][inv], occ_ref)
                        continue
                    # Row-wise: the rank's need is its slice's unique rows in key order (null row last), each
                    # owner serves it exactly the rows it owns of that list, in that order.
                    null = len(ref.keys[t])
                    need_ref = np.unique(occ_ref)
                    need_keys = ref.keys[t][need_ref[need_ref != null]]
                    ex = p[6][i][t]
                    want_owner = np.r_[owner(need_keys, world), [-1] * int((need_ref == null).any())]
                    assert np.array_equal(ex.need_owner, want_owner)
                    assert np.array_equal(need_ref[inv], occ_ref)  # each occurrence finds its row in the need
                    for o, q in enumerate(per_rank):
                        served = q[0][t][q[6][i][t].serve[r]]
                        assert np.array_equal(served, need_keys[owner(need_keys, world) == o])
    for r in ranks:  # every rank's sketch is the one process's
        assert np.array_equal(r[-1], adm.state_dict()["T"].numpy())
