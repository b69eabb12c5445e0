"""Localization metrics of the gScoreCAM paper, as pure functions on numpy arrays.

Boxes are ``(x0, y0, x1, y1)`` in pixels with x1/y1 exclusive (the core's convention), so a box's area is
``(x1 - x0) * (y1 - y0)``. Heatmaps are ``(H, W)`` float arrays; every metric min-max normalizes them to [0, 1]
first (as Choe et al.'s ``wsolevaluation`` does), so a threshold ``tau`` means a fraction of the heatmap's range.

Per explanation (one image, one category present in it) we keep a small record (:func:`explanation_metrics`):
the IoU of the Otsu box, the best IoU of the box at every threshold of :data:`TAUS`, whether the heatmap's peak
falls in a ground-truth box, and the group labels. Dataset-level numbers are then computed from the records
(:func:`box_acc`, :func:`max_box_acc_v2`, ...), because MaxBoxAccV2 picks its threshold per dataset, not per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: The thresholds of MaxBoxAccV2: 0, 0.05, ..., 0.95 (rounded so that 0.3 is exactly 0.3).
TAUS: np.ndarray = np.round(np.arange(20) * 0.05, 2)
#: The IoU thresholds of MaxBoxAccV2.
DELTAS: tuple[float, ...] = (0.3, 0.5, 0.7)

#: Number-of-objects groups (objects per image, all categories): label -> inclusive range.
OBJECT_GROUPS: tuple[tuple[str, int, float], ...] = (("1-3", 1, 3), ("4-6", 4, 6), ("7+", 7, float("inf")))
#: Object-size groups (box area / image area): small < 0.33 <= medium < 0.67 <= large.
SIZE_SMALL, SIZE_LARGE = 0.33, 0.67

Box = tuple[float, float, float, float]


def normalize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalizes to [0, 1] (float64); a constant heatmap becomes all zeros."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {h.shape}")
    h = np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(h.min()), float(h.max())
    if hi - lo <= 0:
        return np.zeros_like(h)
    return (h - lo) / (hi - lo)


def box_area(box: Sequence[float]) -> float:
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two boxes (x1/y1 exclusive); 0 when both are empty."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def best_iou(box: Sequence[float], gt_boxes: Sequence[Sequence[float]]) -> float:
    """The IoU of ``box`` with the ground-truth box it overlaps most (0 with no ground truth)."""
    return max((box_iou(box, g) for g in gt_boxes), default=0.0)


def largest_component_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box of the largest 8-connected component of a boolean mask; the whole image if the mask is empty.

    The reference implementation of ``handler.boxes.threshold_box(heatmap, tau)`` == this on ``heatmap >= tau``.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if not mask.any():
        return (0, 0, w, h)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = labels == (int(np.argmax(sizes)) + 1)
    else:
        keep = labels > 0
    ys, xs = np.nonzero(keep)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _local_threshold_box(heatmap: np.ndarray, tau: float) -> tuple[int, int, int, int]:
    return largest_component_box(np.asarray(heatmap) >= tau)


def get_threshold_box():
    """The core's ``handler.boxes.threshold_box`` if it is importable, else the reference implementation."""
    try:
        from handler.boxes import threshold_box
    except ImportError:
        return _local_threshold_box
    return threshold_box


