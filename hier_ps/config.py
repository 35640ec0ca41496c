"""Experiment config: YAML -> plain dict -> nested, validated dataclasses.

Precedence: command-line overrides ``a.b=c`` beat the file, which beats the defaults below. Unknown keys are errors
that suggest the nearest valid name; wrong types and out-of-range values are errors that name the field and the value.
Each component receives only its own section.

Example:
    >>> cfg = load_config({"data": {"train": "t/*.parquet", "sparse": [{"name": "C1"}]},
    ...                    "tables": [{"name": "C1", "dim": 8}]}, overrides=["train.batch_size=256"])
    >>> cfg.train.batch_size
    256
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hier_ps.errors import ConfigError

__all__ = [
    "AdmissionConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "DenseOptimizerConfig",
    "EvalConfig",
    "EvictionConfig",
    "InitConfig",
    "ModelConfig",
    "RunConfig",
    "SlotConfig",
    "SparseOptimizerConfig",
    "StoreConfig",
    "SyntheticConfig",
    "TableConfig",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "parse_bytes",
    "save_config",
]


class Pooling(enum.StrEnum):
    """How the keys of one slot are combined into one vector per example."""

    SUM = "sum"  #: sum of the rows of the bag; an empty bag gives zeros
    MEAN = "mean"  #: mean of the rows of the bag; an empty bag gives zeros


class InitName(enum.StrEnum):
    """Initializer of a new row's embedding (a pure function of seed, table name and key)."""

    UNIFORM = "uniform"  #: uniform in [-scale, scale]
    NORMAL = "normal"  #: normal with standard deviation `std`
    ZEROS = "zeros"  #: all zeros
    CONSTANT = "constant"  #: every element equals `value`


class SparseOptimizerName(enum.StrEnum):
    """Sparse (row) optimizers; exact formulas in DESIGN.md, contract 3."""

    SGD = "sgd"  #: w -= lr*g
    ADAGRAD = "adagrad"  #: per-element accumulator
    ROWWISE_ADAGRAD = "rowwise_adagrad"  #: one accumulator per row (mean of g*g)
    ADAM = "adam"  #: lazy Adam, per-row step count, bias-corrected
    FTRL = "ftrl"  #: FTRL-Proximal per element (alpha, beta, l1, l2)


class RowDtype(enum.StrEnum):
    """Storage type of a table's embedding rows on the training device (optimizer state always stays float32)."""

    FP32 = "fp32"  #: float32 rows
    FP16 = "fp16"  #: float16 rows (half the HBM); lookups accumulate and updates compute in float32
    BF16 = "bf16"  #: bfloat16 rows (half the HBM); lookups accumulate and updates compute in float32


class DenseOptimizerName(enum.StrEnum):
    """torch.optim optimizers for the dense (model) parameters."""

    ADAM = "adam"  #: torch.optim.Adam
    ADAMW = "adamw"  #: torch.optim.AdamW
    SGD = "sgd"  #: torch.optim.SGD (with `momentum`)
    ADAGRAD = "adagrad"  #: torch.optim.Adagrad


class OnInvalid(enum.StrEnum):
    """What to do with NaN/inf in labels or dense features."""

    ERROR = "error"  #: stop with an error naming the file, column and row
    SKIP = "skip"  #: drop the example and count it


class ResumeMode(enum.StrEnum):
    """Whether `hier-ps train` continues from a checkpoint in run.dir."""

    AUTO = "auto"  #: resume from the newest valid checkpoint if there is one (and say so), else start fresh
    NEVER = "never"  #: always start fresh; refuse a run directory whose store already holds a model
    REQUIRED = "required"  #: resume, or stop with an error when no valid checkpoint exists


class CachePolicy(enum.StrEnum):
    """Eviction policy of the host cache."""

    LRU = "lru"  #: least recently used first
    LFU = "lfu"  #: least frequently used first (uses counted while resident), least recent among equals


