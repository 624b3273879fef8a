#!/usr/bin/env python
"""Generate notebooks/retinanet_pipeline.ipynb from the cells below, execute it and save it with outputs.

    python scripts/build_notebook.py                 # regenerate, execute (kernel python3, cwd notebooks/), write
    python scripts/build_notebook.py --no-execute    # write the cells only (no outputs)

The notebook is the source of truth for readers; this file is the source of truth for the notebook:
edit the cells here, rebuild, and commit both. Execution runs offline on CPU with tiny settings.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NB_PATH = NB_DIR / "retinanet_pipeline.ipynb"
CELL_TIMEOUT_S = 300
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

CELLS: list = []


def md(text: str) -> None:
    CELLS.append(new_markdown_cell(textwrap.dedent(text).strip()))


def code(text: str) -> None:
    CELLS.append(new_code_cell(textwrap.dedent(text).strip()))


# --------------------------------------------------------------------------------------------- intro
md("""
    # The RetinaNet pipeline with `retinadet`

    From a dataset folder to COCO metrics, drawn predictions, imported weights and Grad-CAM, using the
    package's public API. Everything runs offline on a CPU in a temporary folder.

    **Real data, a short run.** The model is trained on **BCCD** (blood-cell microscopy, 364 images, Pascal VOC,
    shipped beside the repository in `../shared`) with the default recipe of `retinadet train --data bccd`,
    cut to a 240 s training budget (`time=240`) so that the notebook runs in a few minutes on any 2-core CPU;
    without BCCD it falls back to the built-in `shapes` data. Every figure printed is the one this run computed.
    A small freshly generated `shapes` copy (128 px) shows the dataset formats.
