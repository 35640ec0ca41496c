"""The stages around the train step, one by one, on e2e_bench's data and config (CPU): reading, planning, and a
whole run's per-pass pull, push, load and first-pass wait (metrics.jsonl).

Run it on two checkouts to compare them side by side: it uses the ``hier_ps`` that Python imports, so
``PYTHONPATH=<other checkout> python benchmarks/stage_bench.py`` measures that code with the same data and config.

Usage: ``python benchmarks/stage_bench.py [--rows 400000] [--passes 4] [--repeats 3]``; prints medians in seconds
and a JSON line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import e2e_bench  # the same config and data as e2e_bench

import hier_ps
from hier_ps.data import ParquetReader, generate_synthetic
from hier_ps.plan import plan_pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    pass_rows = args.rows // args.passes
    res: dict[str, float | str] = {"hier_ps": str(Path(hier_ps.__file__).parent)}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        info = generate_synthetic(data, preset="demo", seed=0, train_rows=args.rows, eval_rows=1000)
        cfg = e2e_bench._config(data, Path(tmp) / "r", pass_rows, 4096, 16, info)
        slots = {s.name: s.column for s in cfg.data.sparse}
        tables = {s.name: s.table for s in cfg.data.sparse}
        reader = ParquetReader(cfg.data.train, label=cfg.data.labels, dense=cfg.data.dense, slots=slots)
        reads = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            chunks = list(reader.iter_chunks(pass_rows))
            reads.append(time.perf_counter() - t0)
        res["read_epoch_s"] = statistics.median(reads)

        def plans(**kw: object) -> float:
            t0 = time.perf_counter()
            for c in chunks:
                plan_pass(c, tables, 4096, 0, **kw)
            return time.perf_counter() - t0

        res["plan_all_passes_s"] = statistics.median(plans() for _ in range(args.repeats))
        if "pool" in inspect.signature(plan_pass).parameters:
            with ThreadPoolExecutor(2) as pool:
                res["plan_all_passes_pool2_s"] = statistics.median(plans(pool=pool) for _ in range(args.repeats))
        runs = []
        for r in range(args.repeats):
            run = e2e_bench._config(data, Path(tmp) / f"run{r}", pass_rows, 4096, 16, info)
            e2e_bench.run_hier_ps(run)
            recs = [json.loads(x) for x in (Path(run.run.dir) / "metrics.jsonl").read_text().splitlines()]
            sec = [x["seconds"] for x in recs]
            runs.append(
                {
                    "first_pass_wait_s": recs[0]["exposed_s"],
                    "pull_per_pass_s": statistics.median(s["pull"] for s in sec[1:]),
                    "push_per_pass_s": statistics.median(s["push"] for s in sec[1:]),
                    "load_all_passes_s": sum(s["load"] for s in sec),
                    "load_and_train_all_passes_s": sum(s["load"] + s["train"] for s in sec),
                }
            )
        for k in runs[0]:
            res[k] = statistics.median(x[k] for x in runs)
    print(f"hier_ps from {res['hier_ps']}; {args.rows:,} examples in {args.passes} passes, medians of {args.repeats}")
    for k, v in res.items():
        if k != "hier_ps":
            print(f"  {k:<26}{v:8.3f} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
