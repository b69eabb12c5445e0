"""How well can Otsu boxes fit objects at a given CAM resolution? Ideal heatmaps built from the ground truth.

A CAM has one value per cell of the CAM layer's grid (7x7 for a CLIP ResNet at 224 px); the heatmap is its bilinear
upsampling to the image and the box is the Otsu box of that (handler.boxes.otsu_box). Even a perfect model cannot
draw sharper than its grid, so the BoxAcc that a model can reach is bounded by what the same pipeline gives on
"ideal" CAMs: the fraction of each cell covered by the named object (the input is squashed to the model's square
input like the serving preprocessing), optionally sharpened (``gamma``: coverage**gamma) and with a halo (``leak``:
each cell also gets ``leak`` times each of its 8 neighbours, as when activations spill over into adjacent cells).

``scripts/box_ceiling.py`` runs this on the demo localization scenes; the demo model card quotes its numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from handler.boxes import Box, box_iou, otsu_box
from handler.explainer import heatmap_from_cam


def cell_coverage(mask: np.ndarray, grid: int, input_size: int = 224) -> torch.Tensor:
    """``(grid, grid)`` fraction of each CAM cell covered by a boolean ``(H, W)`` object mask, after squashing the
    image to ``input_size`` x ``input_size`` (the whole image, aspect ratio not kept)."""
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    squashed = F.interpolate(m, size=(input_size, input_size), mode="bilinear", align_corners=False)
    return F.adaptive_avg_pool2d(squashed, grid)[0, 0]


def ideal_cam(coverage: torch.Tensor, gamma: float = 1.0, leak: float = 0.0) -> torch.Tensor:
    """``(g, g)`` ideal CAM in [0, 1] from cell coverage: ``coverage**gamma``, plus ``leak`` times each of the 8
    neighbours, min-max normalized like a real CAM (all zeros when the coverage is)."""
    cam = coverage.clamp(min=0).pow(gamma)
    if leak:
        kernel = torch.full((1, 1, 3, 3), float(leak))
        kernel[0, 0, 1, 1] = 1.0
        cam = F.conv2d(cam[None, None], kernel, padding=1)[0, 0]
    span = cam.max() - cam.min()
    return (cam - cam.min()) / span if span > 0 else torch.zeros_like(cam)


def ideal_box(mask: np.ndarray, grid: int, gamma: float = 1.0, leak: float = 0.0, input_size: int = 224) -> Box:
    """Otsu box (image pixels) of the ideal heatmap of a boolean ``(H, W)`` object mask."""
    cam = ideal_cam(cell_coverage(mask, grid, input_size), gamma, leak)
    height, width = mask.shape
    return otsu_box(heatmap_from_cam(cam, height, width).numpy())


def ceiling(masks_and_boxes: list[tuple[np.ndarray, Box]], grid: int, gamma: float = 1.0, leak: float = 0.0,
            input_size: int = 224) -> dict:
    """BoxAcc (IoU >= 0.5) and mean IoU of ideal-heatmap Otsu boxes against each object's ground-truth box."""
    ious = [box_iou(ideal_box(mask, grid, gamma, leak, input_size), box) for mask, box in masks_and_boxes]
    return {"grid": grid, "gamma": gamma, "leak": leak, "n": len(ious),
            "boxacc": float(np.mean([iou >= 0.5 for iou in ious])), "mean_iou": float(np.mean(ious))}


def cell_profile(cam: torch.Tensor, coverage: torch.Tensor, core: float = 0.3) -> dict[str, float]:
    """Mean CAM value ``(g, g)`` over four kinds of cell of one object's ``(g, g)`` coverage: ``core`` (coverage >=
    ``core``), ``partial`` (covered, less than ``core``), ``adjacent`` (uncovered, next to a covered cell) and ``far``
    (the rest). An ideal coverage map has partial < core and zero on the last two; NaN where a kind is absent."""
    covered = coverage > 0
    near = F.max_pool2d(covered.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    kinds = {"core": coverage >= core, "partial": covered & (coverage < core), "adjacent": near & ~covered,
             "far": ~near}
    return {name: float(cam[sel].mean()) if sel.any() else float("nan") for name, sel in kinds.items()}