class EmbeddingSharding(enum.StrEnum):
    """How the ranks of a multi-rank run hold a pass's working set."""

    REPLICATED = "replicated"  #: every rank holds all of it; row gradients are all-reduced per global batch
    ROW_WISE = "row_wise"  #: each rank holds the rows it owns; rows and their gradients travel by all-to-all


class DenseTransform(enum.StrEnum):
    """Transform applied to dense features as they are read."""

    NONE = "none"  #: as stored
    LOG1P = "log1p"  #: sign(x)*log1p(|x|), for count features such as Criteo's


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value: int | str, name: str) -> int:
    """Parses a byte size such as ``256MiB``, ``1.5GB`` or ``1048576``.

    Args:
        value: an int (bytes) or a string with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
        name: the config field, for the error message.

    Returns:
        The size in bytes.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a byte size such as 256MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name}: must be >= 0, got {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"{name}: expected a byte size such as 256MiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


@dataclass(kw_only=True)
class RunConfig:
    """Where a run lives and how it is seeded."""

    dir: str = "runs/demo"  #: run directory: resolved config, metrics.jsonl, dense weights, the store by default
    seed: int = 0  #: seeds row initialization, dense model init and shuffling
    overwrite: bool = False  #: wipe an existing run directory's store and outputs at start instead of refusing


@dataclass(kw_only=True)
class SlotConfig:
    """One sparse input column, pooled into one vector per example."""

    name: str  #: slot name, as the model sees it in ``sparse[name]``
    column: str = ""  #: Parquet column (default: the slot name); int, string or list (multi-hot) column
    table: str = ""  #: embedding table (default: the slot name); several slots may share one table
    pooling: Pooling = Pooling.SUM  #: how the bag of keys is combined

    def __post_init__(self) -> None:
        self.column = self.column or self.name
        self.table = self.table or self.name


@dataclass(kw_only=True)
class SyntheticConfig:
    """Synthetic data generated on first use (the demo's data set)."""

    dir: str = "data/demo"  #: output directory: train/, eval/, oracle.json
    preset: str = "demo"  #: generator preset: demo (2M + 200k rows, 26 slots) or tiny
    seed: int = 0  #: generator seed
    train_rows: int | None = None  #: override the preset's number of train rows
    eval_rows: int | None = None  #: override the preset's number of eval rows


@dataclass(kw_only=True)
class DataConfig:
    """Where the examples are and which columns mean what."""

    train: str | list[str] = ""  #: Parquet glob, directory, file, or a list of these
    eval: str | list[str] | None = None  #: held-out Parquet for AUC/logloss; none to skip eval
    label: str | list[str] = "label"  #: label column, or a list of columns for multi-task (one logit per task)
    dense: list[str] = field(default_factory=list)  #: dense float columns, in model input order
    sparse: list[SlotConfig] = field(default_factory=list)  #: sparse slots
    on_invalid: OnInvalid = OnInvalid.ERROR  #: NaN/inf in labels or dense features
    dense_transform: DenseTransform = DenseTransform.NONE  #: transform of dense features
    synthetic: SyntheticConfig | None = None  #: generate synthetic data into synthetic.dir if missing

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("train: required (a Parquet glob, directory or file)")
        if not self.sparse:
            raise ConfigError("sparse: at least one sparse slot is required")
        names = [s.name for s in self.sparse]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"sparse: slot name {dup[0]!r} is used twice")

    @property
    def labels(self) -> list[str]:
        """The label columns as a list (one per task)."""
        return [self.label] if isinstance(self.label, str) else list(self.label)


@dataclass(kw_only=True)
class InitConfig:
    """Row initializer."""

    name: InitName = InitName.UNIFORM  #: initializer
    scale: float = 0.05  #: half-width of `uniform`
    std: float = 0.01  #: standard deviation of `normal`
    value: float = 0.0  #: value of `constant`


