"""build_model: names, custom import paths, and errors for bad names and bad model.args."""

from __future__ import annotations

import inspect

import pytest
import torch

from hier_ps.errors import ConfigError
from hier_ps.models import BUILTIN_MODELS, build_model

MIXED = {"a": 4, "b": 4, "c": 8}


def test_builtin_names() -> None:
    assert list(BUILTIN_MODELS) == ["lr", "fm", "wide_deep", "deepfm", "dlrm", "dcn_v2"]
    for name, cls in BUILTIN_MODELS.items():
        assert cls.model_name == name
        params = inspect.signature(cls).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
        assert all(p.default is not inspect.Parameter.empty for p in params if p.name not in ("dense_dim", "slot_dims"))


def test_unknown_name_suggests_nearest() -> None:
    with pytest.raises(
        ConfigError, match=r"^model.name: unknown model 'dlmr'; did you mean 'dlrm'\? built-ins are: lr,"
    ):
        build_model("dlmr", dense_dim=0, slot_dims=MIXED)
    with pytest.raises(ConfigError, match=r"^model.name: unknown model 'xyzzy'; built-ins are: lr, fm, wide_deep, "):
        build_model("xyzzy", dense_dim=0, slot_dims=MIXED)


@pytest.mark.parametrize("name", ["", ":Tiny", "tests.models._custom_model:", "a:b:c", 3])
def test_malformed_name(name: object) -> None:
    with pytest.raises(ConfigError, match="^model.name: "):
        build_model(name, dense_dim=0, slot_dims=MIXED)


def test_custom_model_by_path() -> None:
    torch.manual_seed(0)
    m = build_model("tests.models._custom_model:Tiny", dense_dim=2, slot_dims=MIXED, num_tasks=1, args={"scale": 2.0})
    assert type(m).__name__ == "Tiny" and m.scale == 2.0
    out = m(torch.zeros(5, 2), {s: torch.ones(5, d) for s, d in MIXED.items()})
    assert out.shape == (5,)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (
            "no_such_pkg.mod:X",
            r"^model.name: cannot import 'no_such_pkg.mod:X': ModuleNotFoundError: .*no_such_pkg.*PYTHONPATH",
        ),
        (
            "tests.models._broken_model:X",
            r"^model.name: cannot import 'tests.models._broken_model:X': RuntimeError: boom",
        ),
        ("tests.models._custom_model:Nope", r"module 'tests.models._custom_model' has no attribute 'Nope'"),
        (
            "tests.models._custom_model:NOT_CALLABLE",
            r"'tests.models._custom_model:NOT_CALLABLE' is not a class \(it is of type int\)",
        ),
        ("tests.models._custom_model:not_a_module", r"built a dict, not a torch.nn.Module"),
    ],
)
def test_custom_path_errors(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, dense_dim=0, slot_dims=MIXED)


def test_custom_model_arg_errors() -> None:
    path = "tests.models._custom_model:NeedsWidth"
    assert build_model(path, dense_dim=0, slot_dims=MIXED, args={"width": 3}).width == 3
    with pytest.raises(ConfigError, match=r"^model.args: model '.*NeedsWidth' cannot take .*'width'"):
        build_model(path, dense_dim=0, slot_dims=MIXED)
    with pytest.raises(ConfigError, match=r"^model.args.widht: not an argument of .*; did you mean 'width'\?"):
        build_model(path, dense_dim=0, slot_dims=MIXED, args={"widht": 3})


@pytest.mark.parametrize(
    ("name", "args", "match"),
    [
        (
            "wide_deep",
            {"hiden": [4]},
            r"^model.args.hiden: not an argument of model 'wide_deep'; did you mean 'hidden'",
        ),
        ("lr", {"k": 4}, r"^model.args.k: not an argument of model 'lr' \(arguments: none\)$"),
        ("dlrm", {"dense_dim": 4}, r"^model.args.dense_dim: set from the data config"),
        ("dlrm", {"top": [0]}, r"^model.args.top: expected a list of positive integers, got \[0\]$"),
        ("dlrm", {"top": [64.0]}, r"^model.args.top: expected a list of positive integers"),
        ("dlrm", {"bottom": []}, r"^model.args.bottom: expected a non-empty list of positive integers, got \[\]$"),
        ("dlrm", {"bottom": "64,32"}, r"^model.args.bottom: expected a non-empty list"),
        ("wide_deep", {"hidden": 256}, r"^model.args.hidden: expected a list of positive integers, got 256$"),
        ("deepfm", {"hidden": [True]}, r"^model.args.hidden: expected a list of positive integers"),
        ("dcn_v2", {"hidden": [-1]}, r"^model.args.hidden: expected a list of positive integers"),
        ("dcn_v2", {"cross_layers": 0}, r"^model.args.cross_layers: expected a positive integer, got 0$"),
        ("dcn_v2", {"cross_layers": "3"}, r"^model.args.cross_layers: expected a positive integer, got '3'$"),
        ("fm", {"k": 0}, r"^model.args.k: expected a positive integer, got 0$"),
        ("deepfm", {"k": 2.5}, r"^model.args.k: expected a positive integer, got 2.5$"),
    ],
)
def test_bad_builtin_args(name: str, args: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(name, dense_dim=2, slot_dims=MIXED, args=args)


def test_args_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^model.args: expected a mapping"):
        build_model("dlrm", dense_dim=2, slot_dims=MIXED, args=[("top", [4])])


def test_args_reach_the_model() -> None:
    m = build_model("dlrm", dense_dim=2, slot_dims=MIXED, num_tasks=2, args={"bottom": [8, 6], "top": (5,)})
    assert m.d == 6 and m.head.in_features == 5 and m.num_tasks == 2
    assert build_model("fm", dense_dim=0, slot_dims=MIXED, args={"k": 3}).k == 3
