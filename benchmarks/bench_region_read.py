"""Predicting one very large slide read region by region: megapixels per second and peak memory.

Writes a SIDE x SIDE pyramidal tiled TIFF (zlib, 256 px tiles; reduced levels of 1/4, 1/16, 1/64 as pages after
level 0, the layout OpenSlide and tifffile both read; 0.25 µm/px) tile by tile, so that writing it never holds the
image either. Its tissue is BCCD test fields repeated across an ellipse covering ``--tissue`` of the canvas (1.0:
all of it), the rest white glass. Then ``retinadet predict`` runs on it in a child process, with the tissue mask
(``--no-tissue`` runs every tile), and the child's peak RSS is read (``getrusage``). The same run on a JPEG of the
same pixels, decoded whole, is the comparison (``--jpeg``; it needs the image in memory to write it).

    python benchmarks/bench_region_read.py --weights runs/train/bccd/weights/best.pt --side 30000 --tissue 0.5
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "datasets" / "bccd"


def mosaic() -> np.ndarray:
    """3x3 BCCD test fields (1440x1920), the pattern the slide repeats."""
    from retinadet.data.images import read_image
    from retinadet.engine.datasets import eval_split

    records = eval_split(str(BCCD), "test").records[:9]
    out = np.zeros((1440, 1920, 3), dtype=np.uint8)
    for k, r in enumerate(records):
        img = read_image(r.path)[:, :480, :640].permute(1, 2, 0).numpy()
        y, x = (k // 3) * 480, (k % 3) * 640
        out[y:y + img.shape[0], x:x + img.shape[1]] = img
    return out


def tissue_at(side: int, fraction: float, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """bool [rows, cols]: inside the centred ellipse that covers ``fraction`` of the square (level-0 coordinates)."""
    if fraction >= 1.0:
        return np.ones((len(rows), len(cols)), bool)
    r = side / 2 * np.sqrt(fraction * 4 / np.pi)  # a circle of that area, capped by the square
    dy = (rows[:, None] + 0.5 - side / 2) / r
    dx = (cols[None, :] + 0.5 - side / 2) / r
    return dy * dy + dx * dx <= 1.0


def write_tiff(path: Path, side: int, pattern: np.ndarray, tissue: float, tile: int = 256) -> float:
    import tifffile

    ph, pw = pattern.shape[:2]

    def tiles(step: int):
        size = -(-side // step)
        for ty in range(0, size, tile):
            rows = np.arange(ty, ty + tile) * step
            for tx in range(0, size, tile):
                cols = np.arange(tx, tx + tile) * step
                block = pattern[np.ix_(rows % ph, cols % pw)].copy()
                block[~tissue_at(side, tissue, rows, cols)] = 242  # glass
                yield block

    t0 = time.perf_counter()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, step in enumerate((1, 4, 16, 64)):
            size = -(-side // step)
            extra = {"resolution": (1e4 / 0.25, 1e4 / 0.25), "resolutionunit": "CENTIMETER"} if k == 0 else {"subfiletype": 1}
            tw.write(tiles(step), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, **extra)
    return time.perf_counter() - t0


def run_predict(weights: str, source: Path, out: Path, batch: int, tissue: bool, tile: str) -> tuple[float, float, str]:
    """(wall seconds, child peak RSS in GB, its output) of one ``retinadet predict``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "retinadet", "predict", "--weights", weights, "--source", str(source),
                          "--nosave", "--conf", "0.5", "--batch", str(batch), "--project", str(out), "--name", source.stem,
                          "--tissue" if tissue else "--no-tissue", "--tile", tile],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])
    if peak <= before:
        print("note: the child's peak RSS did not exceed an earlier child's; run one format per call for exact figures")
    return wall, peak / 2**20, res.stdout + res.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a BCCD model whose checkpoint records its training scale")
    p.add_argument("--side", type=int, default=20000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--jpeg", action="store_true", help="measure a JPEG of the same pixels instead (decoded whole)")
    p.add_argument("--tissue", type=float, default=1.0, help="share of the slide that is tissue (the rest glass)")
    p.add_argument("--no-tissue", dest="mask", action="store_false", help="run every tile (no tissue mask)")
    p.add_argument("--tile", default="auto", help="predict's --tile (auto: from the checkpoint's training scale)")
    p.add_argument("--workdir", default=None, help="where to write the image (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        pattern = mosaic()
        if args.jpeg:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None
            ph, pw = pattern.shape[:2]
            image = pattern[np.ix_(np.arange(args.side) % ph, np.arange(args.side) % pw)]
            image[~tissue_at(args.side, args.tissue, np.arange(args.side), np.arange(args.side))] = 242
            source = tmp / "slide.jpg"
            t0 = time.perf_counter()
            Image.fromarray(image).save(source, quality=90)
            written = time.perf_counter() - t0
            del image
        else:
            source = tmp / "slide.tif"
            written = write_tiff(source, args.side, pattern, args.tissue)
        size = source.stat().st_size / 2**20
        wall, peak, output = run_predict(args.weights, source, tmp / "runs", args.batch, args.mask, args.tile)
        lines = [line for line in output.splitlines() if "sliced" in line or "read by region" in line or "GiB" in line
                 or "tiles hold" in line]
        mpx = args.side * args.side / 1e6
        kind = "JPEG" if args.jpeg else "pyramidal tiled TIFF (zlib, 256 px tiles)"
        print(f"\n{args.side}x{args.side} {kind}, tissue {args.tissue:.0%}, tissue mask {'on' if args.mask else 'off'}: "
              f"{size:.0f} MB written in {written:.0f} s")
        for line in lines:
            print(f"- {line.strip()[:220]}")
        print("\n| file | megapixels | predict wall s | Mpx/s | peak RSS GB |")
        print("|---|---|---|---|---|")
        print(f"| {source.name} | {mpx:.0f} | {wall:.1f} | {mpx / wall:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