def get_otsu_box():
    """The core's ``handler.boxes.otsu_box`` if it is importable, else a local Otsu threshold + largest component."""
    try:
        from handler.boxes import otsu_box
    except ImportError:
        return _local_otsu_box
    return otsu_box


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximizes the between-class variance of a ``bins``-bin histogram)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centers)
    mu0 = np.divide(m, w0, out=np.zeros_like(m), where=w0 > 0)
    mu1 = np.divide(m[-1] - m, w1, out=np.zeros_like(m), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    i = int(np.argmax(between))
    return float(edges[i + 1])


def _local_otsu_box(heatmap: np.ndarray) -> tuple[int, int, int, int]:
    h = normalize_heatmap(heatmap)
    return largest_component_box(h >= otsu_threshold(h))


def ious_at_taus(heatmap: np.ndarray, gt_boxes: Sequence[Sequence[float]], taus: Sequence[float] = TAUS,
                 threshold_box=None) -> np.ndarray:
    """Best IoU with the ground truth of the box at each threshold (the box at tau = largest component of
    ``normalized heatmap >= tau``). Shape ``(len(taus),)``."""
    tb = threshold_box or get_threshold_box()
    h = normalize_heatmap(heatmap)
    return np.array([best_iou(tb(h, float(t)), gt_boxes) for t in taus], dtype=np.float64)


def pointing_hit(heatmap: np.ndarray, gt_boxes: Sequence[Sequence[float]], tolerance: float = 0.0) -> bool:
    """Pointing game: the heatmap's maximum (the first one in row-major order) lies in a ground-truth box,
    optionally within ``tolerance`` pixels of it."""
    h = np.asarray(heatmap, dtype=np.float64)
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    px, py = x + 0.5, y + 0.5  # pixel centre
    for x0, y0, x1, y1 in gt_boxes:
        dx = max(x0 - px, 0.0, px - x1)
        dy = max(y0 - py, 0.0, py - y1)
        if (dx * dx + dy * dy) ** 0.5 <= tolerance:
            return True
    return False


def object_group(n_objects: int) -> str:
    """Paper Fig. 2's number-of-objects group: "1-3", "4-6" or "7+"."""
    for label, lo, hi in OBJECT_GROUPS:
        if lo <= n_objects <= hi:
            return label
    return OBJECT_GROUPS[0][0] if n_objects < 1 else OBJECT_GROUPS[-1][0]


def size_group(area_fraction: float) -> str:
    """Paper Fig. 2's object-size group: "small" (< 0.33 of the image), "medium" or "large" (>= 0.67)."""
    if area_fraction < SIZE_SMALL:
        return "small"
    if area_fraction >= SIZE_LARGE:
        return "large"
    return "medium"


def object_area_fraction(gt_boxes: Sequence[Sequence[float]], width: int, height: int) -> float:
    """Size of a category's objects in an image: its largest ground-truth box's area / the image's area."""
    return max((box_area(b) for b in gt_boxes), default=0.0) / float(max(1, width * height))


def explanation_metrics(heatmap: np.ndarray, box: Sequence[float], gt_boxes: Sequence[Sequence[float]], *,
                        n_objects: int, pointing_tolerance: float = 0.0, taus: Sequence[float] = TAUS,
                        threshold_box=None) -> dict:
    """The per-explanation record the dataset-level metrics aggregate (JSON-serializable)."""
    h, w = np.asarray(heatmap).shape
    frac = object_area_fraction(gt_boxes, w, h)
    return {
        "iou": best_iou(box, gt_boxes),
        "iou_at_tau": [float(v) for v in ious_at_taus(heatmap, gt_boxes, taus, threshold_box)],
        "pointing": bool(pointing_hit(heatmap, gt_boxes, pointing_tolerance)),
        "n_objects": int(n_objects),
        "object_group": object_group(int(n_objects)),
        "area_fraction": float(frac),
        "size_group": size_group(frac),
    }


# ---------------------------------------------------------------- dataset level


def box_acc(ious: Sequence[float], delta: float = 0.5) -> float:
    """BoxAcc: fraction of explanations whose box has IoU >= delta with a ground-truth box (nan if none)."""
    a = np.asarray(ious, dtype=np.float64)
    return float(np.mean(a >= delta)) if a.size else float("nan")


def box_acc_curve(iou_at_tau: np.ndarray, delta: float) -> np.ndarray:
    """BoxAcc(tau, delta) for every tau: ``iou_at_tau`` is (n_explanations, n_taus)."""
    a = np.asarray(iou_at_tau, dtype=np.float64)
    if a.size == 0:
        return np.full(len(TAUS), np.nan)
    return np.mean(a >= delta, axis=0)


def max_box_acc_v2(iou_at_tau: np.ndarray, deltas: Sequence[float] = DELTAS, taus: Sequence[float] = TAUS) -> dict:
    """MaxBoxAccV2 (Choe et al. 2020): mean over delta of max over tau of BoxAcc(tau, delta).

    Returns ``{"value": float, "per_delta": {delta: max BoxAcc}, "best_tau": {delta: tau at the max}}``; the best
    tau may differ per delta (the first maximizing tau is reported)."""
    a = np.asarray(iou_at_tau, dtype=np.float64)
    if a.size == 0:
        return {"value": float("nan"), "per_delta": {}, "best_tau": {}}
    per_delta, best_tau = {}, {}
    for d in deltas:
        curve = box_acc_curve(a, d)
        i = int(np.argmax(curve))
        per_delta[float(d)] = float(curve[i])
        best_tau[float(d)] = float(taus[i])
    return {"value": float(np.mean(list(per_delta.values()))), "per_delta": per_delta, "best_tau": best_tau}


def summarize(records: Sequence[dict]) -> dict:
    """Dataset-level metrics of a list of :func:`explanation_metrics` records (plus optional timing fields
    ``ms_per_explanation``, ``passes_per_explanation``, ``passes_per_call``)."""
    n = len(records)
    ious = [r["iou"] for r in records]
    mbav2 = max_box_acc_v2(np.array([r["iou_at_tau"] for r in records]) if n else np.zeros((0, len(TAUS))))
    out = {
        "n": n,
        "box_acc": box_acc(ious, 0.5),
        "max_box_acc_v2": mbav2["value"],
        "max_box_acc_v2_per_delta": mbav2["per_delta"],
        "best_tau": mbav2["best_tau"],
        "mean_iou": float(np.mean(ious)) if n else float("nan"),
        "pointing_acc": float(np.mean([r["pointing"] for r in records])) if n else float("nan"),
    }
    for key in ("ms_per_explanation", "passes_per_explanation", "passes_per_call", "forward_passes_per_explanation",
                "backward_passes_per_explanation"):
        vals = [r[key] for r in records if r.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    return out


def group_summary(records: Sequence[dict], key: str) -> dict[str, dict]:
    """``{group: {"n", "mean_iou", "box_acc"}}`` for ``key`` in ("object_group", "size_group"), in the paper's
    group order (groups without explanations are included with n = 0)."""
    order = [g[0] for g in OBJECT_GROUPS] if key == "object_group" else ["small", "medium", "large"]
    out = {}
    for g in order:
        sel = [r["iou"] for r in records if r[key] == g]
        out[g] = {"n": len(sel), "mean_iou": float(np.mean(sel)) if sel else float("nan"), "box_acc": box_acc(sel)}
    return out
