"""Indexing a 100k-image COCO dataset: ``load_splits`` and ``data check --no-images`` time, and memory that grows
linearly with the annotations.

Synthesises, in a temporary folder, COCO jsons of the first 25k / 50k / 100k images of one dataset (3 classes,
5-15 boxes per image, ~10 on average, a few image sizes given in the JSON) and the image files they list, as hard
links to one small JPEG: ``check --no-images`` stats every file (a missing one is an error), and links cost no disk.
The files are never decoded (their pixels do not match the sizes in the JSON; only a decoding check would see it).

Each measurement runs in a fresh child process: load time and peak RSS (``getrusage``); the memory the loaded
records keep, traced with ``tracemalloc`` in a second child (the parsed JSON freed); the ``retinadet data check
--no-images`` CLI's wall time and peak RSS (imports included, as a user sees it).

    python benchmarks/bench_data_index.py                 # 25k, 50k, 100k images
    python benchmarks/bench_data_index.py --steps 2000    # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZES = [(640, 480), (1024, 768), (512, 512), (1333, 800)]
LOAD_TARGET_S, CHECK_TARGET_S = 10.0, 30.0

LOAD_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from retinadet.data.discover import load_splits
from retinadet.data.formats.coco import read_coco
t0 = time.perf_counter()
splits = load_splits({json!r})
load_s = time.perf_counter() - t0
ds = next(iter(splits.values()))
t0 = time.perf_counter()
read_coco({json!r}, categories=(ds.category_ids, ds.class_names))
read_s = time.perf_counter() - t0
print(json.dumps({{"load_s": load_s, "read_coco_s": read_s, "images": len(ds), "boxes": sum(ds.boxes_per_class().values()),
                  "problems": len(ds.problems), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

MEMORY_CHILD = """
import gc, json, sys, tracemalloc
sys.path.insert(0, {repo!r})
from retinadet.data.discover import load_splits
tracemalloc.start()
splits = load_splits({json!r})
gc.collect()
kept, peak = tracemalloc.get_traced_memory()
print(json.dumps({{"kept_mb": kept / 2**20, "traced_peak_mb": peak / 2**20}}))
"""


def synthesise(root: Path, images: int, seed: int = 0) -> dict:
    """Image files (hard links) and the per-image columns of the annotations, shared by every step."""
    from PIL import Image

    folder = root / "images"
    folder.mkdir(parents=True)
    template = root / "template.jpg"
    Image.new("RGB", (64, 48), (120, 80, 60)).save(template, quality=80)
    t0 = time.perf_counter()
    for i in range(images):
        target = folder / f"img_{i:06d}.jpg"
        try:
            os.link(template, target)
        except OSError:  # a file system without hard links: a real copy (1 KB each)
            target.write_bytes(template.read_bytes())
    links_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    size = rng.integers(0, len(SIZES), images)
    per_image = rng.integers(5, 16, images)
    return {"size": size, "per_image": per_image, "links_s": links_s}


def write_json(path: Path, cols: dict, images: int) -> float:
    """The COCO json of the first ``images`` images, written as text (no 1M-dict tree in this process)."""
    rng = np.random.default_rng(images)
    wh = np.array(SIZES)[cols["size"][:images]]
    counts = cols["per_image"][:images]
    owner = np.repeat(np.arange(images), counts)
    iw, ih = wh[owner, 0], wh[owner, 1]
    bw = np.maximum(2, rng.uniform(0.01, 0.25, len(owner)) * iw).round(2)
    bh = np.maximum(2, rng.uniform(0.01, 0.25, len(owner)) * ih).round(2)
    x = (rng.uniform(0, 1, len(owner)) * (iw - bw)).round(2)
    y = (rng.uniform(0, 1, len(owner)) * (ih - bh)).round(2)
    cat = rng.integers(1, 4, len(owner))
    image_rows = ",".join(f'{{"id":{i + 1},"file_name":"images/img_{i:06d}.jpg","width":{w},"height":{h}}}'
                          for i, (w, h) in enumerate(wh.tolist()))
    ann_rows = ",".join(f'{{"id":{k + 1},"image_id":{o + 1},"category_id":{c},"bbox":[{a},{b},{c2},{d}],'
                        f'"area":{round(c2 * d, 2)},"iscrowd":0}}'
                        for k, (o, c, a, b, c2, d) in enumerate(zip(owner.tolist(), cat.tolist(), x.tolist(), y.tolist(),
                                                                      bw.tolist(), bh.tolist())))
    cats = json.dumps([{"id": k, "name": name, "supercategory": "cell"} for k, name in ((1, "rbc"), (2, "wbc"), (3, "platelet"))])
    path.write_text(f'{{"images":[{image_rows}],"annotations":[{ann_rows}],"categories":{cats}}}')
    return len(owner)


def child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_check(json_path: Path, log: Path) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit code, last lines) of ``retinadet data check JSON --no-images``."""
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "retinadet", "data", "check", str(json_path), "--no-images"],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's maximum
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = "\n".join(log.read_text().splitlines()[-4:])
    return wall, usage.ru_maxrss / 1024, proc.returncode, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="25000,50000,100000", help="Image counts to index (comma separated).")
    parser.add_argument("--keep", default=None, help="Write the data here instead of a temporary folder (kept).")
    args = parser.parse_args()
    steps = sorted(int(s) for s in args.steps.split(","))

    with tempfile.TemporaryDirectory(prefix="bench_data_index_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        cols = synthesise(root, steps[-1])
        print(f"{steps[-1]} image files linked in {cols['links_s']:.1f}s under {root}")
        rows = []
        for n in steps:
            json_path = root / f"instances_train_{n}.json"
            t0 = time.perf_counter()
            anns = write_json(json_path, cols, n)
            write_s = time.perf_counter() - t0
            load = child(LOAD_CHILD.format(repo=str(REPO), json=str(json_path)))
            memory = child(MEMORY_CHILD.format(repo=str(REPO), json=str(json_path)))
            check_s, check_rss, rc, tail = run_check(json_path, root / f"check_{n}.log")
            if load["images"] != n or load["boxes"] != anns or load["problems"] or rc != 0:
                raise SystemExit(f"{n} images: loaded {load}, check exit {rc}:\n{tail}")
            rows.append((n, anns, json_path.stat().st_size / 2**20, write_s, load, memory, check_s, check_rss))
            print(f"  {n} images done (json written in {write_s:.1f}s)")

    header = ("images", "boxes", "json MB", "load_splits s", "read_coco s", "load peak RSS MB", "kept MB",
              "kept B/box", "check --no-images s", "check peak RSS MB")
    table = [header] + [
        (f"{n}", f"{anns}", f"{mb:.0f}", f"{load['load_s']:.2f}", f"{load['read_coco_s']:.2f}", f"{load['peak_rss_mb']:.0f}",
         f"{mem['kept_mb']:.0f}", f"{mem['kept_mb'] * 2**20 / anns:.0f}", f"{check_s:.2f}", f"{check_rss:.0f}")
        for n, anns, mb, _, load, mem, check_s, check_rss in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print()
    for k, r in enumerate(table):
        print("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    n, anns, _, _, load, mem, check_s, _ = rows[-1]
    print(f"\n{n} images: load_splits {load['load_s']:.1f}s (target <= {LOAD_TARGET_S:g}s: "
          f"{'met' if load['load_s'] <= LOAD_TARGET_S else 'MISSED'}), data check --no-images {check_s:.1f}s "
          f"(target <= {CHECK_TARGET_S:g}s: {'met' if check_s <= CHECK_TARGET_S else 'MISSED'})")
    if len(rows) > 1:
        per_box = [mem["kept_mb"] * 2**20 / a for _, a, _, _, _, mem, _, _ in rows]
        print(f"kept memory per box: {min(per_box):.0f}-{max(per_box):.0f} B across {rows[0][0]}-{rows[-1][0]} images (linear)")


if __name__ == "__main__":
    main()
