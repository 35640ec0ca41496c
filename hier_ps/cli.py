"""The ``hier-ps`` command line: train, eval, export, report, gen-data, convert criteo.

``main(argv)`` is the entry point (testable in-process). User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from hier_ps.config import load_config
from hier_ps.errors import HierPSError

__all__ = ["main"]

log = logging.getLogger("hier_ps")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hier-ps", description="Hierarchical (SSD -> RAM -> HBM) embedding trainer.")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only, no progress bar")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="config overrides a.b=c (beat the file)")

    e = sub.add_parser("eval", help="evaluate a finished run on data.eval")
    e.add_argument("config", help="a run directory (uses its config.yaml) or a YAML config")
    e.add_argument("overrides", nargs="*", help="config overrides a.b=c")

    x = sub.add_parser("export", help="export a run's newest checkpoint for serving (full, or a delta since an export)")
    x.add_argument("run_dir", help="the run directory")
    x.add_argument("out", help="export directory to create")
    x.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32", help="embedding type (default fp32)")
    x.add_argument("--since", default=None, metavar="EXPORT", help="write a delta against this earlier export")

    r = sub.add_parser("report", help="draw PNG plots of a run's metrics (quality, stage times, tier traffic)")
    r.add_argument("run_dir", help="the run directory")
    r.add_argument("--out", default=None, help="output directory (default RUN_DIR/report)")

    g = sub.add_parser("gen-data", help="write a synthetic Criteo-like Parquet data set with a known oracle AUC")
    g.add_argument("out_dir")
    g.add_argument("--preset", default="demo", help="demo (2M + 200k rows, 26 slots) or tiny")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train-rows", type=int, default=None)
    g.add_argument("--eval-rows", type=int, default=None)

    c = sub.add_parser("convert", help="convert a public data set format to Parquet")
    csub = c.add_subparsers(dest="format", required=True)
    cr = csub.add_parser("criteo", help="Criteo TSV (label, I1-I13, C1-C26 as hex), optionally .gz")
    cr.add_argument("input")
    cr.add_argument("out_dir")
    cr.add_argument("--rows-per-file", type=int, default=1_000_000)
    return p


def _train(args: argparse.Namespace) -> int:
    from hier_ps.trainer import Trainer

    cfg = load_config(args.config, overrides=args.overrides)
    if args.quiet:
        cfg.train.progress = False
    with Trainer(cfg) as trainer:
        summary = trainer.fit()
    if int(os.environ.get("RANK", "0")) == 0:  # one summary for a run of several ranks
        _print_summary(summary, cfg.run.dir)
    return 0


def _print_summary(s: dict, run_dir: str) -> None:
    lines = [f"trained {s['examples']:,} examples in {s['passes']} passes, {s['examples_per_s']:,.0f} examples/s"]
    if s.get("train_loss") is not None:
        lines.append(f"train loss (last pass) {s['train_loss']:.5f}")
    if s.get("eval_auc") is not None:
        oracle = f"  (oracle AUC {s['oracle_auc']:.4f})" if s.get("oracle_auc") is not None else ""
        lines.append(f"eval AUC {s['eval_auc']:.4f}{oracle}  logloss {s['eval_logloss']:.5f}")
    lines.append(f"run directory: {run_dir} (config.yaml, metrics.jsonl, summary.json, dense.pt, checkpoints/, store/)")
    print("\n".join(lines))


def _eval(args: argparse.Namespace) -> int:
    from hier_ps.trainer import Trainer

    path = Path(args.config)
    cfg_path = path / "config.yaml" if path.is_dir() else path
    cfg = load_config(cfg_path, overrides=[*args.overrides, "run.overwrite=false"])
    with Trainer(cfg) as trainer:
        trainer.load_dense(Path(cfg.run.dir) / "dense.pt")
        ev = trainer.evaluate()
    print(json.dumps({"eval_auc": ev["auc"], "eval_logloss": ev["logloss"], "examples": ev["examples"]}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from hier_ps.export import export_run

    m = export_run(args.run_dir, args.out, dtype=args.dtype, since=args.since)
    rows = sum(t["keys"]["rows"] for t in m["tables"].values())
    size = sum(t["keys"]["bytes"] + t["emb"]["bytes"] for t in m["tables"].values())
    what = f"{m['kind']} export of pass {m['pass_index']}: {rows:,} rows ({size / 2**20:.1f} MiB)"
    if m["kind"] == "delta":
        what += f", {sum(t['deleted']['rows'] for t in m['tables'].values()):,} deleted"
    print(f"wrote {args.out}: {what}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hier_ps.report import write_report

    for f in write_report(args.run_dir, args.out):
        print(f)
    return 0


def _gen_data(args: argparse.Namespace) -> int:
    from hier_ps.data import generate_synthetic

    info = generate_synthetic(
        args.out_dir, preset=args.preset, seed=args.seed, train_rows=args.train_rows, eval_rows=args.eval_rows
    )
    print(
        f"wrote {info['train_rows']:,} train + {info['eval_rows']:,} eval rows to {args.out_dir} "
        f"(oracle AUC {info['oracle_auc']:.4f})"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from hier_ps.data import convert_criteo

    info = convert_criteo(args.input, args.out_dir, rows_per_file=args.rows_per_file)
    print(f"wrote {info['rows']:,} rows in {len(info['files'])} Parquet files to {args.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
            datefmt="%H:%M:%S",
            stream=sys.stderr,
        )
    commands = {
        "train": _train,
        "eval": _eval,
        "export": _export,
        "report": _report,
        "gen-data": _gen_data,
        "convert": _convert,
    }
    try:
        return commands[args.command](args)
    except HierPSError as e:
        print(f"hier-ps: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hier-ps: interrupted", file=sys.stderr)
        return 130