@dataclass(kw_only=True)
class SparseOptimizerConfig:
    """Sparse row optimizer (DESIGN.md contract 3)."""

    name: SparseOptimizerName = SparseOptimizerName.ROWWISE_ADAGRAD  #: optimizer
    lr: float = 0.05  #: learning rate (sgd, adagrad, rowwise_adagrad, adam)
    eps: float = 1e-8  #: added to the denominator (adagrad, rowwise_adagrad, adam)
    beta1: float = 0.9  #: adam first-moment decay
    beta2: float = 0.999  #: adam second-moment decay
    alpha: float | None = None  #: ftrl learning rate (default: lr)
    beta: float = 1.0  #: ftrl beta
    l1: float = 0.0  #: ftrl L1 strength
    l2: float = 0.0  #: ftrl L2 strength

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.eps < 0:
            raise ConfigError(f"eps: must be >= 0, got {self.eps}")
        for f in ("beta1", "beta2"):
            if not 0 <= getattr(self, f) < 1:
                raise ConfigError(f"{f}: must be in [0, 1), got {getattr(self, f)}")
        if self.alpha is not None and self.alpha <= 0:
            raise ConfigError(f"alpha: must be > 0, got {self.alpha}")
        if self.l1 < 0 or self.l2 < 0 or self.beta < 0:
            raise ConfigError("beta, l1, l2: must be >= 0 (ftrl)")


@dataclass(kw_only=True)
class AdmissionConfig:
    """Feature admission: a key gets a row only once it has occurred `min_count` times in training data.

    Occurrences are counted in a count-min sketch of `sketch_bytes` (memory independent of the number of keys; it may
    over-count, so a rare key can be admitted early, never late). Until admitted a key reads as a zero vector and
    takes no update. Decided per pass at planning time, from the counts up to and including that pass.
    """

    min_count: int = 2  #: occurrences before a key gets a row (1: every key, as without admission)
    sketch_bytes: int | str = "4MiB"  #: memory of the count-min sketch (4 rows of int32 counters)

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ConfigError(f"min_count: must be >= 1, got {self.min_count}")
        self.sketch_bytes = parse_bytes(self.sketch_bytes, "sketch_bytes")
        if self.sketch_bytes < 64:
            raise ConfigError(f"sketch_bytes: must be >= 64, got {self.sketch_bytes}")


@dataclass(kw_only=True)
class EvictionConfig:
    """Feature eviction at checkpoint time: matching keys are deleted from every tier (compaction then shrinks the
    store). A key evicted and seen again starts over from its initial row (admission lets it straight
    back in: the sketch still holds its count).

    Eviction runs at the scheduled checkpoints (every ``checkpoint.every_passes`` passes), or once at the end of
    training when that is 0; it scans the table's rows, so it costs one read of the table each time.
    """

    ttl_passes: int | None = None  #: evict keys not seen in the last `ttl_passes` passes
    min_l2: float | None = None  #: evict keys whose embedding L2 norm is below this

    def __post_init__(self) -> None:
        if self.ttl_passes is not None and self.ttl_passes < 1:
            raise ConfigError(f"ttl_passes: must be >= 1, got {self.ttl_passes}")
        if self.min_l2 is not None and self.min_l2 < 0:
            raise ConfigError(f"min_l2: must be >= 0, got {self.min_l2}")


@dataclass(kw_only=True)
class TableConfig:
    """One embedding table."""

    name: str  #: table name (slots refer to it)
    dim: int  #: embedding width (> 0)
    init: InitConfig = field(default_factory=InitConfig)  #: initializer of new rows
    optimizer: SparseOptimizerConfig | None = None  #: this table's optimizer (default: the top-level sparse_optimizer)
    admission: AdmissionConfig | None = None  #: feature admission (default: every key gets a row at once)
    eviction: EvictionConfig | None = None  #: feature eviction at checkpoints (default: none)
    #: embedding storage on the training device; lower tiers keep float32 rows that hold exactly these values, so
    #: tiering stays lossless
    dtype: RowDtype = RowDtype.FP32

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ConfigError(f"dim: must be > 0, got {self.dim}")


