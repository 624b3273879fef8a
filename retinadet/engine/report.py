"""``report.html``: everything ``retinadet val`` measured, on one self-contained page (figures embedded, no
network) that a screening team can open and pass around."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from retinadet.utils.files import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } .note { color: #666; font-size: .9em; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4f}" if v == v else "n/a"  # NaN: undefined here (e.g. an AUC without negative images)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="note">({html.escape(alt)}: not drawn)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _section(key: str, title: str, *parts: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def write_report(out_dir: str | os.PathLike, metrics: Mapping, stat_rows: Sequence[tuple[str, str, float]],
                 class_rows: Sequence[tuple], title: str, figures: Mapping[str, Path]) -> Path:
    """Write ``out_dir/report.html`` from ``metrics`` (metrics.json's content) and the figures drawn beside it."""
    out = Path(out_dir)
    parts = [_section("coco", "COCO metrics", _table(["stat", "meaning", "value"], stat_rows),
                      _table(["class", "boxes", "AP", "AP50"], class_rows)),
             _section("pr-curves", "Precision-recall curves", _figure(figures.get("pr_curves"), "PR curves"))]
    froc = metrics.get("froc")
    if froc:
        rows = [["all classes", *froc["sensitivity"], froc["score"], f"[{froc['ci95'][0]:.3f}, {froc['ci95'][1]:.3f}]"]]
        rows += [[n, *p["sensitivity"], p["score"], f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"]
                 for n, p in froc["per_class"].items()]
        parts.append(_section("froc", f"FROC (a hit: {froc['hit']})",
                              _table(["", *(f"{p:g} FP/img" for p in froc["fppi"]), "score", "95% CI"], rows),
                              _figure(figures.get("froc"), "FROC curve")))
    for key, label in (("operating_point", "Operating point"), ("at_stored_thresholds", "At the stored thresholds")):
        op = metrics.get(key)
        if op:
            rows = [[n, r["threshold"], r["sensitivity"], r["fppi"]] for n, r in op["per_class"].items()]
            rows.append(["all", "", op["overall"]["sensitivity"], op["overall"]["fppi"]])
            what = op.get("spec", op.get("chosen", ""))
            parts.append(_section(key.replace("_", "-"), f"{label} ({what})",
                                  _table(["class", "threshold", "sensitivity", "FP/image"], rows)))
    sc = metrics.get("screening")
    if sc:
        rows = [[n, p["positives"], p["negatives"], p["auc"], *(
            [p["at_thresholds"]["sensitivity"], p["at_thresholds"]["specificity"]] if "at_thresholds" in p else ["", ""])]
            for n, p in [("all classes", sc), *sc["per_class"].items()]]
        parts.append(_section("screening", "Image-level screening (ROC)",
                              _table(["", "positive images", "negative images", "AUC", "sensitivity", "specificity"],
                                     rows), _figure(figures.get("roc"), "ROC curve")))
    parts.append(_section("confusion", "Confusion matrix", _figure(figures.get("confusion"), "confusion matrix")))
    err = metrics.get("errors")
    if err:
        rows = [[k, err["counts"][k], err["AP50_gain"][k]] for k in err["counts"]]
        parts.append(_section("errors", f"Errors (TIDE-style, detections scored {err['conf']:g} or more)",
                              _table(["kind", "count", "AP50 gained by fixing it"], rows)))
        parts.append(_section("gallery", "The worst images: labels (left) against predictions (right)",
                              _figure(figures.get("gallery"), "error gallery")))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    return atomic_write_text(out / "report.html", page)
