"""Shared fixtures: tiny open_clip CLIPs built in the test with fixed seeds (open_clip test_inference style)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_CONFIGS = {
    # ModifiedResNet, width 8 at 64 px: CAM layer 256 x 2 x 2.
    "tiny_rn": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": TEXT_CFG,
    },
    # ModifiedResNet at 128 px: CAM layer 256 x 4 x 4 (enough spatial detail for parity checks).
    "tiny_rn128": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": TEXT_CFG,
    },
    # ViT, patch 16 at 64 px: CAM layer 64 x 4 x 4.
    "tiny_vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": TEXT_CFG,
    },
}


def write_config(folder: Path, name: str) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(TINY_CONFIGS[name]))
    return path


@pytest.fixture(scope="session")
def config_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("configs")
    for name in TINY_CONFIGS:
        write_config(folder, name)
    return folder


def _load(config_dir: Path, name: str):
    from handler import load_model

    torch.manual_seed(0)
    return load_model(config_dir / f"{name}.json")


@pytest.fixture(scope="session")
def tiny_rn(config_dir):
    return _load(config_dir, "tiny_rn")


@pytest.fixture(scope="session")
def tiny_rn128(config_dir):
    return _load(config_dir, "tiny_rn128")


@pytest.fixture(scope="session")
def tiny_vit(config_dir):
    return _load(config_dir, "tiny_vit")


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A non-square image with structure (two coloured discs on a gradient)."""
    yy, xx = np.mgrid[0:90, 0:140]
    rgb = np.stack([xx / 140 * 120, yy / 90 * 120, np.full_like(xx, 60.0)], axis=-1)
    rgb[(xx - 40) ** 2 + (yy - 45) ** 2 < 20**2] = (230, 30, 30)
    rgb[(xx - 105) ** 2 + (yy - 40) ** 2 < 14**2] = (30, 30, 230)
    return Image.fromarray(rgb.astype(np.uint8))
