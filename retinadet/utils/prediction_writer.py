"""The files ``retinadet predict`` writes, for the torch path and the torch-free ONNX runner alike.

As it goes: ``predictions.jsonl``, one line per input (its detections, or why it was skipped), flushed after
each batch, so that an interrupted run (Ctrl-C, SIGTERM, kill -9) keeps every finished image; and
``labels/<stem>.txt`` (YOLO style) and ``geojson/<stem>.geojson`` (QuPath's import format) when asked. At the
end, written atomically from the lines: ``predictions.json``
(COCO results plus file name, source and class name, original pixels), ``skipped.txt`` and optionally
``predictions.csv``. A run continued with ``resume`` skips the inputs its lines already hold and ends with
the files an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from retinadet.errors import DataError
from retinadet.utils.files import atomic_write_text, write_csv, write_json
from retinadet.utils.geojson import to_feature_collection

CSV_HEADER = ["file_name", "class_name", "category_id", "score", "x1", "y1", "x2", "y2"]
LINES = "predictions.jsonl"


def input_key(source: str, frame: int | None) -> str:
    """What identifies one input across an interrupted run and its resumption."""
    return source if frame is None else f"{source}#{frame}"


class PredictionWriter:
    """Collects one input at a time (plain lists: xyxy boxes, scores, labels) under ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, class_names: Sequence[str], category_ids: Sequence[int] | None = None,
                 save_txt: bool = False, save_csv: bool = False, resume: bool = False, save_geojson: bool = False):
        self.out = Path(out_dir)
        self.class_names = list(class_names)
        # Without dataset ids (a model trained on no COCO file), categories count from 1 as in COCO.
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.save_txt, self.save_csv, self.save_geojson = save_txt, save_csv, save_geojson
        self.lines = self.out / LINES
        self.done: dict[str, dict] = {}  # input key -> its line, from this run and the one it resumes
        if resume:
            self.done = {input_key(e["source"], e.get("frame")): e for e in read_lines(self.lines)}
        self.lines.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten from what was read: a line that kill -9 cut in half is dropped here, and its input redone.
        with open(self.lines, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in self.done.values())
        self._fh = open(self.lines, "a", encoding="utf-8")
        if save_txt:
            (self.out / "labels").mkdir(parents=True, exist_ok=True)
        if save_geojson:
            (self.out / "geojson").mkdir(parents=True, exist_ok=True)

    def is_done(self, source: str, frame: int | None = None) -> bool:
        return input_key(source, frame) in self.done

    def _append(self, entry: dict) -> None:
        self.done[input_key(entry["source"], entry.get("frame"))] = entry
        self._fh.write(json.dumps(entry) + "\n")

    def add(self, image_id: int, file_name: str, source: str, image_size: Sequence[int], boxes: Sequence[Sequence[float]],
            scores: Sequence[float], labels: Sequence[int], frame: int | None = None) -> None:
        dets = [{"category_id": int(self.category_ids[lab]), "class_name": self.class_names[lab],
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)], "score": round(s, 5)}
                for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels)]
        entry = {"image_id": int(image_id), "file_name": file_name, "source": source, "image_size": list(image_size),
                 "detections": dets}
        if frame is not None:
            entry["frame"] = frame
        self._append(entry)
        if self.save_txt:
            h, w = image_size
            lines = [f"{lab} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {s:.5f}"
                     for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels)]
            atomic_write_text(self.out / "labels" / (Path(file_name).stem + ".txt"), "".join(line + "\n" for line in lines))
        if self.save_geojson and frame is None:
            collection = to_feature_collection(boxes, scores, labels, self.class_names)
            write_json(self.out / "geojson" / (Path(file_name).stem + ".geojson"), collection)

    def skip(self, image_id: int, source: str, reason: str, frame: int | None = None) -> None:
        entry = {"image_id": int(image_id), "source": source, "skipped": reason}
        if frame is not None:
            entry["frame"] = frame
        self._append(entry)

    def flush(self) -> None:
        """After each batch: the lines so far reach the file (and survive the process)."""
        self._fh.flush()

    @property
    def entries(self) -> list[dict]:
        return sorted(self.done.values(), key=lambda e: e["image_id"])

    @property
    def skipped(self) -> list[dict]:
        return [e for e in self.entries if "skipped" in e]

    def close(self) -> dict:
        """Writes the final files from the lines; returns the run's counts."""
        self._fh.close()
        records, counts = [], Counter()
        for e in self.entries:
            for d in e.get("detections", ()):
                row = {"image_id": e["image_id"], "file_name": e["file_name"], "source": e["source"], **d}
                if "frame" in e:
                    row["frame"] = e["frame"]
                records.append(row)
                counts[d["class_name"]] += 1
        write_json(self.out / "predictions.json", records)
        skipped = self.skipped
        if skipped:
            atomic_write_text(self.out / "skipped.txt", "".join(f"{e['source']}\t{e['skipped']}\n" for e in skipped))
        if self.save_csv:
            write_csv(self.out / "predictions.csv", CSV_HEADER,
                      [[r["file_name"], r["class_name"], r["category_id"], r["score"], r["bbox"][0], r["bbox"][1],
                        round(r["bbox"][0] + r["bbox"][2], 3), round(r["bbox"][1] + r["bbox"][3], 3)] for r in records])
        images = sum(1 for e in self.entries if "skipped" not in e)
        return {"save_dir": str(self.out), "images": images, "skipped": len(skipped), "counts": dict(counts),
                "detections": len(records)}

    def finish(self, log, notes: Sequence[str] = ()) -> dict:
        """:meth:`close`, then the run's summary, ``notes`` and where it was saved to ``log``; raises when no input
        could be read."""
        result = self.close()
        for line in (self.summary(), *notes, f"results saved to {self.out}"):
            log(line)
        if result["images"] == 0 and result["skipped"]:
            raise DataError(f"none of the {result['skipped']} input(s) could be read; see {self.out / 'skipped.txt'}")
        return result

    def summary(self) -> str:
        counts = Counter(d["class_name"] for e in self.entries for d in e.get("detections", ()))
        found = ", ".join(f"{n} {c}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "no detections"
        images = sum(1 for e in self.entries if "skipped" not in e)
        skipped = len(self.skipped)
        return f"{images} image(s): {found}" + (f"; {skipped} unreadable input(s) skipped (skipped.txt)" if skipped else "")


def read_lines(path: str | os.PathLike) -> list[dict]:
    """The entries of a ``predictions.jsonl``; a last line cut short by a killed process is left out."""
    p = Path(path)
    if not p.is_file():
        return []
    entries = []
    lines = p.read_text(encoding="utf-8").splitlines()
    for number, text in enumerate(lines, start=1):
        try:
            entry = json.loads(text)
            if not (isinstance(entry, dict) and "source" in entry and "image_id" in entry):
                raise ValueError("not a prediction entry")
        except ValueError as exc:
            if number == len(lines):  # the line being written when the process died
                break
            raise DataError(f"{p}:{number}: not a predictions.jsonl line ({exc})") from None
        entries.append(entry)
    return entries
