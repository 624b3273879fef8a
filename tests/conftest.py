import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Each of the -n workers gets one thread, and so do the processes its tests start: more threads than
        # cores make OpenMP's barriers spin against each other.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (it ships beside the repository in CI only)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Keep generated datasets and runs out of the user's home during tests.
    cache = tmp_path_factory.getbasetemp() / "retinadet-cache"
    monkeypatch.setenv("RETINADET_CACHE", os.environ.get("RETINADET_TEST_CACHE", str(cache)))
