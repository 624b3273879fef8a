"""The files ``retinadet predict`` writes, for the torch path and the torch-free ONNX runner alike:
``predictions.json`` (COCO results plus file name, source and class name, original pixels), and
optionally ``predictions.csv`` and YOLO-style ``labels/<stem>.txt``."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from retinadet.utils.files import atomic_write_text, write_csv, write_json

CSV_HEADER = ["file_name", "class_name", "category_id", "score", "x1", "y1", "x2", "y2"]


class PredictionWriter:
    """Collects one image's detections at a time (plain lists: xyxy boxes, scores, labels)."""

    def __init__(self, out_dir: str | os.PathLike, class_names: Sequence[str], category_ids: Sequence[int] | None = None,
                 save_txt: bool = False, save_csv: bool = False):
        self.out = Path(out_dir)
        self.class_names = list(class_names)
        # Without dataset ids (a model trained on no COCO file), categories count from 1 as in COCO.
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.save_txt, self.save_csv = save_txt, save_csv
        self.records: list[dict] = []
        self.counts: Counter = Counter()
        self.images = 0
        if save_txt:
            (self.out / "labels").mkdir(parents=True, exist_ok=True)

    def add(self, file_name: str, source: str, image_size: Sequence[int], boxes: Sequence[Sequence[float]],
            scores: Sequence[float], labels: Sequence[int], frame: int | None = None) -> None:
        self.images += 1
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
            row = {"image_id": self.images, "file_name": file_name, "source": source,
                   "category_id": int(self.category_ids[label]), "class_name": self.class_names[label],
                   "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)], "score": round(score, 5)}
            if frame is not None:
                row["frame"] = frame
            self.records.append(row)
            self.counts[self.class_names[label]] += 1
        if self.save_txt:
            h, w = image_size
            lines = [f"{lab} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.5f}"
                     for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels)]
            atomic_write_text(self.out / "labels" / (Path(file_name).stem + ".txt"), "".join(line + "\n" for line in lines))

    def close(self) -> dict:
        """Writes the files; returns the run's counts."""
        write_json(self.out / "predictions.json", self.records)
        if self.save_csv:
            write_csv(self.out / "predictions.csv", CSV_HEADER,
                      [[r["file_name"], r["class_name"], r["category_id"], r["score"], r["bbox"][0], r["bbox"][1],
                        round(r["bbox"][0] + r["bbox"][2], 3), round(r["bbox"][1] + r["bbox"][3], 3)] for r in self.records])
        return {"save_dir": str(self.out), "images": self.images, "counts": dict(self.counts), "detections": len(self.records)}

    def summary(self) -> str:
        found = ", ".join(f"{n} {c}" for c, n in sorted(self.counts.items(), key=lambda kv: -kv[1])) or "no detections"
        return f"{self.images} image(s): {found}"