""")
code('''
    import io
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time
    import warnings
    from importlib.metadata import version
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")  # retinadet's plot writers force Agg anyway; figures are embedded by show() below
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from IPython.display import Image, display

    import retinadet

    T0 = time.perf_counter()
    WORK = Path(tempfile.mkdtemp(prefix="retinadet-notebook-"))
    os.environ["RETINADET_CACHE"] = str(WORK / "cache")  # keep generated data out of ~/.cache
    # The shared fixtures sit beside the repository (../shared from its root); this notebook runs in notebooks/.
    SHARED = Path("..", "..", "shared").resolve()
    BCCD = SHARED / "datasets" / "bccd"
    SEEDS = SHARED / "fixtures" / "seed-checkpoints"
    torch.manual_seed(0)
    # tqdm.auto asks for ipywidgets when imported in a kernel; every progress bar here is off anyway.
    warnings.filterwarnings("ignore", message="IProgress not found")


    def show(fig, dpi=72):
        """Embed a figure as a modest PNG (explicitly, so it works whatever backend is active)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        display(Image(buf.getvalue()))


    def imshow(ax, image, title=None):
        """A uint8 [3, H, W] tensor on an axis, without ticks."""
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=9)


    def log(message):
        """print() for the package's log lines, with the temporary folder shortened."""
        print(message.replace(str(WORK), "$WORK"))


    print(f"retinadet {version('retinadet')}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    print(f"work folder: {WORK}")
    print(f"shared fixtures: {SHARED if SHARED.is_dir() else 'not found (cells that need them will skip)'}")
''')

# --------------------------------------------------------------------------------------------- 1
md("""
    ## 1. Dataset sources

    Every format is read into one canonical form (image path and size, xyxy pixel boxes, contiguous labels,
    crowd flags, class names), so training and evaluation never care where the data came from:

    | format | layout |
    |---|---|
    | COCO JSON | a `.json` file, `annotations/*.json`, or a **Roboflow export**: `train/ valid/ test/`, each with `_annotations.coco.json` beside its images |
    | Pascal VOC | `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/{train,val,test}.txt` (`difficult` objects become crowd: ignored in loss and AP) |
    | YOLO txt | `images/ labels/` + `data.yaml` with class names; normalised `class cx cy w h` lines |
    | CSV | `path,x1,y1,x2,y2,class_name` rows + a `class_name,id` file |

    A dataset YAML (`train: ... val: ... names: [...]`) can combine any of them. The built-in **`shapes`**
    dataset (five filled shapes on textured backgrounds, ~10% empty images) is generated locally and written
    in the Roboflow COCO layout, so it goes through the same code path as user data. We write a small copy.
""")
code('''
    from retinadet.data.synthetic import CLASS_NAMES, ShapesConfig, write_shapes_dataset

    SHAPES = WORK / "shapes"
    stats = write_shapes_dataset(SHAPES, ShapesConfig(num_train=48, num_val=16, num_test=8, size=128), workers=1)
    print(f"shapes: {stats['images']} images written in {stats['seconds']:.1f} s; classes {CLASS_NAMES}")
    print(f"{SHAPES.name}/")
    for split_dir in sorted(SHAPES.iterdir()):
        images = sorted(split_dir.glob("*.jpg"))
        print(f"  {split_dir.name + '/':7} _annotations.coco.json + {len(images)} images ({images[0].name}, ...)")
''')
md("""
    `load_splits` detects the format of a path and returns every split it holds. Converting `shapes` to the
    other formats and reading each back shows that all of them land on the same records.
""")
code('''
    from retinadet.data import load_splits
    from retinadet.data.convert import convert



    def same_records(a, b):
        """Same images (by file name) with the same boxes (to half a pixel) and class names. Labels are
        compared by name: VOC stores no class list, so its class order is alphabetical."""
        other = {r.path.name: r for r in b.records}
        return len(a) == len(b) and all(
            r.path.name in other and np.allclose(r.boxes, other[r.path.name].boxes, atol=0.5)
            and [a.class_names[i] for i in r.labels] == [b.class_names[i] for i in other[r.path.name].labels]
            for r in a.records)


    splits = load_splits(SHAPES)
    sources = {"coco (Roboflow)": SHAPES}
    for fmt in ("voc", "yolo", "csv"):
        sources[fmt] = WORK / f"shapes_{fmt}"
        convert(SHAPES, sources[fmt], fmt)

    print(f"{'format':16} {'detected':10} {'images per split':34} {'boxes':>6}  same boxes as COCO")
    for fmt, path in sources.items():
        loaded = load_splits(path)
        per_split = ", ".join(f"{k} {len(v)}" for k, v in loaded.items())
        boxes = sum(sum(ds.boxes_per_class().values()) for ds in loaded.values())
        same = all(same_records(splits[k], loaded[k]) for k in splits)
        print(f"{fmt:16} {next(iter(loaded.values())).format:10} {per_split:34} {boxes:>6}  {same}")

    first_label = next(f for f in sorted((sources["yolo"] / "labels" / "train").glob("*.txt")) if f.stat().st_size)
    print(f"\\nYOLO line ({first_label.name}):", first_label.read_text().splitlines()[0])
    print("CSV rows: ", *(sources["csv"] / "train.csv").read_text().splitlines()[:2], sep="\\n  ")
''')
md("""
    **BCCD** (blood-cell microscopy, Pascal VOC, 364 images) is the real dataset used in the README's
    examples. It ships beside the repository in `../shared/datasets/bccd`; without it this cell only says so.
    Its two zero-size boxes are dropped on load and reported with their files.
""")
code('''
    if BCCD.is_dir():
        bccd = load_splits(BCCD)
        for name, ds in bccd.items():
            print(f"{name:9} {len(ds):4} images  {ds.format}  boxes per class {ds.boxes_per_class()}")
        for problem in sorted({str(p) for ds in bccd.values() for p in ds.problems}):
            print(" ", problem)
    else:
        bccd = None
        print(f"BCCD not found at {BCCD}: skipped (it ships beside the repository in ../shared)")
''')
md("""
    ### Bringing a Roboflow export

    In Roboflow choose *Export → COCO* and unzip it anywhere. The folder looks like this:

    ```
    my_export/
      train/_annotations.coco.json   + images
      valid/_annotations.coco.json   + images
      test/_annotations.coco.json    + images
    ```

    Point `--data` at the folder itself. Roboflow's extra id-0 parent category (it has no boxes and is the
    supercategory of the others) is dropped, and sparse category ids are mapped back in every output. Before
    training, run `retinadet data check my_export`: it decodes every image, lists each problem with its file and
    exits non-zero on errors. Our `shapes` copy has exactly this layout, so here is the real command on it:
""")
code('''
    check = subprocess.run([sys.executable, "-m", "retinadet", "data", "check", str(SHAPES), "--imgsz", "128"],
                           capture_output=True, text=True)
    log(check.stdout + check.stderr)
    print("exit code:", check.returncode)
''')

# --------------------------------------------------------------------------------------------- 2
md("""
    ## 2. Data preparation

    A loaded split is a list of `ImageRecord`s: boxes in the pixels of the file, labels indexing `class_names`.
    Images without boxes are kept as negatives; they teach the model what background looks like.
""")
code('''
    train = splits["train"]
    record = max(train.records[:20], key=lambda r: r.num_boxes)
    print(f"{record.path.name}: {record.width}x{record.height}, {record.num_boxes} boxes")
    for box, label in zip(record.boxes, record.labels):
        print(f"  {train.class_names[label]:9} xyxy {np.round(box, 1).tolist()}")
    print(f"train: {len(train)} images, {train.num_negatives()} without boxes, boxes per class {train.boxes_per_class()}")
''')
md("""
    `check_dataset` / `format_report` (what `retinadet data check` prints) on BCCD, or on `shapes` when BCCD is
    absent: per-split counts, box sizes before and after the model's resize, problems, and **anchor coverage**:
    the share of boxes whose best anchor reaches IoU 0.5, that is, boxes the model can learn at all at this input
    size. Low coverage is the first thing to fix when a model finds nothing.
""")
code('''
    from retinadet.data.check import check_dataset, format_report

    report = check_dataset(BCCD if BCCD.is_dir() else SHAPES)  # fast preset at its 288 px input
    print(format_report(report).replace(str(SHARED), "../shared"))
    print("\\nok (no errors):", report.ok)
    small = check_dataset(SHAPES, imgsz=128, verify_images=False)
    print(f"shapes at the 128 px used below: best anchor IoU >= 0.5 for {small.coverage_05:.1%} of {small.boxes_checked} boxes")
''')
md("""
    **Augmentation** runs on the `uint8` image and its boxes together (torchvision v2 transforms), so boxes stay
    aligned through flips, 90° rotations, IoU crops and scale jitter; boxes pushed out of the image are clipped
    or dropped and counted. `default` (flip, scale jitter 0.8-1.2, photometric) is what training uses;
    `strong` adds vertical flips, rotations and crops. Shown here at 256 px so the boxes are visible.
""")
code('''
    from retinadet.data import build_transform, read_image
    from retinadet.engine.plots import draw_boxes

    torch.manual_seed(3)
    rows = [(record, train.class_names)]
    if bccd is not None:
        rows.append((max(bccd["train"].records[:10], key=lambda r: r.num_boxes), bccd["train"].class_names))
    presets = ["default", "strong", "strong", "strong"]
    fig, axes = plt.subplots(len(rows), 1 + len(presets), figsize=(13, 2.8 * len(rows)), squeeze=False)
    for ax_row, (rec, names) in zip(axes, rows):
        image = read_image(rec.path)
        imshow(ax_row[0], draw_boxes(image, torch.from_numpy(rec.boxes), torch.from_numpy(rec.labels), names),
               f"original {image.shape[2]}x{image.shape[1]}\\n{rec.num_boxes} boxes")
        for ax, preset in zip(ax_row[1:], presets):
            tf = build_transform(preset, min_size=256, max_size=256)
            out, boxes, labels, _, st = tf(image, torch.from_numpy(rec.boxes), torch.from_numpy(rec.labels),
                                           torch.from_numpy(rec.crowd))
            imshow(ax, draw_boxes(out, boxes, labels, names),
                   f"{preset}: {len(boxes)} boxes\\n{st.clipped} clipped, {st.dropped} dropped")
    show(fig)
''')

# --------------------------------------------------------------------------------------------- 3
md("""
    ## 3. Model development

    RetinaNet is a one-stage detector: a **backbone** gives feature maps C3-C5 (strides 8, 16, 32); an **FPN**
    turns them into pyramid levels P3-P7 with the same channel count (P6 and P7 by strided convs); two small
    **heads**, shared across levels, predict for every anchor K class logits and 4 box deltas. Each level has
    9 **anchors** per location (3 scales x 3 aspect ratios); training matches them to boxes by IoU and applies
    **focal loss**. `describe` runs one dummy input and reports each stage, as `retinadet model summary` does.
    The `fast` preset (a quarter-width ResNet-18 from timm with a deep stem, 64-channel FPN and heads, 288 px)
    is the one trained below.
""")
code('''
    from retinadet.model import build_model
    from retinadet.model.retinanet import describe


    def summary(model, size=320):
        rows = describe(model, (size, size))
        params = {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6 for part in ("backbone", "fpn", "head")}
        print(f"{model.cfg.preset} on {model.backbone.name}, {size}x{size} input; parameters (M): "
              + ", ".join(f"{k} {v:.2f}" for k, v in params.items()))
        print(f"  {'stage':5} {'stride':>6} {'channels':>8} {'shape':>7} {'anchors':>8}")
        for r in rows:
            print(f"  {r['stage']:5} {r['stride']:6d} {r['channels']:8d} {'x'.join(map(str, r['shape'])):>7} {r.get('anchors', ''):>8}")
        return rows


    model = build_model("fast", num_classes=len(CLASS_NAMES))
    _ = summary(model)
''')
md("""
    **Swapping the backbone** changes only C3-C5: the FPN adapts its 1x1 lateral convs to the new channel counts
    and everything from P3 on keeps its shape. The taps are found automatically: from timm's `feature_info`,
    and for torchvision models by tracing the graph (the last node at each stride that every path crosses).
    Pass the name wherever a preset is accepted (`--model timm:efficientnet_b0`), or override it on a preset as here.
""")
code('''
    print(f"{'backbone':22} {'C3':>12} {'C4':>12} {'C5':>12}   P3..P7 channels   params (M)")
    for name in ["resnet18", "mobilenet_v3_large", "timm:efficientnet_b0"]:
        m = build_model("fast", num_classes=len(CLASS_NAMES), overrides={"backbone.name": name})
        rows = {r["stage"]: r for r in describe(m, (320, 320))}
        taps = [f"{rows[c]['channels']}@{'x'.join(map(str, rows[c]['shape']))}" for c in ("C3", "C4", "C5")]
        fpn = sorted({rows[f"P{i}"]["channels"] for i in range(3, 8)})
        params = sum(p.numel() for p in m.parameters()) / 1e6
        print(f"{name:22} {taps[0]:>12} {taps[1]:>12} {taps[2]:>12}   {fpn}                {params:6.2f}")
''')
md("""
    **Anchors** over a 128 px `shapes` image. Left: the 9 anchors at the centre location of P3, P4 and P5 (the
    `fast` preset uses base sizes 16-256 px, smaller than the paper's 32-512, for small inputs). Right: every
    ground-truth box with its best-matching anchor; a box whose best IoU stays under 0.5 never becomes a
    positive, which is what the coverage line of `data check` counts.
""")
code('''
    from torchvision.ops import box_iou

    from retinadet.model.anchors import feature_sizes_for, grid_anchors

    size = (record.height, record.width)
    levels = grid_anchors(model.cfg.anchors, size, feature_sizes_for(size))
    image = read_image(record.path).permute(1, 2, 0).numpy()
    colors = plt.cm.tab10(np.arange(5))


    def rect(ax, box, color, **kw):
        x1, y1, x2, y2 = box
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, **kw))


    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax in (left, right):
        ax.imshow(image)
        ax.set_xlim(-40, size[1] + 40)
        ax.set_ylim(size[0] + 40, -40)
    a = model.cfg.anchors.num_anchors
    for lvl in range(3):
        gh, gw = feature_sizes_for(size)[lvl]
        centre = ((gh // 2) * gw + gw // 2) * a
        for box in levels[lvl][centre:centre + a].tolist():
            rect(left, box, colors[lvl], lw=1)
        left.plot([], [], color=colors[lvl], label=f"P{lvl + 3}: base size {model.cfg.anchors.sizes[lvl]:g} px")
    left.legend(loc="lower left", fontsize=8)
    left.set_title("9 anchors per location (3 scales x 3 ratios)", fontsize=10)

    all_anchors = torch.cat(levels)
    level_of = torch.cat([torch.full((len(l),), i) for i, l in enumerate(levels)])
    gt = torch.from_numpy(record.boxes)
    best_iou, best = box_iou(gt, all_anchors).max(dim=1)
    for box, iou, idx in zip(gt.tolist(), best_iou.tolist(), best.tolist()):
        rect(right, box, "white", lw=2)
        rect(right, all_anchors[idx].tolist(), colors[int(level_of[idx])], lw=1.5, ls="--")
        right.text(box[0], box[1] - 2, f"{iou:.2f}", color="white", fontsize=8)
    right.set_title(f"best anchor per box: IoU >= 0.5 for {(best_iou >= 0.5).sum()}/{len(gt)}", fontsize=10)
    show(fig)
''')
md("""
    **Focal loss** is cross-entropy scaled by (1 - p_t)^gamma, where p_t is the probability given to the true
    class. A dense detector sees ~10^4 anchors per image, almost all easy background; with plain cross-entropy their
    many small losses swamp the few positives. Focal loss shrinks the loss of well-classified anchors
    (p_t > 0.5) by orders of magnitude while leaving hard ones almost untouched. Curves from
    `torchvision.ops.sigmoid_focal_loss` (alpha off, as in the paper's figure 1); our models use gamma 2, alpha 0.25.
""")
code('''
    import torch.nn.functional as F
    from torchvision.ops import sigmoid_focal_loss

    p = torch.linspace(0.005, 0.995, 199)
    logits, target = torch.logit(p), torch.ones_like(p)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(p, ce, "k--", lw=2, label="cross-entropy")
    for gamma in (0.5, 1, 2, 5):
        ax.plot(p, sigmoid_focal_loss(logits, target, alpha=-1, gamma=gamma, reduction="none"), label=f"focal, gamma={gamma}")
    ax.set_xlabel("probability of the true class (p_t)")
    ax.set_ylabel("loss")
    ax.set_ylim(0, 5)
    ax.legend()
    ax.grid(alpha=0.3)
    show(fig)

    fl0 = sigmoid_focal_loss(logits, target, alpha=-1, gamma=0, reduction="none")
    print(f"gamma=0 equals cross-entropy: max difference {(fl0 - ce).abs().max():.1e}")
    print(f"{'p_t':>5} {'CE':>8} {'FL gamma=2':>11} {'CE / FL':>8}")
    for pt in (0.1, 0.5, 0.9, 0.99):
        x = torch.logit(torch.tensor([pt]))
        c = F.binary_cross_entropy_with_logits(x, torch.ones(1)).item()
        f = sigmoid_focal_loss(x, torch.ones(1), alpha=-1, gamma=2, reduction="sum").item()
        print(f"{pt:5} {c:8.4f} {f:11.6f} {c / f:8.1f}x")
    print("this model's loss config:", model.cfg.loss)
''')

# --------------------------------------------------------------------------------------------- 4
md("""
    ## 4. Training pipeline

    `retinadet.train(...)` takes the same options as `retinadet train` and writes a run folder: the resolved config
    (`args.yaml`), a log, `results.csv` (losses, learning rate, the 12 COCO stats and time per epoch), `results.png`,
    validation outputs, and `weights/last.pt` (every epoch, resumable) and `weights/best.pt` (best val AP).
    The learning rate warms up, then follows a cosine per iteration.

    Here it is the `fast` preset on BCCD's train split (205 images, batch 8) with a training budget of 240 s
    (`time=240`, as `retinadet train --time 240`): the number of epochs and the learning-rate schedule are fitted to
    the budget from measured step times, so a slower CPU trains fewer epochs rather than taking longer. A budget under
    5 minutes affords no more pixels, so the input stays at the preset's 288 px (the full recipe fits 320 px to
    BCCD), and every epoch is validated. `best.pt` is chosen on val; the test split stays unseen until section 5.
    Without BCCD the run uses a 300-image `shapes` set instead.
    `progress=False` keeps the output to one line per epoch.
""")
code('''
    if BCCD.is_dir():
        DATA = BCCD
    else:  # the built-in data, written as a real run would find it
        DATA = WORK / "shapes_train"
        write_shapes_dataset(DATA, ShapesConfig(num_train=300, num_val=60, num_test=40), workers=1)
    t_train = time.perf_counter()
    result = retinadet.train(data=str(DATA), time=240, workers=0, seed=0, progress=False,
                             project=str(WORK / "runs"), name="cells")
    t_train = time.perf_counter() - t_train
    RUN = result.save_dir
    print(f"\\ndata: {'BCCD' if DATA == BCCD else 'shapes'}; trained {result.epochs_completed} epochs in {t_train:.0f} s")
    print("\\nfiles:", ", ".join(sorted(str(p.relative_to(RUN)) for p in RUN.rglob("*") if p.is_file() and "events" not in p.name)))
''')
code('''
    import csv

    with open(RUN / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = ["epoch", "loss_total", "loss_cls", "loss_box", "lr", "AP", "AP50", "AR100", "epoch_time"]
    print(" ".join(f"{c:>10}" for c in cols))
    for r in rows:
        print(" ".join(f"{float(r[c]):>10.4g}" for c in cols))
    display(Image(filename=str(RUN / "results.png"), width=800))
''')

# --------------------------------------------------------------------------------------------- 5
md("""
    ## 5. Evaluation metrics

    `retinadet.load(path)` returns a `Detector`; `.val()` runs it on the split recorded in the checkpoint and
    evaluates with pycocotools. It writes `metrics.json`, `predictions.json` (COCO results with the dataset's
    category ids), PR curves and a confusion matrix (at score >= `CONF`). Then, once, the held-out **test** split:
    the number to report, since `best.pt` was chosen on val.
""")
code('''
    CONF = 0.3  # score threshold for the confusion matrix, drawings and Grad-CAM below

    det = retinadet.load(RUN / "weights" / "best.pt")
    print(det)
    metrics = det.val(matrix_conf=CONF, save_dir=WORK / "val", progress=False, log=log)
    test_metrics = det.val(split="test", matrix_conf=CONF, save_dir=WORK / "test", plots=False, progress=False,
                           log=lambda *_: None)
    print(f"\\nval AP50 {metrics['AP50']:.3f} (AP {metrics['AP']:.3f}); test AP50 {test_metrics['AP50']:.3f} "
          f"(AP {test_metrics['AP']:.3f}) after {result.epochs_completed} epochs, {t_train:.0f} s")
''')
md("""
    **Against the full recipe.** The README reports the same preset on BCCD at its default length and the fitted
    320 px: test AP 0.587 / AP50 0.916 (`retinadet train --data ../shared/datasets/bccd`, 70 epochs; an estimated 9 minutes
    on the AVX-512 host of the README's figures, about 3x that on an AVX2-only one). The model above is a shortened
    version of that run; the extra epochs mostly tighten the boxes, which is what AP (IoU 0.50:0.95) rewards over AP50.
""")
md("""
    **The 12 COCO numbers.** AP is the area under the precision-recall curve, averaged over the classes. A
    detection is correct when its IoU with an unmatched ground-truth box of its class reaches a threshold;
    *AP* averages over 10 thresholds (0.50, 0.55, ..., 0.95), so it rewards tight boxes, while *AP50* is the
    lenient PASCAL VOC number. The size variants split the boxes by area in the original image: small < 32²,
    medium 32²-96², large > 96² pixels. AR is the recall reached with at most 1, 10 or 100 detections per image.
    A value of -1 means the split has no ground truth in that range. Here is each one on our numbers:
""")
code('''
    from retinadet.engine.evaluate import STAT_NAMES

    meaning = {
        "AP": "mean AP over IoU 0.50:0.95 (COCO's headline number; best.pt is chosen by it)",
        "AP50": "AP at IoU 0.50 (PASCAL VOC style, lenient on box placement)",
        "AP75": "AP at IoU 0.75 (strict: tight boxes only)",
        "APs": "AP on small boxes (area < 32^2 px)", "APm": "AP on medium boxes (32^2 to 96^2 px)",
        "APl": "AP on large boxes (area > 96^2 px)",
        "AR1": "recall with the single best detection per image", "AR10": "recall with the top 10 per image",
        "AR100": "recall with the top 100 per image", "ARs": "AR100 on small boxes", "ARm": "AR100 on medium boxes",
        "ARl": "AR100 on large boxes",
    }
    val_records = load_splits(DATA)["val"]
    areas = np.concatenate([(r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1]) for r in val_records.records])
    sizes = {"small": int((areas < 32**2).sum()), "medium": int(((areas >= 32**2) & (areas <= 96**2)).sum()),
             "large": int((areas > 96**2).sum())}
    for name in STAT_NAMES:
        print(f"{name:6} {metrics[name]:7.4f}  {meaning[name]}")
    print(f"\\nval ground truth by size: {sizes}; a size with no boxes gives -1 for its AP and AR")
    print(f"AP50 / AP = {metrics['AP50'] / max(metrics['AP'], 1e-9):.1f} (1 would mean every correct box is also tight)")
    print("per-class AP50:", {k: round(v, 4) for k, v in metrics["per_class_AP50"].items()})
''')
md("""
    **PR curve and confusion matrix** (from the `val` outputs). Each PR curve is precision against recall at IoU
    0.5 as the score threshold falls; its area is the class's AP50. In the confusion matrix, rows are predicted
    classes and columns true classes, at IoU 0.5 and score >= `CONF`: the *background* column counts false
    positives, the *background* row missed boxes.
""")
code('''
    val_dir = Path(metrics["save_dir"])
    print(sorted(p.name for p in val_dir.iterdir()))
    display(Image(filename=str(val_dir / "PR_curves.png"), width=420), Image(filename=str(val_dir / "confusion_matrix.png"), width=420))
''')

# --------------------------------------------------------------------------------------------- 6
md("""
    ## 6. Inference pipeline

    `Detector.predict` takes paths, PIL images, numpy arrays or tensors (one or a list) and returns
    `Detections` with boxes in the **original** image's pixels, whatever the model's input size. Below: the
    labels (top) against every prediction at score >= `CONF` (bottom) on four test images.
""")
code('''
    test = load_splits(DATA)["test"]
    shown = test.records[:4]
    preds = det.predict([r.path for r in shown], conf=CONF)
    fig, axes = plt.subplots(2, len(shown), figsize=(2.6 * len(shown), 5.4))
    for i, (rec, pred) in enumerate(zip(shown, preds)):
        image = read_image(rec.path)
        imshow(axes[0, i], draw_boxes(image, torch.from_numpy(rec.boxes), torch.from_numpy(rec.labels), test.class_names),
               f"labels: {rec.num_boxes}")
        imshow(axes[1, i], draw_boxes(image, pred.boxes, pred.labels, det.class_names, pred.scores),
               f"{len(pred)} predictions" if len(pred) else "no detections")
    show(fig, dpi=90)

    best = max(preds, key=len)
    print(f"{Path(best.source).name}: {len(best)} detections >= {CONF}")
    for rec in best.to_records()[:5]:
        print(f"  {rec['class_name']:9} score {rec['score']:.3f}  xywh {[round(v, 1) for v in rec['bbox']]}")
''')
md("""
    `retinadet predict --weights best.pt --source images/` is the batch route, here called from Python: it writes
    one annotated image per input and `predictions.json` (COCO results plus `file_name` and class name, boxes in
    original pixels), and prints the counts per class.
""")
code('''
    from retinadet.engine.predict import predict

    listing = WORK / "test_images.txt"  # a .txt list of paths is a source too
    listing.write_text("".join(f"{r.path}\\n" for r in test.records))
    out = predict(det, listing, conf=CONF, project=str(WORK / "runs"), name="predict", progress=False, log=log)
    pred_dir = Path(out["save_dir"])
    records = json.loads((pred_dir / "predictions.json").read_text())
    print(f"\\n{len(records)} records in predictions.json; the first two:")
    log(json.dumps(records[:2], indent=1))
''')

# --------------------------------------------------------------------------------------------- 7
md("""
    ## 7. Loading pretrained weights

    `retinadet.load` and `retinadet weights info` read three kinds of weights.

    **Our checkpoints** hold the weights, the full model config (input size and normalisation included), class
    names, category ids and metrics, as plain tensors and builtins: they load with `torch.load(weights_only=True)`,
    so loading one never runs code. `last.pt` also carries the optimizer, scheduler and RNG state for `--resume`.
""")
code('''
    from retinadet.weights import export_safetensors, format_info, load_checkpoint, read_weights

    best_pt = RUN / "weights" / "best.pt"
    # Of the metrics stored in the file, only AP and AP50 are listed here (section 5 has them all).
    log("\\n".join(line for line in format_info(read_weights(best_pt)).splitlines()
                   if not line.startswith("metric:") or line.split()[1] in ("AP", "AP50")))
    ckpt = torch.load(best_pt, map_location="cpu", weights_only=True)
    print("\\nkeys:", sorted(ckpt))
    print("input size:", ckpt["model_config"]["preprocess"]["min_size"], "px; classes:", ckpt["class_names"])

    # A safetensors export holds the same weights and metadata; predictions are identical.
    st = retinadet.load(export_safetensors(load_checkpoint(best_pt), WORK / "best.safetensors"))
    a, b = det.predict(shown[0].path, conf=CONF), st.predict(shown[0].path, conf=CONF)
    print(f"safetensors round trip: {len(a)} vs {len(b)} detections, identical boxes: {torch.equal(a.boxes, b.boxes)}")
''')
md("""
    **torchvision's COCO RetinaNet** (`retinanet_resnet50_fpn`, v1, and `_v2`) imports into the
    `retinanet_resnet50_fpn` preset with its 91-id COCO label space. Online, `retinadet weights import
    torchvision:retinanet_resnet50_fpn_coco -o coco.pt` downloads the file; offline you place it yourself. To stay
    offline here we build the model with random weights (`weights=None, weights_backbone=None`), save its
    `state_dict` and import that file: the same path the real COCO file takes. Both models then give the same raw
    outputs for the same input.
""")
code('''
    from torchvision.models.detection import retinanet_resnet50_fpn

    from retinadet.weights import import_weights, save_checkpoint

    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    tv_file = WORK / "retinanet_resnet50_fpn_coco.pth"
    torch.save(tv.state_dict(), tv_file)
    log(format_info(read_weights(tv_file)))

    coco = retinadet.load(save_checkpoint(WORK / "coco.pt", import_weights(tv_file, source="torchvision")))
    print(f"\\n{coco.cfg.preset}: {len(coco.class_names)} classes ({', '.join(coco.class_names[1:6])}, ...)")
    x = torch.randn(1, 3, 256, 320)  # an already-normalised input
    with torch.no_grad():
        head = tv.head(list(tv.backbone(x).values()))
        cls_logits, box_deltas, _, _ = coco.model.forward_raw(x)
    print(f"max |difference| vs torchvision: class logits {(cls_logits - head['cls_logits']).abs().max():.1e}, "
          f"box deltas {(box_deltas - head['bbox_regression']).abs().max():.1e} over {cls_logits.shape[1]} anchors")
    del tv, coco
''')
md("""
    **Seed pipeline checkpoints** (the training scripts this project replaces) come as a plain `state_dict`, a
    whole pickled module or a pickled `DataParallel`. The pickled ones are read by a restricted unpickler that maps
    the seed's classes to inert stand-ins and rebuilds only tensors (any other global is refused by name). Seed files
    store no class names, so you pass them. The fixtures in `../shared/fixtures/seed-checkpoints` hold random
    weights plus the seed model's own outputs for one input, which the imported model must reproduce.
""")
code('''
    if SEEDS.is_dir():
        for name in ("seed_resnet18_state_dict.pt", "seed_resnet18_module.pt", "seed_resnet18_dataparallel.pt"):
            info = read_weights(SEEDS / name)
            print(f"{name:31} {info.kind:18} {info.description}")
        seed = retinadet.load(SEEDS / "seed_resnet18_module.pt", class_names=["a", "b", "c"])
        print(f"\\nloaded as {seed}")
        expected = np.load(SEEDS / "expected_outputs.npz")
        with torch.no_grad():
            cls_logits, box_deltas, anchors, _ = seed.model.forward_raw(torch.from_numpy(expected["input"]))
        for what, ours, theirs in [("class probabilities", torch.sigmoid(cls_logits), expected["cls_probs"]),
                                   ("box deltas", box_deltas, expected["box_deltas"]),
                                   ("anchors", anchors[None], expected["anchors"])]:
            print(f"{what:20} max |ours - seed| = {np.abs(ours.numpy() - theirs).max():.1e}  {tuple(theirs.shape)}")
    else:
        print(f"seed fixtures not found at {SEEDS}: skipped (they ship beside the repository in ../shared)")
''')

# --------------------------------------------------------------------------------------------- 8
md("""
    ## 8. Grad-CAM

    `Detector.explain` shows which pixels drove a detection: it back-propagates the detection's own pre-NMS class
    logit (the exact anchor and class it came from) to the pyramid level that produced it, weights that level's
    channels by their mean gradient, keeps the positive part and maps the heatmap to the original image. `gradcam++`
    and the gradient-free `eigencam` are also available (`retinadet cam` writes the same overlays to files). Each
    overlay below explains one detected cell, drawn with its box: the heat should sit on that cell. An image
    without detections above `CONF` is reported, not fatal.
""")
code('''
    from retinadet.explain import NoDetectionsError

    target = max(test.records, key=lambda r: r.num_boxes)
    try:
        exp = det.explain(target.path, method="gradcam", topk=4, conf=CONF)
    except NoDetectionsError as err:
        print(f"nothing to explain: {err}")
    else:
        print(f"{target.path.name}: {len(exp.all_detections)} detections >= {CONF}; explaining the top {len(exp)} "
              f"(forward {exp.timing['forward_ms']:.0f} ms, backward {np.mean(exp.timing['backward_ms']):.0f} ms per detection)")
        fig, axes = plt.subplots(1, len(exp) + 1, figsize=(3 * (len(exp) + 1), 3.2))
        imshow(axes[0], draw_boxes(read_image(target.path), torch.from_numpy(target.boxes), torch.from_numpy(target.labels),
                                   test.class_names), "labels")
        for ax, tile, text, level in zip(axes[1:], exp.overlays, exp.labels_text(), exp.detections.level.tolist()):
            ax.imshow(tile)
            ax.set_axis_off()
            ax.set_title(f"{text} (P{level + 3})", fontsize=9)
        show(fig, dpi=90)
''')
# --------------------------------------------------------------------------------------------- 9
md("""
    ## 9. FROC and the operating point

    Screening teams report sensitivity at a fixed false-positive rate, not COCO AP. `val` computes the **FROC**:
    the share of boxes (lesions) found at 1/8 to 8 false positives per image, and their mean, with a 95% bootstrap
    interval over images. `operating_point="fppi=1"` then picks a score threshold per class on the val split;
    `save_thresholds=True` would store them in the checkpoint for `predict` and the ONNX export. Measured on the
    held-out test split, the same thresholds show what to expect on new images. `val` also writes `report.html`,
    one self-contained page with every figure of this notebook's sections 5 and 9.
""")
code('''
    chosen = det.val(operating_point="fppi=1", matrix_conf=CONF, save_dir=WORK / "val_op", progress=False, log=lambda *_: None)
    f = chosen["froc"]
    print(f"FROC score (val, hit {f['hit']}): {f['score']:.3f}, 95% CI [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]")
    print("sensitivity at", ", ".join(f"{p:g} FP/image: {v:.3f}" for p, v in zip(f["fppi"], f["sensitivity"])))
    thresholds = {k: v["threshold"] for k, v in chosen["operating_point"]["per_class"].items()}

    from retinadet.engine.froc import HitRule, match_lesions
    from retinadet.engine.operating_point import at_thresholds
    from retinadet.engine.evaluate import evaluate

    test_split = load_splits(DATA)["test"]
    test_match = match_lesions(test_split, evaluate(det.model, test_split).detections, HitRule.parse("iou:0.5"))
    on_test = at_thresholds(test_match, test_split.class_names, thresholds)
    print(f"\\n{'class':10} {'threshold':>9}  {'val sens.':>9} {'val FP/img':>10}  {'test sens.':>10} {'test FP/img':>11}")
    for name, r in chosen["operating_point"]["per_class"].items():
        t = on_test[name]
        print(f"{name:10} {r['threshold']:9.3f}  {r['sensitivity']:9.3f} {r['fppi']:10.3f}  {t['sensitivity']:10.3f} {t['fppi']:11.3f}")
    display(Image(filename=str(WORK / "val_op" / "FROC.png"), width=560))
    print("report:", (WORK / "val_op" / "report.html").relative_to(WORK), f"({(WORK / 'val_op' / 'report.html').stat().st_size / 1e6:.1f} MB)")
''')
md("""
    The temporary folder (dataset, run, imported weights) is removed at the end.
""")
code('''
    import shutil

    shutil.rmtree(WORK, ignore_errors=True)
    print(f"notebook ran in {time.perf_counter() - T0:.0f} s")
''')


def build() -> nbformat.NotebookNode:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def strip_ansi(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = ANSI.sub("", out["text"])
            if "traceback" in out:
                out["traceback"] = [ANSI.sub("", t) for t in out["traceback"]]


def execute(nb: nbformat.NotebookNode) -> float:
    from nbclient import NotebookClient

    NB_DIR.mkdir(exist_ok=True)  # the kernel's working directory
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NB_DIR)}}).execute()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    ap.add_argument("--out", default=str(NB_PATH))
    args = ap.parse_args(argv)
    nb = build()
    if not args.no_execute:
        from nbclient.exceptions import CellExecutionError

        try:
            seconds = execute(nb)
        except CellExecutionError:
            # Keep what ran, for inspection; the committed notebook is left untouched.
            failed = Path(tempfile.gettempdir()) / "retinanet_pipeline.failed.ipynb"
            strip_ansi(nb)
            nbformat.write(nb, failed)
            print(f"execution failed; the partly executed notebook is in {failed}", file=sys.stderr)
            raise
        strip_ansi(nb)
        print(f"executed in {seconds:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
