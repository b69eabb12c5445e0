"""RISE: seeded masks, saliency shape/range, and it finds the region a toy model looks at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from handler.evaluation.rise import RISE, default_grid, generate_masks, rise_saliency

REGION = (slice(8, 24), slice(36, 56))  # rows, cols of a 64x64 input


def region_score(batch: torch.Tensor) -> torch.Tensor:
    """A toy model: the score is the mean of one input region (one output column)."""
    return batch[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))[:, None]


def test_masks_seeded_shape_and_range():
    a = generate_masks(64, 64, 7, 0.5, torch.Generator().manual_seed(3))
    b = generate_masks(64, 64, 7, 0.5, torch.Generator().manual_seed(3))
    c = generate_masks(64, 64, 7, 0.5, torch.Generator().manual_seed(4))
    assert a.shape == (64, 1, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert 0.35 < float(a.mean()) < 0.65  # p = 0.5
    assert default_grid(224) == 7 and default_grid(384) == 12


def test_saliency_seeded_and_batched_alike():
    x = torch.ones(1, 3, 64, 64)
    s1 = rise_saliency(x, region_score, n_masks=200, batch_size=50, seed=1)
    s2 = rise_saliency(x, region_score, n_masks=200, batch_size=50, seed=1)
    s3 = rise_saliency(x, region_score, n_masks=200, batch_size=200, seed=1)  # masks drawn in the same order
    assert s1.shape == (1, 64, 64)
    assert torch.equal(s1, s2)
    assert torch.allclose(s1, s3, atol=1e-5)


def test_saliency_peaks_on_the_scored_region():
    s = rise_saliency(torch.ones(1, 3, 64, 64), region_score, n_masks=1000, batch_size=250, seed=0, grid=7)[0]
    y, x = divmod(int(s.argmax()), 64)
    assert REGION[0].start <= y < REGION[0].stop and REGION[1].start <= x < REGION[1].stop
    inside = s[REGION].mean()
    outside = s.clone()
    outside[REGION] = float("nan")
    assert float(inside) > float(outside.nanmean()) * 1.1


class ToyWrapper:
    """Just what RISE needs from the core's model wrapper (no CLIP)."""

    device = torch.device("cpu")
    image_size = 64

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        return torch.from_numpy(arr).permute(2, 0, 1)[None]


def test_rise_explainer_on_a_toy_model():
    image = Image.new("RGB", (128, 96), (200, 200, 200))  # not square: heatmap comes back at 96 x 128
    rise = RISE(ToyWrapper(), n_masks=200, batch_size=100, seed=0, scorer=lambda prompts: region_score)
    (r,) = rise.explain(image, ["the region"])
    assert r.heatmap.shape == (96, 128) and r.cam.shape == (64, 64)
    assert r.heatmap.dtype == np.float32
    assert float(r.heatmap.min()) == pytest.approx(0.0, abs=1e-6) and float(r.heatmap.max()) == pytest.approx(1.0)
    assert r.forward_passes == 200 and r.method == "rise" and r.topk == 0 and r.elapsed_ms > 0
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
    # the box overlaps the scored region (rows 8:24, cols 36:56 of 64 -> x 72:112, y 12:36 of the image)
    assert x1 > 72 and x0 < 112 and y1 > 12 and y0 < 36
    (again,) = rise.explain(image, ["the region"])
    assert np.array_equal(r.heatmap, again.heatmap)


def test_rise_explains_a_clip_model():
    from handler import load_model

    model = load_model(_tiny_config())
    rise = RISE(model, n_masks=20, batch_size=10, seed=0)
    image = Image.new("RGB", (80, 60), (30, 60, 200))
    out = rise.explain(image, ["a blue square", "a red circle"])
    assert [r.prompt for r in out] == ["a blue square", "a red circle"]
    assert all(r.heatmap.shape == (60, 80) and np.isfinite(r.score) for r in out)


def _tiny_config():
    import json
    import tempfile
    from pathlib import Path

    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8,
                                                          "patch_size": None},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2,
                                      "layers": 1}}}
    path = Path(tempfile.mkdtemp()) / "tiny_rise_clip.json"
    path.write_text(json.dumps(cfg))
    return str(path)
