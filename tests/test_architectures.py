"""CAM-layer shapes of real CLIP architectures, built with random weights (no download)."""

import pytest
import torch
from PIL import Image

from handler import Explainer, load_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "arch, size, channels, grid",
    [
        ("RN50x16", 384, 3072, 12),
        ("RN50x4", 288, 2560, 9),
        ("ViT-B-32", 224, 768, 7),
        ("ViT-B-16", 224, 768, 14),
    ],
)
def test_cam_layer_shape(arch, size, channels, grid):
    torch.manual_seed(0)
    model = load_model(arch, pretrained=None)
    assert model.image_size == size and model.cam_grid == (grid, grid)
    captured = {}
    hook = model.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        result = Explainer(model, method="gradcam").explain(Image.new("RGB", (300, 200), (120, 80, 40)), ["a dog"])[0]
    finally:
        hook.remove()
    maps = model.activation_maps(captured["out"])
    assert tuple(maps.shape) == (1, channels, grid, grid)
    assert result.cam.shape == (grid, grid) and result.heatmap.shape == (200, 300)
    if model.kind == "vit":  # batch-first tokens: class token + grid*grid patches
        assert captured["out"].shape == (1, 1 + grid * grid, channels)
