#!/usr/bin/env python
"""Grad-CAM example figure on a BCCD microscopy image -> docs/images/gradcam_bccd.png.

    python scripts/make_cam_figure.py --weights runs/train/bccd/weights/best.pt

Works with any retinadet checkpoint (``retinadet.load``); the image defaults to the first
image of BCCD's test split in the shared data folder beside the repository. Panels: the
image with its detections, then one Grad-CAM overlay per explained detection (best first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "datasets" / "bccd"


def default_image() -> Path:
    split = BCCD / "ImageSets" / "Main" / "test.txt"
    if split.is_file():
        ids = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
        if ids and (BCCD / "JPEGImages" / f"{ids[0]}.jpg").is_file():
            return BCCD / "JPEGImages" / f"{ids[0]}.jpg"
    images = sorted((BCCD / "JPEGImages").glob("*.jpg"))
    if not images:
        raise SystemExit(f"no BCCD images found under {BCCD}; pass --image")
    return images[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="a retinadet checkpoint (anything retinadet.load reads)")
    ap.add_argument("--image", default=None, help="image to explain [default: first BCCD test image]")
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "gradcam_bccd.png"))
    ap.add_argument("--conf", type=float, default=0.3)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "eigencam"])
    ap.add_argument("--layer", default="fpn", choices=["fpn", "all-fpn", "c3", "c4", "c5"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    import retinadet
    from retinadet.errors import RetinadetError
    from retinadet.explain.render import draw_box, image_to_numpy

    image = Path(args.image) if args.image else default_image()
    try:
        detector = retinadet.load(args.weights, device=args.device)
        exp = detector.explain(str(image), method=args.method, layer=args.layer, topk=args.topk, conf=args.conf)
    except RetinadetError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    base = image_to_numpy(exp.image)
    for box, name in zip(exp.all_detections.boxes.tolist(), exp.all_detections.names):
        base = draw_box(base, box, name)
    panels = [(base, f"{image.name}: {len(exp.all_detections)} detections (conf {args.conf:g})")]
    for i, ov in enumerate(exp.overlays):
        d = exp.detections
        panels.append((ov, f"#{int(exp.detection_index[i])} {d.names[i]} {float(d.scores[i]):.2f} (P{int(d.level[i]) + 3})"))
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    h, w = base.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows * h / w + 0.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, title) in zip(axes.ravel(), panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"retinadet {args.method} ({args.layer}, class-logit target) - {Path(args.weights).name}", fontsize=10)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out} ({len(exp)} detection(s) explained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