@dataclass(kw_only=True)
class DenseOptimizerConfig:
    """torch.optim optimizer of the dense parameters."""

    name: DenseOptimizerName = DenseOptimizerName.ADAM  #: optimizer
    lr: float = 1e-3  #: learning rate
    weight_decay: float = 0.0  #: weight decay
    momentum: float = 0.0  #: sgd momentum

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")


@dataclass(kw_only=True)
class ModelConfig:
    """The dense model: a built-in name or ``package.module:Class``."""

    name: str = "dlrm"  #: lr, fm, wide_deep, deepfm, dlrm, dcn_v2, or "my_pkg.my_mod:MyModel"
    args: dict[str, Any] = field(default_factory=dict)  #: keyword arguments of the model's constructor


@dataclass(kw_only=True)
class StoreConfig:
    """The tiers below HBM."""

    dir: str | None = None  #: SSD store directory (default: RUN_DIR/store)
    host_cache_bytes: int | str = "256MiB"  #: host RAM cache budget over the SSD store (0 = no cache)
    host_cache_policy: CachePolicy = CachePolicy.LRU  #: which rows the host cache evicts first
    hbm_bytes: int | str = "auto"  #: device budget for a pass's working set; auto = 80% of free device memory
    compact_stale_fraction: float = 0.5  #: at a checkpoint, compact the SSD store when stale rows exceed this share

    def __post_init__(self) -> None:
        self.host_cache_bytes = parse_bytes(self.host_cache_bytes, "host_cache_bytes")
        if self.hbm_bytes != "auto":
            self.hbm_bytes = parse_bytes(self.hbm_bytes, "hbm_bytes")
        if not 0 < self.compact_stale_fraction <= 1:
            raise ConfigError(f"compact_stale_fraction: must be in (0, 1], got {self.compact_stale_fraction}")


@dataclass(kw_only=True)
class TrainConfig:
    """The pass loop."""

    device: str = "auto"  #: auto (cuda if available, else cpu), cpu, cuda, cuda:N
    batch_size: int = 4096  #: examples per training step
    #: examples per pass; batches are cut within a pass (the last may be short). ``auto``: as many whole global
    #: batches as fit store.hbm_bytes (on CPU with hbm_bytes auto: a quarter of the machine's RAM)
    pass_examples: int | str = 500_000
    epochs: int = 1  #: passes over the training data
    shuffle: bool = False  #: shuffle examples within each pass (seeded by run.seed, epoch and pass)
    max_passes: int | None = None  #: stop after this many passes (all epochs together)
    progress: bool = True  #: show a progress bar with examples/s on stderr
    resume: ResumeMode = ResumeMode.AUTO  #: continue from the newest valid checkpoint in run.dir
    #: several ranks (torchrun): how the working set is held; batch_size is per rank (global batch = ranks x it)
    embedding_sharding: EmbeddingSharding = EmbeddingSharding.REPLICATED
    collective_timeout_s: float = 300.0  #: several ranks: a collective waiting this long for a rank fails the run

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if isinstance(self.pass_examples, str) and self.pass_examples != "auto":
            raise ConfigError(f"pass_examples: expected a number of examples or auto, got {self.pass_examples!r}")
        for f in ("batch_size", "pass_examples", "epochs"):
            if getattr(self, f) != "auto" and getattr(self, f) <= 0:
                raise ConfigError(f"{f}: must be > 0, got {getattr(self, f)}")
        if self.max_passes is not None and self.max_passes <= 0:
            raise ConfigError(f"max_passes: must be > 0, got {self.max_passes}")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"collective_timeout_s: must be > 0, got {self.collective_timeout_s}")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Checkpoints: committed store + dense state + data cursor, for exact resume."""

    every_passes: int = 1  #: checkpoint after every N passes (0: only at the end of training)
    keep: int = 2  #: checkpoints kept (newest first)

    def __post_init__(self) -> None:
        if self.every_passes < 0:
            raise ConfigError(f"every_passes: must be >= 0, got {self.every_passes}")
        if self.keep < 1:
            raise ConfigError(f"keep: must be >= 1, got {self.keep}")


@dataclass(kw_only=True)
class EvalConfig:
    """Held-out evaluation."""

    every_passes: int = 1  #: evaluate after every N passes (0: only at the end of training)
    batch_size: int = 16384  #: examples per eval step
    max_examples: int | None = None  #: evaluate on at most this many examples

    def __post_init__(self) -> None:
        if self.every_passes < 0:
            raise ConfigError(f"every_passes: must be >= 0, got {self.every_passes}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size: must be > 0, got {self.batch_size}")


@dataclass(kw_only=True)
class Config:
    """A whole experiment."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig
    tables: list[TableConfig]
    sparse_optimizer: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    dense_optimizer: DenseOptimizerConfig = field(default_factory=DenseOptimizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"tables: table name {dup[0]!r} is defined twice")
        for slot in self.data.sparse:
            if slot.table not in names:
                hint = _suggest(slot.table, names)
                raise ConfigError(f"data.sparse[{slot.name}].table: unknown table {slot.table!r}{hint}")
        used = {s.table for s in self.data.sparse}
        unused = [n for n in names if n not in used]
        if unused:
            raise ConfigError(f"tables[{unused[0]}]: no slot in data.sparse uses this table")

    @property
    def store_dir(self) -> Path:
        """The SSD store directory."""
        return Path(self.store.dir) if self.store.dir else Path(self.run.dir) / "store"

    def table(self, name: str) -> TableConfig:
        """The table named `name`."""
        return next(t for t in self.tables if t.name == name)

    def optimizer_of(self, table: str) -> SparseOptimizerConfig:
        """The sparse optimizer of `table` (its own, else the top-level one)."""
        return self.table(table).optimizer or self.sparse_optimizer


