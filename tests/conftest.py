"""Shared test setup: CUDA markers, and a tiny synthetic data set made once per session."""

from __future__ import annotations

import pytest
import torch

from hier_ps.data import generate_synthetic


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_cuda: needs a CUDA device")
    config.addinivalue_line("markers", "requires_gpus(n): needs at least n CUDA devices")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.get_closest_marker("requires_cuda") and n_gpus == 0:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        m = item.get_closest_marker("requires_gpus")
        if m and n_gpus < m.args[0]:
            item.add_marker(pytest.mark.skip(reason=f"needs {m.args[0]} CUDA devices"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The 'tiny' synthetic preset (shared, read-only): {'dir': Path, 'info': oracle.json contents}."""
    d = tmp_path_factory.mktemp("tiny_data")
    info = generate_synthetic(d, preset="tiny", seed=0)
    return {"dir": d, "info": info}
