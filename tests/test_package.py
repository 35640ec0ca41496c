"""What importing the package does to the process: only the OpenMP spin default, and only before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SHOW = "import os, sys; {pre}import hier_ps; print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"


def _spin_after_import(pre: str = "", **env: str) -> tuple[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", _SHOW.format(pre=pre)], env={**base, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1]


def test_import_before_torch_sets_a_short_openmp_spin_and_loads_no_torch() -> None:
    assert _spin_after_import() == ("20000", "False")


@pytest.mark.parametrize(
    ("pre", "env", "want"),
    [
        ("", {"GOMP_SPINCOUNT": "123"}, "123"),  # the user's own value stays
        ("", {"OMP_WAIT_POLICY": "ACTIVE"}, "None"),  # a wait policy of the user's: no spin count added
        ("import torch; ", {}, "None"),  # torch already loaded: libgomp has read its settings, nothing to set
    ],
)
def test_import_leaves_the_users_choice_and_a_loaded_torch_alone(pre: str, env: dict[str, str], want: str) -> None:
    assert _spin_after_import(pre, **env)[0] == want
