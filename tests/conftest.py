import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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
