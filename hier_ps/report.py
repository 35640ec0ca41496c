"""``hier-ps report RUN_DIR``: PNG plots of a run from its ``metrics.jsonl``.

Three figures: ``quality.png`` (train loss and eval AUC per pass), ``stages.png`` (seconds per stage per pass, the
trainer's own stages stacked, the background ones (read + plan; pull + push where a record's ``background`` names
them) beside them, the exposed wait marked) and ``traffic.png``
(rows per tier per pass: host-cache hits and misses, rows read from and written to the SSD store, new keys).

Example:
    >>> write_report("runs/demo")  # [.../report/quality.png, .../stages.png, .../traffic.png]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hier_ps.errors import HierPSError

__all__ = ["load_metrics", "write_report"]

_MAIN_STAGES = ("wait", "pull", "load", "train", "push", "eval")


def load_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-pass records of a run; a HierPSError naming the file when it is missing, empty or corrupt."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise HierPSError(f"{path}: not found (is {str(run_dir)!r} a run directory that has trained?)")
    recs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rec["pass"], rec["seconds"]
        except (ValueError, KeyError, TypeError):
            raise HierPSError(f"{path}: line {i} is not a pass record") from None
        recs.append(rec)
    if not recs:
        raise HierPSError(f"{path}: no pass recorded yet")
    return recs


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draws the run's plots as PNG files.

    Args:
        run_dir: the run directory.
        out_dir: where to write them (default: RUN_DIR/report).

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    recs = load_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    passes = [r["pass"] for r in recs]
    files = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(passes, [r.get("train_loss") for r in recs], marker="o", label="train loss (pass mean)")
    ax.set_xlabel("pass")
    ax.set_ylabel("loss")
    ev = [(r["pass"], r["eval_auc"]) for r in recs if r.get("eval_auc") is not None]
    if ev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*ev, strict=True), marker="s", color="tab:green", label="eval AUC")
        ax2.set_ylabel("eval AUC")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(f"{Path(run_dir).name}: quality per pass")
    files.append(_save(fig, out / "quality.png", plt))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.4
    bottom = [0.0] * len(recs)
    bg = [set(r.get("background", ("read", "plan"))) for r in recs]
    for stage in _MAIN_STAGES:
        vals = [0.0 if stage in b else float(r["seconds"].get(stage, 0.0)) for r, b in zip(recs, bg, strict=True)]
        if any(vals):
            ax.bar([p - width / 2 for p in passes], vals, width, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    bg_bottom = [0.0] * len(recs)
    for stage, hatch in (("read", "//"), ("plan", ".."), ("pull", "xx"), ("push", "\\\\")):
        vals = [float(r["seconds"].get(stage, 0.0)) if stage in b else 0.0 for r, b in zip(recs, bg, strict=True)]
        if stage in ("pull", "push") and not any(vals):
            continue
        ax.bar(
            [p + width / 2 for p in passes], vals, width, bottom=bg_bottom, label=f"{stage} (background)",
            color="lightgray", edgecolor="gray", hatch=hatch,
        )  # fmt: skip
        bg_bottom = [b + v for b, v in zip(bg_bottom, vals, strict=True)]
    ax.set_xlabel("pass")
    ax.set_ylabel("seconds")
    ax.set_title("stages per pass: the trainer's (left, wait = exposed background work) and the background's (right)")
    ax.legend(fontsize="small", ncol=2)
    files.append(_save(fig, out / "stages.png", plt))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    series = {
        "host cache hits": [r.get("host_cache", {}).get("hits", 0) for r in recs],
        "host cache misses": [r.get("host_cache", {}).get("misses", 0) for r in recs],
        "SSD rows read": [r.get("ssd", {}).get("rows_read", 0) for r in recs],
        "SSD rows written": [r.get("ssd", {}).get("rows_written", 0) for r in recs],
        "new keys": [sum(r.get("new_keys", {}).values()) for r in recs],
    }
    for name, vals in series.items():
        ax.plot(passes, vals, marker="o", label=name)
    ax.set_xlabel("pass")
    ax.set_ylabel("rows")
    ax.set_title("tier traffic per pass")
    ax.legend(fontsize="small")
    files.append(_save(fig, out / "traffic.png", plt))
    return files


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