def _suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Converts a YAML value to the annotated type `tp`, raising ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        opts = typing.get_args(tp)
        if value is None and type(None) in opts:
            return None
        errors = []
        for opt in (o for o in opts if o is not type(None)):
            try:
                return _convert(value, opt, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(o) for o in opts if o is not type(None))
        raise ConfigError(f"{path}: expected {names}, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, _item_path(path, i, v)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            valid = [m.value for m in tp]
            raise ConfigError(
                f"{path}: unknown value {value!r}{_suggest(str(value), valid)} (valid: {', '.join(valid)})"
            ) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _item_path(path: str, i: int, value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return f"{path}[{value['name']}]"
    return f"{path}[{i}]"


def _build(cls: type, raw: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key{_suggest(str(key), fields)} (valid: {', '.join(fields)})")
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # __post_init__ names fields relative to its own section; nested sections were built (and named) above.
        raise ConfigError(f"{path}.{e}" if path else str(e)) from None


def _set_override(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, dotted)
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:i])} is not a section")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def _list_index(node: list, part: str, dotted: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ConfigError(f"override {dotted}: no list item {part!r} (use an index or an item's name)")


def load_config(source: str | Path | dict | Config, overrides: typing.Sequence[str] | None = None) -> Config:
    """Loads and validates a config.

    Args:
        source: a YAML file path, a plain dict of the same shape, or a Config (returned after overrides).
        overrides: ``a.b=c`` strings; values are parsed as YAML scalars (``x=1e-3``, ``y=[1,2]``). List items can be
            addressed by index or name: ``tables.C1.dim=8``.

    Returns:
        The validated Config.

    Raises:
        ConfigError: a missing file, YAML syntax error, unknown key, wrong type or bad value, in one line.
    """
    if isinstance(source, Config):
        raw = config_to_dict(source)
    elif isinstance(source, dict):
        raw = yaml.safe_load(yaml.safe_dump(source))  # deep copy through plain types
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {str(path)!r}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level")
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.batch_size=1024")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        _set_override(raw, key.strip(), value)
    return _build(Config, raw, "")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Config) -> dict:
    """The config as plain YAML-able types (enums as their values)."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Writes the resolved config as YAML (atomically: temp file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
