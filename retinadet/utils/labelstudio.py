"""Label Studio tasks from boxes: the one writer behind ``data convert --to labelstudio`` (annotations) and
``predict --save-labelstudio`` (pre-annotations). Torch-free and free of data/ imports, for the ONNX runner.

A region is a ``rectanglelabels`` result in percent of the image's size (``x``/``y`` the top-left corner,
``width``/``height``), with ``original_width``/``original_height`` in pixels, as Label Studio exports and
imports it. The project's labeling interface is the one :func:`label_config` writes (``label_config.xml``:
a ``RectangleLabels`` named ``label`` on an ``Image`` named ``image`` reading ``$image``), so the tasks' names
match it.

Images are served by Label Studio's local-files storage: start it with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>``, add a
*Local files* storage whose absolute path lies under ``<root>``, and a task's image is
``/data/local-files/?d=<path relative to root>`` (:func:`local_files_url`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from retinadet.utils.colors import class_colors
from retinadet.utils.scores import round_score

FROM_NAME = "label"  # the RectangleLabels control of label_config.xml
TO_NAME = "image"  # the Image object it labels
DATA_KEY = "image"  # task["data"] key of the image ($image in the config)
SPLIT_FIELD = "split"  # task["data"] key of the task's split (data convert)
SOURCE_FIELD = "source"  # task["data"] key of the image's path on the machine that predicted (predict)
TASKS_FILE = "tasks.json"
CONFIG_FILE = "label_config.xml"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
# Percent with 6 decimals: 1e-6 % of a 100000 px side is 0.001 px.
PERCENT_DECIMALS = 6


def local_files_url(path: str | os.PathLike, document_root: str | os.PathLike) -> str:
    """``/data/local-files/?d=<path relative to document_root>`` (POSIX separators, URL-quoted)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(document_root))
    if rel.startswith(os.pardir):
        raise ValueError(f"{path} is not under the Label Studio document root {document_root}")
    return LOCAL_FILES_PREFIX + quote(Path(rel).as_posix())


def document_root_for(paths: Sequence[str | os.PathLike]) -> Path:
    """The root to serve ``paths`` from: ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` when it holds them all,
    else their deepest common folder."""
    absolute = [os.path.abspath(p) for p in paths]
    env = os.environ.get(DOCUMENT_ROOT_ENV)
    if env:
        root = os.path.abspath(env)
        if all(os.path.commonpath([root, p]) == root for p in absolute):
            return Path(root)
    if not absolute:
        return Path(env or os.getcwd()).absolute()
    return Path(os.path.commonpath([os.path.dirname(p) for p in absolute]))


def _percent(value: float, size: float) -> float:
    return round(float(value) / float(size) * 100.0, PERCENT_DECIMALS)


def rectangle_results(boxes: Sequence[Sequence[float]], labels: Sequence[int], class_names: Sequence[str], width: int,
                      height: int, scores: Sequence[float] | None = None) -> list[dict]:
    """One ``rectanglelabels`` result per xyxy pixel box; ``scores`` adds each region's ``score``."""
    results = []
    for k, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        region = {"id": f"r{k}", "type": "rectanglelabels", "from_name": FROM_NAME, "to_name": TO_NAME,
                  "original_width": int(width), "original_height": int(height), "image_rotation": 0,
                  "value": {"x": _percent(x1, width), "y": _percent(y1, height), "width": _percent(x2 - x1, width),
                            "height": _percent(y2 - y1, height), "rotation": 0,
                            "rectanglelabels": [class_names[int(label)]]}}
        if scores is not None:
            region["score"] = round_score(scores[k])
        results.append(region)
    return results


def labelstudio_task(image_url: str, width: int, height: int, boxes: Sequence[Sequence[float]], labels: Sequence[int],
                     class_names: Sequence[str], *, scores: Sequence[float] | None = None, model_version: str = "retinadet",
                     extra_data: dict | None = None) -> dict:
    """A task for ``image_url``: the boxes as its ``annotations`` (ground truth), or with ``scores`` as its
    ``predictions`` (pre-annotations a reviewer corrects; the task's score is its most confident region's, so
    that sorting by it puts the most suspicious images first). ``extra_data`` joins ``data`` (Label Studio
    keeps such fields through import and export, and shows them as columns)."""
    data = {DATA_KEY: image_url, **(extra_data or {})}
    result = rectangle_results(boxes, labels, class_names, width, height, scores)
    if scores is None:
        return {"data": data, "annotations": [{"result": result}]}
    task_score = round_score(max((float(s) for s in scores), default=0.0))
    return {"data": data, "predictions": [{"model_version": model_version, "score": task_score, "result": result}]}


def label_config(class_names: Sequence[str]) -> str:
    """The labeling interface the tasks are written for (Settings > Labeling Interface > Code), the classes in
    order with the colours of the drawings."""
    colors = class_colors(len(class_names))
    labels = "".join(f'    <Label value={quoteattr(str(name))} background="#{r:02x}{g:02x}{b:02x}"/>\n'
                     for name, (r, g, b) in zip(class_names, colors))
    return (f'<View>\n  <Image name="{TO_NAME}" value="${DATA_KEY}" zoom="true"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}  </RectangleLabels>\n</View>\n')
