"""RISE (Petsiuk et al., BMVC 2018): the black-box baseline of the evaluation.

N random binary grids (``grid`` x ``grid`` cells, each on with probability ``p``) are bilinearly upsampled to
``(grid + 1) * cell`` pixels and cropped at a random shift in ``[0, cell)``, giving soft masks of the input size.
Each mask multiplies the model's *normalized* input tensor (as the core's Score-CAM does with its upsampled
activations), the model scores the masked batch, and the saliency is ``sum_i score_i * mask_i / (N * p)``.

Everything runs in torch on the model's device, in batches, seeded by a ``torch.Generator`` (masks are drawn on
the CPU so a seed gives the same masks on any device). The scoring function is injectable
(:func:`rise_saliency`); :class:`RISE` wires it to the core's CLIP wrapper
(score = ``logit_scale.exp() * cos(image_emb, text_emb)``) and returns explanations with the same fields as the
core's ``Explanation``, so the runner treats all methods alike.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handler.evaluation.metrics import get_otsu_box

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def default_grid(image_size: int) -> int:
    """7 cells for a 224 input (32-pixel cells, like the paper), scaled with the input size."""
    return max(2, round(image_size / 32))


def draw_grids(n: int, grid: int, cell: int, p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of ``n`` masks, drawn on the CPU: binary grids ``(n, 1, grid, grid)`` and shifts ``(n, 2)``."""
    cells = (torch.rand(n, 1, grid, grid, generator=generator) < p).float()
    shifts = torch.randint(0, cell, (n, 2), generator=generator)
    return cells, shifts


def masks_from_grids(cells: torch.Tensor, shifts: torch.Tensor, image_size: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Upsample grids bilinearly to ``(grid + 1) * cell`` and crop ``image_size`` at the shifts: ``(n, 1, S, S)``."""
    n, grid = cells.shape[0], cells.shape[-1]
    cell = math.ceil(image_size / grid)
    up = (grid + 1) * cell
    big = F.interpolate(cells.to(device), size=(up, up), mode="bilinear", align_corners=False)
    out = torch.empty(n, 1, image_size, image_size, device=device)
    for i in range(n):
        dx, dy = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = big[i, :, dy:dy + image_size, dx:dx + image_size]
    return out


def generate_masks(n: int, image_size: int, grid: int, p: float, generator: torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` RISE masks, ``(n, 1, S, S)`` float32 in [0, 1] on ``device``; randomness from ``generator`` (CPU)."""
    cells, shifts = draw_grids(n, grid, math.ceil(image_size / grid), p, generator)
    return masks_from_grids(cells, shifts, image_size, device)


@torch.no_grad()
def rise_saliency(x: torch.Tensor, score_fn: ScoreFn, n_masks: int = 8000, grid: int | None = None,
                  p: float = 0.5, batch_size: int = 100, seed: int = 0) -> torch.Tensor:
    """RISE saliency of input ``x`` ``(1, C, S, S)`` for every output of ``score_fn``.

    ``score_fn`` maps a masked batch ``(B, C, S, S)`` to scores ``(B, P)`` (one column per prompt/class).
    Returns ``(P, S, S)`` float32 on ``x``'s device: ``sum_i score_i * mask_i / (N * p)``. The masks depend on
    ``seed`` (and N, grid, p, S) only, not on ``batch_size`` or the device."""
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x must be (1, C, S, S), got {tuple(x.shape)}")
    if n_masks < 1 or batch_size < 1 or not 0 < p <= 1:
        raise ValueError("n_masks and batch_size must be >= 1 and p in (0, 1]")
    size = x.shape[-1]
    grid = grid or default_grid(size)
    cells, shifts = draw_grids(n_masks, grid, math.ceil(size / grid), p, torch.Generator().manual_seed(int(seed)))
    sal = None
    for start in range(0, n_masks, batch_size):
        masks = masks_from_grids(cells[start:start + batch_size], shifts[start:start + batch_size], size, x.device)
        scores = score_fn(x * masks.to(x.dtype)).float()  # (b, P)
        if scores.ndim == 1:
            scores = scores[:, None]
        part = scores.T @ masks.view(masks.shape[0], -1)  # (P, S*S)
        sal = part if sal is None else sal + part
    return (sal / (n_masks * p)).view(-1, size, size)


@dataclass
class RiseExplanation:
    """Same fields as the core's ``Explanation`` (the ones the evaluation uses)."""

    prompt: str
    score: float
    cam: np.ndarray  # (S, S) float32 in [0, 1]
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], original image size
    box: tuple[int, int, int, int]
    forward_passes: int
    elapsed_ms: float
    method: str = "rise"
    topk: int = 0


