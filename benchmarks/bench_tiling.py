"""Benchmark: sliced (tiled) inference against whole-image inference and SAHI, side by side in one run.

Part B (BCCD mosaics): the BCCD test fields (640x480) laid out 3x3 into 1920x1440 mosaics, boxes shifted with
them, so the reference bar is the same model on the fields one by one. Rows: the fields whole; ours sliced
(``tile="auto"``: tiles at the training scale; 640 px squares with NMS and with greedy-nmm); the whole mosaic at the
training scale (``imgsz``) and at the model's own size; SAHI's ``get_sliced_prediction`` around the same model
(each slice through ``Detector.predict(slice, tile=None)``) with each of its merges. Each row: COCO AP50 and AP
(maxDets following the cap, so a mosaic's 100-200 cells are not cut to 100) and images/s (wall time of inference
alone, images decoded beforehand, the same threads and batch for all; the best of ``--rounds`` rounds, each over all
rows in turn, so that drift in the machine's load hits every row alike).

Part A (shapes-large): a model trained tiled on the ~2000 px ``shapes-large`` images, validated sliced
(``tile="auto"``) and whole.

    python benchmarks/bench_tiling.py --part B --bccd-weights runs/train/bccd/weights/best.pt --threads 2
    python benchmarks/bench_tiling.py --part A --shapes-weights runs/train/shapes-large/weights/best.pt

Without weights each part trains its model first (BCCD: ``fast``, 30 epochs, ~200 s on 2 cores) into
``--project``. Prints markdown tables; ``--out`` also saves the numbers as JSON. Needs SAHI for part B's SAHI
rows (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import retinadet
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.engine.datasets import eval_split
from retinadet.engine.evaluate import coco_eval, coco_max_dets
from retinadet.engine.train_scale import describe_scale, training_scale
from retinadet.structures import Detections
from retinadet.utils.tiling import TileOptions, plan_tiles

DEFAULT_BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"
GRID = 3  # fields per mosaic side
quiet = lambda *_: None  # noqa: E731


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["A", "B", "all"], default="all")
    p.add_argument("--bccd-weights", help="a BCCD model (default: train one, fast preset)")
    p.add_argument("--bccd-data", default=str(DEFAULT_BCCD))
    p.add_argument("--bccd-epochs", type=int, default=30, help="when training the BCCD model")
    p.add_argument("--shapes-weights", help="a model trained tiled on shapes-large (default: train one)")
    p.add_argument("--shapes-split", default="val")
    p.add_argument("--train-tile", type=int, default=320, help="tile of shapes-large training (original px)")
    p.add_argument("--train-epochs", type=int, default=12, help="epochs of shapes-large training")
    p.add_argument("--project", default="runs/bench_tiling", help="where models are trained when no weights are given")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch", type=int, default=8, help="images (ours) and slices (SAHI) per forward pass")
    p.add_argument("--rounds", type=int, default=2, help="part B: timing rounds over all rows (best wall of each row)")
    p.add_argument("--mosaics", type=int, help="part B: at most this many mosaics (default: all the test split makes)")
    p.add_argument("--out", help="also write the numbers to this JSON file")
    return p.parse_args()


def timed(fn, *args, **kwargs):
    """fn's result and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


# --- Part B: BCCD mosaics -------------------------------------------------------------------------------------


def bccd_detector(args, notes: list[str]):
    if args.bccd_weights:
        weights = args.bccd_weights
    else:
        result = retinadet.train(data=args.bccd_data, epochs=args.bccd_epochs, project=args.project, name="bccd",
                                 exist_ok=True, progress=False, plots=False)
        weights = str(result.best)
        notes.append(f"trained {weights} ({result.epochs_completed} epochs)")
    det = retinadet.load(weights, device="cpu")
    if det.scale is None:  # trained before checkpoints recorded their scale
        train = eval_split(args.bccd_data, "train")
        det.checkpoint["scale"] = training_scale(train, det.cfg.preprocess, (0.8, 1.2)).to_dict()
        notes.append(f"{weights} records no training scale: computed from the train split with jitter (0.8, 1.2)")
    notes.append(f"{weights}: {describe_scale(det.scale)}")
    return det, weights


