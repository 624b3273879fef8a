"""Where the tissue is on a slide, from its thumbnail, so that sliced inference skips the glass.

Brightfield slides (H&E, Pap, Giemsa, blood smears) show tissue as colour on white glass: the mask is the
saturation (max - min over RGB) above Otsu's threshold of it, capped at a low fixed level so that pale specimen
(the plasma between blood cells, thin cytoplasm) counts as tissue and only grey glass does not, or anything clearly
darker than the glass. Where the thumbnail has next to no colour (fluorescence, gray scans) it is Otsu's threshold
of the intensity, the tissue on the side the slide's border is not. The mask is dilated by a thumbnail pixel, so
that the edge of a tissue fragment keeps its tiles. Torch-free.
"""

from __future__ import annotations

import numpy as np

# Below this spread of saturation (0-255) a thumbnail has no colour to separate tissue by.
MIN_SATURATION_SPREAD = 12
# Saturation above this is specimen whatever Otsu says: glass, even JPEG-compressed, stays under it.
SATURATION_CAP = 15
# This much darker than the glass (its 95th-percentile intensity) is specimen, coloured or not.
DARKER_THAN_GLASS = 25


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8-range values (the level that best splits them into two classes)."""
    hist = np.bincount(np.clip(values.reshape(-1), 0, 255).astype(np.int64), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    mean0 = np.cumsum(hist * levels) / np.maximum(weight0, 1)
    mean1 = ((hist * levels).sum() - np.cumsum(hist * levels)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(np.argmax(between))


def tissue_mask(thumbnail: np.ndarray) -> np.ndarray:
    """bool HxW: True where a uint8 HxWx3 thumbnail shows tissue."""
    rgb = thumbnail.astype(np.int16)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    if np.percentile(saturation, 99) - np.percentile(saturation, 1) >= MIN_SATURATION_SPREAD:
        gray = rgb.mean(axis=2)
        mask = saturation > min(otsu_threshold(saturation), SATURATION_CAP)
        mask |= gray < np.percentile(gray, 95) - DARKER_THAN_GLASS
    else:
        gray = rgb.mean(axis=2)
        border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
        t = otsu_threshold(gray)
        bright_glass = np.median(border) > t
        mask = gray < t if bright_glass else gray > t
    return _dilate(mask)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def tissue_fraction(mask: np.ndarray, boxes: np.ndarray, scale: float) -> np.ndarray:
    """The share of each box (xyxy in pixels of the image the mask covers at ``scale`` image pixels per mask pixel)
    that is tissue; vectorised over the boxes with an integral image."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
    x1 = np.clip(np.floor(b[:, 0]).astype(np.int64), 0, mask.shape[1])
    y1 = np.clip(np.floor(b[:, 1]).astype(np.int64), 0, mask.shape[0])
    x2 = np.clip(np.ceil(b[:, 2]).astype(np.int64), 0, mask.shape[1])
    y2 = np.clip(np.ceil(b[:, 3]).astype(np.int64), 0, mask.shape[0])
    area = np.maximum((x2 - x1) * (y2 - y1), 1)
    inside = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return inside / area
