"""The package works from a built wheel (``pip install .``), not only from the editable source tree."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
import numpy as np
import retinadet
from retinadet.detector import Detector

assert retinadet.__file__.startswith(sys.argv[1]), retinadet.__file__
det = Detector.from_config("fast", ["cell"], device="cpu")
dets = det.predict(np.zeros((120, 200, 3), dtype=np.uint8), conf=0.0, max_det=5)
assert len(dets) == 5 and dets.image_size == (120, 200)
from importlib.resources import files
static = files("retinadet.serve") / "static"
assert all((static / name).is_file() for name in ("index.html", "review.js", "review.css")), "review page assets"
print("WHEEL OK", retinadet.__file__)
"""


@pytest.mark.slow
def test_built_wheel_holds_every_module_and_runs(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", "__pycache__",
                                                              ".pytest_cache", ".hypothesis", "notebooks", "tests"))
    # Build with the setuptools at hand when there is one; otherwise pip fetches it from the registry.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path / "dist"),
                    str(src)], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("retinadet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "retinadet").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel"
    assets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "retinadet" / "serve" / "static").iterdir()}
    assert assets and assets - names == set(), "the review page's assets are missing from the wheel"
    assert any(n.endswith("entry_points.txt") for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(site)], capture_output=True, text=True, timeout=300,
                         env=env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WHEEL OK" in run.stdout
    cli = subprocess.run([sys.executable, "-m", "retinadet", "model", "presets"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=str(tmp_path))
    assert cli.returncode == 0 and "fast" in cli.stdout, cli.stderr[-2000:]