def build_mosaics(test: DatasetRecords, limit: int | None = None):
    """(fields, their records, mosaics, their records): the test images of the commonest size, GRID x GRID per
    mosaic (at most ``limit`` mosaics), row-major, boxes shifted with their field."""
    (fh, fw), _ = collections.Counter((r.height, r.width) for r in test.records).most_common(1)[0]
    recs = [r for r in test.records if (r.height, r.width) == (fh, fw)]
    count = len(recs) // GRID**2 if limit is None else min(limit, len(recs) // GRID**2)
    recs = recs[:count * GRID**2]
    fields = [read_image(r.path) for r in recs]
    mosaics, mrecs = [], []
    for m in range(len(recs) // GRID**2):
        canvas = torch.zeros(3, GRID * fh, GRID * fw, dtype=torch.uint8)
        boxes, labels, crowd = [], [], []
        for k in range(GRID**2):
            r, img = recs[m * GRID**2 + k], fields[m * GRID**2 + k]
            y, x = (k // GRID) * fh, (k % GRID) * fw
            canvas[:, y:y + fh, x:x + fw] = img
            boxes.append(r.boxes + np.array([x, y, x, y], dtype=np.float32))
            labels.append(r.labels)
            crowd.append(r.crowd)
        mosaics.append(canvas)
        mrecs.append(ImageRecord(Path(f"mosaic{m}.png"), GRID * fw, GRID * fh, np.concatenate(boxes), np.concatenate(labels),
                                 np.concatenate(crowd), m + 1))
    field_data = DatasetRecords(recs, test.class_names, test.category_ids)
    return fields, field_data, mosaics, DatasetRecords(mrecs, test.class_names, test.category_ids)


def sahi_model(det):
    """Our Detector as a SAHI DetectionModel: each slice through ``Detector.predict(..., tile=None)`` at SAHI's
    confidence threshold, a batch of slices at a time (``get_sliced_prediction(batch_size=...)``)."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
    from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list

    class RetinadetModel(DetectionModel):
        def set_model(self, model, **kwargs):
            self.model = model

        def _predict(self, images: list[np.ndarray]) -> None:
            tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
            self._original_predictions = self.model.predict(tensors, tile=None, conf=self.confidence_threshold,
                                                            batch_size=len(tensors))

        def perform_inference(self, image: np.ndarray) -> None:
            self._predict([image])

        def perform_batch_inference(self, images: list[np.ndarray]) -> None:
            self._predict(images)
            self._batch_images = None  # inferred already: convert_original_predictions takes its batch path

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None, full_shape_list=None):
            shifts, shapes = fix_shift_amount_list(shift_amount_list), fix_full_shape_list(full_shape_list)
            names = self.model.class_names
            self._object_prediction_list_per_image = [
                [ObjectPrediction(bbox=b, category_id=k, category_name=names[k], score=s, shift_amount=shifts[i],
                                  full_shape=shapes[i] if shapes else None)
                 for b, s, k in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist())]
                for i, d in enumerate(self._original_predictions)]

    return RetinadetModel(model=det, device="cpu", confidence_threshold=det.cfg.inference.score_thresh,
                          category_mapping={str(i): n for i, n in enumerate(det.class_names)})


def run_sahi(model, arrays: list[np.ndarray], slice_hw, overlap_hw, kind: str, metric: str, batch: int,
             conf: float | None = None) -> list[list]:
    from sahi.predict import get_sliced_prediction

    return [get_sliced_prediction(a, model, slice_height=slice_hw[0], slice_width=slice_hw[1],
                                  overlap_height_ratio=overlap_hw[0], overlap_width_ratio=overlap_hw[1],
                                  perform_standard_pred=False, postprocess_type=kind, postprocess_match_metric=metric,
                                  postprocess_match_threshold=0.5, postprocess_class_agnostic=False, verbose=0,
                                  batch_size=batch, force_postprocess_type=True,  # else SAHI turns merges into NMS at conf < 0.1
                                  confidence_threshold=conf).object_prediction_list for a in arrays]


def sahi_detections(preds: list, size, names) -> Detections:
    n = len(preds)
    boxes = torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float32).reshape(n, 4)
    zeros = torch.zeros(n, dtype=torch.int64)
    return Detections(boxes, torch.tensor([p.score.value for p in preds], dtype=torch.float32),
                      torch.tensor([p.category.id for p in preds], dtype=torch.int64), zeros, zeros.clone(), size, list(names))


def part_b(args) -> dict:
    notes: list[str] = []
    det, weights = bccd_detector(args, notes)
    test = eval_split(args.bccd_data, "test")
    fields, field_data, mosaics, mosaic_data = build_mosaics(test, args.mosaics)
    h, w = mosaics[0].shape[-2:]
    fh, fw = fields[0].shape[-2:]
    scale, inf = det.scale, det.cfg.inference
    auto = plan_tiles(h, w, det.cfg.preprocess, scale, TileOptions())
    imgsz = int(round(scale.resize_scale * max(h, w)))
    mpx = sum(int(m.shape[-1] * m.shape[-2]) for m in mosaics) / 1e6

    def grid_count(tile, overlap):
        return len(plan_tiles(h, w, det.cfg.preprocess, scale, TileOptions.parse(tile, overlap)).grid(h, w))

    # Rows: (name, records, COCO cap (None: the most any image has), tiles per image, inference -> list of Detections).
    predict = partial(det.predict, batch_size=args.batch)
    specs = [
        (f"the {len(fields)} fields ({fw}x{fh}) one by one, whole: the bar", field_data, inf.max_det, 1,
         partial(predict, fields, tile=None)),
        (f"ours, tile auto ({auto.text()}, overlap {auto.overlap[1]}x{auto.overlap[0]} px), NMS/IoU {inf.nms_iou:g}", mosaic_data,
         None, len(auto.grid(h, w)), partial(predict, mosaics, tile="auto")),
        (f"ours, tile 640, overlap 0.2, NMS/IoU {inf.nms_iou:g}", mosaic_data, None, grid_count(640, 0.2),
         partial(predict, mosaics, tile=640, tile_overlap=0.2, tile_merge="nms", tile_match="iou")),
        ("ours, tile 640, overlap 0.2, greedy-nmm/IoS 0.5", mosaic_data, None, grid_count(640, 0.2),
         partial(predict, mosaics, tile=640, tile_overlap=0.2, tile_merge="greedy-nmm", tile_match="ios", tile_threshold=0.5)),
        (f"whole mosaic at the training scale (imgsz {imgsz}, no max_det)", mosaic_data, None, 1,
         partial(predict, mosaics, tile=None, imgsz=imgsz, max_det=None)),
        (f"whole mosaic at the model's size ({det.cfg.preprocess.max_size} px, max_det {inf.max_det}): main before", mosaic_data,
         inf.max_det, 1, partial(predict, mosaics, tile=None)),
    ]
    warm = [partial(predict, fields[:args.batch], tile=None), partial(predict, mosaics[:1], tile=None, imgsz=imgsz)]
    try:
        import sahi
        from sahi.slicing import get_slice_bboxes
    except ImportError:
        notes.append("SAHI is not installed (pip install sahi): its rows are left out")
        sahi = None
    if sahi is not None:
        model = sahi_model(det)
        arrays = [m.permute(1, 2, 0).contiguous().numpy() for m in mosaics]
        warm.append(partial(run_sahi, model, [arrays[0][:fh, :fw]], (fh, fw), (0.2, 0.2), "NMS", "IOU", args.batch))
        square, ours_geometry = ((640, 640), (0.2, 0.2)), (auto.tile, (auto.overlap[0] / auto.tile[0], auto.overlap[1] / auto.tile[1]))
        # The last two: SAHI as it runs by default, one slice per forward pass (get_sliced_prediction's batch_size=1).
        settings = [("NMS", "IOU", square, None, args.batch), ("GREEDYNMM", "IOS", square, None, args.batch),
                    ("NMM", "IOS", square, None, args.batch), ("GREEDYNMM", "IOS", square, 0.25, args.batch),
                    ("NMS", "IOU", ours_geometry, None, args.batch), ("NMS", "IOU", square, None, 1),
                    ("NMS", "IOU", ours_geometry, None, 1)]
        for kind, metric, (slice_hw, overlap_hw), conf, batch in settings:
            name = (f"SAHI {sahi.__version__}, {slice_hw[1]}x{slice_hw[0]} slices, overlap {overlap_hw[1]:.2g}x{overlap_hw[0]:.2g}, "
                    f"{kind}/{metric} 0.5, conf {inf.score_thresh if conf is None else conf:g}, {batch} slice(s) a pass")
            if (kind, metric, conf) == ("GREEDYNMM", "IOS", None):
                name += " (SAHI's default merge)"
            n = len(get_slice_bboxes(h, w, slice_hw[0], slice_hw[1], False, overlap_hw[0], overlap_hw[1]))
            specs.append((name, mosaic_data, None, n, partial(run_sahi, model, arrays, slice_hw, overlap_hw, kind, metric,
                                                              batch, conf)))

    for fn in warm:  # oneDNN kernels, anchors, SAHI's lazy imports
        fn()
    # Rounds over all rows in turn, so that drift in the machine's load hits every row alike; each row's best wall.
    found: list = [None] * len(specs)
    walls = [[] for _ in specs]
    busy = [[] for _ in specs]
    for _ in range(max(1, args.rounds)):
        for i, spec in enumerate(specs):
            cpu0 = time.process_time()
            out, wall = timed(spec[4])
            walls[i].append(wall)
            busy[i].append((time.process_time() - cpu0) / (wall * args.threads))
            if found[i] is None:
                found[i] = out
    rows: list[dict] = []
    for (name, data, cap, tiles, _), out, wall, cpu in zip(specs, found, walls, busy):
        dets = [d if isinstance(d, Detections) else sahi_detections(d, (h, w), det.class_names) for d in out]
        by_id = {int(r.image_id): d for r, d in zip(data.records, dets)}
        max_dets = coco_max_dets(by_id, cap)
        stats, _ = coco_eval(data, by_id, max_dets)
        best = min(wall)
        rows.append({"row": name, "images": len(dets), "tiles_per_image": tiles, "detections": sum(len(d) for d in dets),
                     "AP50": stats["AP50"], "AP": stats["AP"], "max_dets": max_dets, "wall_s": best, "walls_s": wall,
                     "cpu_busy": cpu[wall.index(best)], "images_per_s": len(dets) / best, "mpx_per_s": mpx / best})

    print(f"\n## Part B: {len(mosaics)} BCCD mosaics of {GRID}x{GRID} test fields ({w}x{h}), {weights}")
    for note in notes:
        print(f"- {note}")
    print(f"- {args.threads} threads, batch {args.batch}, best wall of {max(1, args.rounds)} round(s) over all rows in turn; "
          "CPU busy: the process's CPU time over wall x threads in that round (well under 1: the machine was shared); "
          "AP at COCO maxDets following the cap (the maxDets column)\n")
    print("| row | images | tiles/image | detections | AP50 | AP | maxDets | wall s | CPU busy | images/s | Mpx/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['images']} | {r['tiles_per_image']} | {r['detections']} | {r['AP50']:.3f} | {r['AP']:.3f} | "
              f"{r['max_dets']} | {r['wall_s']:.1f} | {r['cpu_busy']:.2f} | {r['images_per_s']:.2f} | {r['mpx_per_s']:.2f} |")
    bar, ours_auto = rows[0], rows[1]
    ratios = {"auto_minus_fields_AP50": ours_auto["AP50"] - bar["AP50"],
              "auto_over_fields_mpx_per_s": ours_auto["mpx_per_s"] / bar["mpx_per_s"]}
    print()
    sahi_rows = [r for r in rows if r["row"].startswith("SAHI")]
    if sahi_rows:
        best = max(sahi_rows, key=lambda r: r["AP50"])
        ratios.update(best_sahi=best["row"], auto_minus_best_sahi_AP50=ours_auto["AP50"] - best["AP50"],
                      auto_over_best_sahi_images_per_s=ours_auto["images_per_s"] / best["images_per_s"])
        print(f"- ours (tile auto) against the best SAHI setting by AP50 ({best['row']}): AP50 "
              f"{ratios['auto_minus_best_sahi_AP50']:+.3f}, AP {ours_auto['AP'] - best['AP']:+.3f}, "
              f"images/s {ratios['auto_over_best_sahi_images_per_s']:.2f}x")
        default = [r for r in sahi_rows if r["row"].endswith("1 slice(s) a pass") and "640x480" in r["row"]]
        if default:
            ratios["auto_over_sahi_one_slice_images_per_s"] = ours_auto["images_per_s"] / default[0]["images_per_s"]
            print(f"- ours (tile auto) against SAHI with the same slices, one slice a pass (its default): images/s "
                  f"{ratios['auto_over_sahi_one_slice_images_per_s']:.2f}x, AP50 {ours_auto['AP50'] - default[0]['AP50']:+.3f}")
    print(f"- ours (tile auto) against the fields one by one: AP50 {ratios['auto_minus_fields_AP50']:+.3f} "
          f"(throughput in Mpx/s {ratios['auto_over_fields_mpx_per_s']:.2f}x)")
    return {"weights": weights, "notes": notes, "threads": args.threads, "batch": args.batch, "rounds": max(1, args.rounds),
            "rows": rows, "ratios": ratios}


# --- Part A: shapes-large -------------------------------------------------------------------------------------


def part_a(args) -> dict:
    notes: list[str] = []
    if args.shapes_weights:
        weights = args.shapes_weights
    else:
        result = retinadet.train(data="shapes-large", tile=args.train_tile, epochs=args.train_epochs, batch=8,
                                 project=args.project, name="shapes-large", exist_ok=True, progress=False, plots=False)
        weights = str(result.best)
        notes.append(f"trained {weights} tiled ({args.train_tile} px tiles, {result.epochs_completed} epochs)")
    det = retinadet.load(weights, device="cpu")
    if det.scale is None:
        notes.append(f"{weights} records no training scale: tile auto cannot slice (it needs one)")
    else:
        notes.append(f"{weights}: {describe_scale(det.scale)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, tiling in [("sliced (tile auto)", TileOptions()), ("whole image (tile None)", TileOptions(tile=None))]:
            log: list[str] = []
            m, wall = timed(det.val, "shapes-large", args.shapes_split, tile=tiling, batch=args.batch, plots=False,
                            save_dir=Path(tmp) / name.split()[0], log=log.append)
            plan = next((line for line in log if line.startswith("sliced inference:")), "")
            rows.append({"row": name, "AP50": m["AP50"], "AP": m["AP"], "max_dets": m["max_dets"],
                         "detections": m["num_detections"], "wall_s": wall, "plan": plan})
    print(f"\n## Part A: shapes-large {args.shapes_split}, {weights}")
    for note in notes:
        print(f"- {note}")
    for r in rows:
        if r["plan"]:
            print(f"- {r['row']}: {r['plan']}")
    print(f"- {args.threads} threads, batch {args.batch}\n")
    print("| row | AP50 | AP | maxDets | detections | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['AP50']:.3f} | {r['AP']:.3f} | {r['max_dets']} | {r['detections']} | {r['wall_s']:.1f} |")
    diff = {"AP50": rows[0]["AP50"] - rows[1]["AP50"], "AP": rows[0]["AP"] - rows[1]["AP"]}
    print(f"| sliced - whole | {diff['AP50']:+.3f} | {diff['AP']:+.3f} | | | |")
    return {"weights": weights, "split": args.shapes_split, "notes": notes, "rows": rows, "sliced_minus_whole": diff}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    if args.part in ("B", "all"):
        out["B"] = part_b(args)
    if args.part in ("A", "all"):
        out["A"] = part_a(args)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"\nnumbers written to {args.out}")


if __name__ == "__main__":
    main()
