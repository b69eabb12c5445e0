"""CAM methods: which channels each one masks, and its weighting hook.

Every method turns the CAM-layer activations ``A`` (N, h, w) into a map ``(h, w)``; the explainer then
applies ReLU and min-max normalization. Definitions follow the papers and pytorch-grad-cam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: CAM layers a ResNet tower offers (the last block of each stage); layer4 is the default and the paper's.
RESNET_CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class CamMethod:
    """What a method needs and how it weights the channels."""

    name: str
    needs_gradient: bool  # one head backward per prompt
    masked: str  # which channels get a masked forward pass: "none", "topk" or "all"

    def select_channels(self, grads: torch.Tensor | None, num_channels: int, topk: int) -> torch.Tensor | None:
        """Channels to score with masked passes, sorted: ``(k,)`` long tensor, or None.

        gScoreCAM ranks channels by the spatially averaged gradient (signed) and keeps the top k.
        """
        if self.masked == "none":
            return None
        if self.masked == "all":
            return torch.arange(num_channels)
        importance = grads.mean(dim=(1, 2))  # (N,)
        return torch.topk(importance, k=min(topk, num_channels)).indices.sort().values.cpu()

    def weighted_map(
        self,
        activations: torch.Tensor,
        grads: torch.Tensor | None,
        channels: torch.Tensor | None,
        masked_scores: torch.Tensor | None,
    ) -> torch.Tensor:
        """The map before ReLU, ``(h, w)``.

        Args:
            activations: ``(N, h, w)`` CAM-layer activations.
            grads: ``(N, h, w)`` gradient of the score at the CAM layer (gradient methods).
            channels: ``(k,)`` masked channels (score methods).
            masked_scores: ``(k,)`` scores of the masked inputs, aligned with ``channels``.
        """
        if self.masked != "none":
            # Softmax over the k scores; every other channel gets weight 0 (the paper's "discarding").
            weights = torch.zeros(activations.shape[0], dtype=activations.dtype, device=activations.device)
            weights[channels.to(activations.device)] = torch.softmax(masked_scores.to(activations.dtype), dim=0)
            return torch.einsum("n,nhw->hw", weights, activations)
        if self.name == "gradcam":
            return torch.einsum("n,nhw->hw", grads.mean(dim=(1, 2)), activations)
        if self.name == "gradcampp":
            # Chattopadhyay et al. 2018, with pytorch-grad-cam's closed form for exp-free scores.
            grads2 = grads.pow(2)
            grads3 = grads2 * grads
            sum_activations = activations.sum(dim=(1, 2))[:, None, None]
            alpha = grads2 / (2 * grads2 + sum_activations * grads3 + 1e-6)
            alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
            weights = (grads.clamp(min=0) * alpha).sum(dim=(1, 2))
            return torch.einsum("n,nhw->hw", weights, activations)
        if self.name == "layercam":
            # Jiang et al. 2021: element-wise positive gradients times activations.
            return (grads.clamp(min=0) * activations).sum(dim=0)
        raise AssertionError(self.name)


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gscorecam", needs_gradient=True, masked="topk"),
        CamMethod("scorecam", needs_gradient=False, masked="all"),
        CamMethod("gradcam", needs_gradient=True, masked="none"),
        CamMethod("gradcampp", needs_gradient=True, masked="none"),
        CamMethod("layercam", needs_gradient=True, masked="none"),
    )
}


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Min-max normalize to [0, 1] over ``dims``; a constant slice becomes 0 (never NaN)."""
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(x))
