"""The files ``retinadet predict`` writes, for the torch path and the torch-free ONNX runner alike.

As it goes: ``predictions.jsonl``, one line per input (its detections, or why it was skipped), flushed after
each batch, so that an interrupted run (Ctrl-C, SIGTERM, kill -9) keeps every finished image; and
``labels/<stem>.txt`` (YOLO style) and ``geojson/<stem>.geojson`` (QuPath's import format) when asked. At the
end, written atomically from the lines: ``predictions.json``
(COCO results plus file name, source and class name, original pixels), ``skipped.txt`` and optionally
``predictions.csv``, ``labelstudio/tasks.json`` with ``labelstudio/label_config.xml`` (Label Studio
pre-annotations, :mod:`retinadet.utils.labelstudio`) and ``cvat/annotations.xml`` (CVAT for images 1.1
pre-annotations, :mod:`retinadet.utils.cvat_xml`); these two hold images only, not video frames. A run continued
with ``resume`` skips the inputs its lines already hold and ends with the files an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from retinadet.errors import DataError
from retinadet.utils import cvat_xml, labelstudio
from retinadet.utils.files import atomic_write_text, write_csv, write_json
from retinadet.utils.geojson import to_feature_collection
from retinadet.utils.scores import round_score

CSV_HEADER = ["file_name", "class_name", "category_id", "score", "x1", "y1", "x2", "y2"]
MICRON_COLUMNS = ["x1_um", "y1_um", "x2_um", "y2_um"]
LINES = "predictions.jsonl"
RANK_LINES = "predictions.rank{rank}.jsonl"  # one process's lines in a sharded (torchrun) run


def input_key(source: str, frame: int | None) -> str:
    """What identifies one input across an interrupted run and its resumption."""
    return source if frame is None else f"{source}#{frame}"




class PredictionWriter:
    """Collects one input at a time (plain lists: xyxy boxes, scores, labels) under ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, class_names: Sequence[str], category_ids: Sequence[int] | None = None,
                 save_txt: bool = False, save_csv: bool = False, resume: bool = False, save_geojson: bool = False,
                 save_labelstudio: bool = False, save_cvat: bool = False, model_version: str = "retinadet",
                 rank: int = 0, world_size: int = 1):
        self.out = Path(out_dir)
        self.class_names = list(class_names)
        # Without dataset ids (a model trained on no COCO file), categories count from 1 as in COCO.
        self.category_ids = list(category_ids) if category_ids else list(range(1, len(self.class_names) + 1))
        self.save_txt, self.save_csv, self.save_geojson = save_txt, save_csv, save_geojson
        self.save_labelstudio, self.save_cvat, self.model_version = save_labelstudio, save_cvat, model_version
        self.export_notes: list[str] = []  # what the labelling-tool files need to be imported, said at the end
        # A process of a sharded run (torchrun) streams to its own lines; the first merges them all at the end.
        self.rank, self.world_size = int(rank), int(world_size)
        self.lines = self.out / (LINES if self.world_size == 1 else RANK_LINES.format(rank=self.rank))
        self.done: dict[str, dict] = {}  # input key -> its line, from this run and the one it resumes
        own: list[dict] = []
        if resume:
            # Every process knows what every earlier process finished, whatever the number of processes then.
            self.done = read_run_lines(self.out)
            own = list(self.done.values()) if self.world_size == 1 else read_lines(self.lines)
        self.lines.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten from what was read: a line that kill -9 cut in half is dropped here, and its input redone.
        with open(self.lines, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in own)
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
            scores: Sequence[float], labels: Sequence[int], frame: int | None = None,
            mpp: Sequence[float] | None = None) -> None:
        """One input's detections (xyxy in its pixels: level 0 of a slide); ``mpp``: its microns per pixel (x, y), which
        puts the CSV's boxes in µm too."""
        dets = [{"category_id": int(self.category_ids[lab]), "class_name": self.class_names[lab],
                 "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)], "score": round_score(s)}
                for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels)]
        entry = {"image_id": int(image_id), "file_name": file_name, "source": source, "image_size": list(image_size),
                 "detections": dets}
        if frame is not None:
            entry["frame"] = frame
        if mpp is not None:
            entry["mpp"] = [float(mpp[0]), float(mpp[1])]
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
        """Writes the final files from the lines (of every process of a sharded run: call it on the first after
        the others have closed theirs, :meth:`close_shard`); returns the run's counts."""
        self._fh.close()
        if self.world_size > 1 or any(self.out.glob(RANK_LINES.format(rank="*"))):
            self.done = read_run_lines(self.out)
            tmp = self.out / (LINES + ".tmp")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(e) + "\n" for e in self.done.values())
            os.replace(tmp, self.out / LINES)
            for part in self.out.glob(RANK_LINES.format(rank="*")):
                part.unlink()
        records, counts = [], Counter()
        for e in self.entries:
            for d in e.get("detections", ()):
                row = {"image_id": e["image_id"], "file_name": e["file_name"], "source": e["source"], **d}
                if "frame" in e:
                    row["frame"] = e["frame"]
                if "mpp" in e:
                    row["mpp"] = e["mpp"]
                records.append(row)
                counts[d["class_name"]] += 1
        write_json(self.out / "predictions.json", records)
        skipped = self.skipped
        if skipped:
            atomic_write_text(self.out / "skipped.txt", "".join(f"{e['source']}\t{e['skipped']}\n" for e in skipped))
        if self.save_csv:
            self._write_csv(records)
        self.export_notes = self._write_labelling_tools()
        images = sum(1 for e in self.entries if "skipped" not in e)
        return {"save_dir": str(self.out), "images": images, "skipped": len(skipped), "counts": dict(counts),
                "detections": len(records)}

    def _write_csv(self, records: list[dict]) -> None:
        """predictions.csv in pixels (a slide's level 0), and in µm as well when some input records its resolution."""
        microns = any("mpp" in r for r in records)
        rows = []
        for r in records:
            x, y, w, h = r["bbox"]
            row = [r["file_name"], r["class_name"], r["category_id"], r["score"], x, y, round(x + w, 3), round(y + h, 3)]
            if microns:
                mx, my = r.get("mpp", (None, None))
                row += [round(v * m, 3) if m is not None else "" for v, m in ((x, mx), (y, my), (x + w, mx), (y + h, my))]
            rows.append(row)
        write_csv(self.out / "predictions.csv", CSV_HEADER + (MICRON_COLUMNS if microns else []), rows)

    def _write_labelling_tools(self) -> list[str]:
        """Label Studio tasks and a CVAT XML of the images' detections, from the lines; returns notes for the log."""
        if not (self.save_labelstudio or self.save_cvat):
            return []
        index = {c: i for i, c in enumerate(self.category_ids)}
        images = [e for e in self.entries if "skipped" not in e and "frame" not in e]
        notes = [] if len(images) == sum(1 for e in self.entries if "skipped" not in e) else [
            "video frames are not written to the Label Studio / CVAT files (images only)"]
        rows, degenerate = [], 0
        for e in images:
            # A box clipped to nothing at the image's edge cannot be shown or reviewed in either tool.
            dets = [d for d in e["detections"] if d["bbox"][2] > 0 and d["bbox"][3] > 0]
            degenerate += len(e["detections"]) - len(dets)
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]
            height, width = e["image_size"]
            rows.append((e["source"], width, height, boxes, [index[d["category_id"]] for d in dets], [d["score"] for d in dets]))
        if degenerate:
            notes.append(f"{degenerate} zero-size detection(s) (clipped at an image edge) left out of the Label Studio / CVAT files")
        if self.save_labelstudio:
            root = labelstudio.document_root_for([r[0] for r in rows])
            tasks = [labelstudio.labelstudio_task(labelstudio.local_files_url(src, root), w, h, b, lab, self.class_names, scores=sc,
                                                  model_version=self.model_version,
                                                  extra_data={labelstudio.SOURCE_FIELD: os.path.abspath(src)})
                     for src, w, h, b, lab, sc in rows]
            folder = self.out / "labelstudio"
            write_json(folder / labelstudio.TASKS_FILE, tasks)
            atomic_write_text(folder / labelstudio.CONFIG_FILE, labelstudio.label_config(self.class_names))
            notes.append(f"Label Studio: labelstudio/{labelstudio.TASKS_FILE} (interface: {labelstudio.CONFIG_FILE}) serves the "
                         f"images as local files under {labelstudio.DOCUMENT_ROOT_ENV}={root}")
        if self.save_cvat:
            names = cvat_xml.task_names([r[0] for r in rows])
            xml = cvat_xml.annotations_xml([cvat_xml.CvatImage(n, w, h, b, lab, sc) for n, (_, w, h, b, lab, sc) in zip(names, rows)],
                                           self.class_names, task_name=self.out.name)
            atomic_write_text(self.out / "cvat" / cvat_xml.ANNOTATIONS_FILE, xml)
        return notes

    def close_shard(self) -> None:
        """A process of a sharded run other than the first: its lines are complete (the first merges them)."""
        self._fh.close()

    def finish(self, log, notes: Sequence[str] = ()) -> dict:
        """:meth:`close`, then the run's summary, ``notes`` and where it was saved to ``log``; raises when no input
        could be read."""
        result = self.close()
        for line in (self.summary(), *notes, *self.export_notes, f"results saved to {self.out}"):
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


def read_run_lines(out: Path) -> dict[str, dict]:
    """Every input a run folder's lines hold (the merged file and each process's), once, by input key."""
    done: dict[str, dict] = {}
    for path in [out / LINES, *sorted(out.glob(RANK_LINES.format(rank="*")))]:
        for e in read_lines(path):
            done.setdefault(input_key(e["source"], e.get("frame")), e)
    return done


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