def _minmax(t: torch.Tensor) -> torch.Tensor:
    flat = t.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(t)


class RISE:
    """RISE on the core's model wrapper (``preprocess``, ``tokenize``, ``clip``, ``device``).

    ``scorer(prompts)`` returns the score function of the masked batches (default :meth:`clip_scorer`); inject
    another one to explain any model with a ``preprocess``.

    ``explain(image, prompts)`` runs the N masked passes once for all prompts (``forward_passes = N`` on each
    result, like the core's per-call count)."""

    method = "rise"

    def __init__(self, model, n_masks: int = 8000, grid: int | None = None, p: float = 0.5, batch_size: int = 100,
                 seed: int = 0, scorer: Callable[[Sequence[str]], ScoreFn] | None = None):
        self.model = model
        self.n_masks = int(n_masks)
        self.grid = grid
        self.p = float(p)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.scorer = scorer or self.clip_scorer

    @torch.no_grad()
    def clip_scorer(self, prompts: Sequence[str]) -> ScoreFn:
        """Score function of the core's CLIP: ``logit_scale.exp() * cos(image_emb, text_emb)``, ``(B, P)``."""
        clip = self.model.clip
        tokens = self.model.tokenize(list(prompts)).to(self.model.device)
        text = F.normalize(clip.encode_text(tokens).float(), dim=-1)  # (P, D)
        scale = clip.logit_scale.exp().float()

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            emb = F.normalize(clip.encode_image(batch).float(), dim=-1)
            return scale * emb @ text.T

        return score_fn

    def _to_pil(self, image) -> Image.Image:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, (bytes, bytearray)):
            try:
                from handler.images import decode_image
            except ImportError:
                return Image.open(io.BytesIO(image)).convert("RGB")
            return decode_image(bytes(image))
        raise TypeError(f"image must be a PIL image or bytes, got {type(image).__name__}")

    @torch.no_grad()
    def explain(self, image, prompts: Sequence[str]) -> list[RiseExplanation]:
        t0 = time.perf_counter()
        pil = self._to_pil(image)
        prompts = list(prompts)
        if not prompts:
            return []
        x = self.model.preprocess(pil)
        score_fn = self.scorer(prompts)
        unmasked: list[torch.Tensor] = []

        def with_base(batch: torch.Tensor) -> torch.Tensor:
            if unmasked:
                return score_fn(batch)
            scores = score_fn(torch.cat([x, batch]))  # the unmasked image rides along with the first batch
            unmasked.append(scores[0])
            return scores[1:]

        sal = rise_saliency(x, with_base, self.n_masks, self.grid, self.p, self.batch_size, self.seed)
        base = unmasked[0].float().cpu().numpy().reshape(-1)
        cam = _minmax(sal)
        w, h = pil.size
        heat = _minmax(F.interpolate(cam[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0])
        cam_np = cam.float().cpu().numpy().astype(np.float32)
        heat_np = heat.float().cpu().numpy().astype(np.float32)
        otsu_box = get_otsu_box()
        elapsed = (time.perf_counter() - t0) * 1000.0
        return [
            RiseExplanation(prompt=pr, score=float(base[i]), cam=cam_np[i], heatmap=heat_np[i],
                            box=tuple(int(v) for v in otsu_box(heat_np[i])), forward_passes=self.n_masks,
                            elapsed_ms=elapsed)
            for i, pr in enumerate(prompts)
        ]
