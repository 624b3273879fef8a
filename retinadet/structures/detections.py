"""``Detections``: the one detection type, from the model's post-processing to every output.

Post-processing, ``Detector.predict``, evaluation, Grad-CAM and prediction all pass it along; the
torch-free ONNX runner has a numpy twin with the same field names
(:class:`retinadet.export.onnx_runtime.NumpyDetections`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class Detections:
    """The detections of one image, best first, in the pixels of a frame of size ``image_size``.

    Boxes come out of the network in its input frame (the resized image); ``rescaled`` maps them to
    another frame, and what the API returns is always in the original image's pixels.
    ``anchor_index`` (into the flat anchor list of all levels) and ``level`` (0 = P3) say which
    anchor produced each detection: Grad-CAM needs the exact logit behind it.
    """

    boxes: Tensor  # [D, 4] xyxy
    scores: Tensor  # [D]
    labels: Tensor  # [D] int64, contiguous class index 0..K-1
    anchor_index: Tensor  # [D] int64
    level: Tensor  # [D] int64
    image_size: tuple[int, int]  # (h, w) of the frame the boxes are in
    class_names: list[str] = field(default_factory=list)
    source: str | None = None  # file name, when the image came from one
    # [D, 4] int64 xyxy: the region of the image the network saw for each detection (sliced inference);
    # None when it saw the whole image.
    tiles: Tensor | None = None

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: Sequence[str] = (), device=None) -> Detections:
        index = torch.zeros(0, dtype=torch.int64, device=device)
        return cls(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), index, index.clone(), index.clone(),
                   tuple(image_size), list(class_names))

    def __len__(self) -> int:
        return int(self.scores.numel())

    def __getitem__(self, index) -> Detections:
        """A subset: an int, a slice, an index tensor or a boolean mask (e.g. ``dets[dets.scores > 0.5]``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return replace(self, boxes=self.boxes[index], scores=self.scores[index], labels=self.labels[index],
                       anchor_index=self.anchor_index[index], level=self.level[index],
                       tiles=None if self.tiles is None else self.tiles[index])

    @property
    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.labels.tolist()]

    def to(self, device) -> Detections:
        return replace(self, boxes=self.boxes.to(device), scores=self.scores.to(device), labels=self.labels.to(device),
                       anchor_index=self.anchor_index.to(device), level=self.level.to(device),
                       tiles=None if self.tiles is None else self.tiles.to(device))

    def cpu(self) -> Detections:
        return self.to("cpu")

    def rescaled(self, image_size: Sequence[int]) -> Detections:
        """The same detections in a frame of size ``image_size`` (h, w): boxes scaled per axis."""
        h, w = (int(v) for v in image_size)
        if (h, w) == tuple(self.image_size):
            return self
        ratio = self.boxes.new_tensor([w / self.image_size[1], h / self.image_size[0]]).repeat(2)
        tiles = None if self.tiles is None else (self.tiles * ratio.to(self.tiles.device)).round().long()
        return replace(self, boxes=self.boxes * ratio, image_size=(h, w), tiles=tiles)

    def xywh(self) -> Tensor:
        """Boxes as COCO [x, y, w, h]."""
        return torch.cat([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], dim=1)

    def to_records(self) -> list[dict]:
        """One dict per detection: box as COCO [x, y, w, h], score, label and class name."""
        names = self.class_names
        return [{"bbox": box, "score": s, "label": lb, "class_name": names[lb] if names else str(lb)}
                for box, s, lb in zip(self.xywh().tolist(), self.scores.tolist(), self.labels.tolist())]


class DetectionsList(list):
    """:class:`Detections` of the inputs that could be read, in input order, and ``skipped``: the
    (input, reason) pairs of those that could not (``Detector.predict(..., skip_errors=True)``)."""

    def __init__(self, items=(), skipped: Sequence[tuple[str, str]] = ()):
        super().__init__(items)
        self.skipped = list(skipped)
