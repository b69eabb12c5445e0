"""Boxes from heatmaps: Otsu's threshold and the largest 8-connected component (the paper's BoxAcc box).

Boxes are ``(x0, y0, x1, y1)`` ints in heatmap pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]

# 8-connectivity: diagonal neighbours belong to the same component.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t in 0..255 maximizing the between-class variance of
    ``values <= t`` vs ``values > t`` (OpenCV's THRESH_OTSU convention: foreground is ``> t``)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    prob = hist / hist.sum()
    omega = np.cumsum(prob)  # weight of the background class for each t
    mu = np.cumsum(prob * np.arange(256))
    mu_total = mu[-1]
    denom = omega * (1.0 - omega)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.where(denom > 0, (mu_total * omega - mu) ** 2 / denom, 0.0)
    return int(np.argmax(between))


def largest_component_box(mask: np.ndarray) -> Box | None:
    """Tight box of the largest 8-connected component of a boolean ``(H, W)`` mask, None if empty.
    Ties go to the component met first in raster order."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    rows, cols = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return (cols.start, rows.start, cols.stop, rows.stop)


def _whole(heatmap: np.ndarray) -> Box:
    return (0, 0, int(heatmap.shape[1]), int(heatmap.shape[0]))


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """``(H, W)`` float heatmap in [0, 1] -> uint8 0..255 (floor, as ``np.uint8(255 * h)``)."""
    return (np.clip(heatmap, 0.0, 1.0) * 255.0).astype(np.uint8)


def otsu_box(heatmap: np.ndarray) -> Box:
    """The paper's box: heatmap scaled to 0..255, binarized at Otsu's threshold, largest 8-connected
    component's tight box. An empty foreground (e.g. a constant heatmap) gives the whole image."""
    values = heatmap_to_uint8(np.asarray(heatmap))
    if values.min() == values.max():
        return _whole(values)
    box = largest_component_box(values > otsu_threshold(values))
    return box if box is not None else _whole(values)


def threshold_box(heatmap: np.ndarray, tau: float) -> Box:
    """Tight box of the largest 8-connected component of ``heatmap >= tau`` (MaxBoxAccV2's box at tau);
    the whole image when nothing passes."""
    heatmap = np.asarray(heatmap)
    box = largest_component_box(heatmap >= tau)
    return box if box is not None else _whole(heatmap)


def box_iou(a: Box, b: Box) -> float:
    """IoU of two exclusive-corner boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
