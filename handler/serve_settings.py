"""Typed settings of the TorchServe handler, read from the ``handler:`` section of the archive's model-config.yaml.

``scripts/build_mar.py`` writes that section; TorchServe parses the YAML and hands it to the worker as
``context.model_yaml_config``. Unknown keys are rejected (a typo in a config should fail loudly at load time,
not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from handler.cams import METHODS, RESNET_CAM_LAYERS

HEATMAP_FORMATS = ("png", "none")


@dataclass(frozen=True)
class ServeSettings:
    # open_clip model name (e.g. "RN50x16") or the path of a model-config JSON, relative to the archive's model
    # directory (e.g. "demo_clip.json"). Empty = the core's embedded demo model (load_model() with no arguments).
    arch: str = ""
    # Weights file (.safetensors/.pt/.bin state dict), relative to the model directory. Empty = the archive's
    # serialized file (torch-model-archiver --serialized-file), if any.
    checkpoint: str = ""
    # open_clip pretrained tag (e.g. "openai"); only used when no checkpoint is packed (needs network at load time).
    pretrained: str = ""
    # Default CAM method of a request that names none: gscorecam | scorecam | gradcam | gradcampp | layercam.
    method: str = "gscorecam"
    # Default k (channels kept after gradient ranking); None = the model's own default (the core decides).
    topk: int | None = None
    # ResNets: the stage whose last block is the CAM layer ("layer1".."layer4"); empty = the last convolutional
    # layer (layer4), the paper's. layer3 doubles the grid: tighter boxes, less prompt-specific maps.
    cam_layer: str = ""
    # Masked images per forward pass inside one explanation (memory vs. speed on the device).
    batch_size: int = 32
    # Largest accepted image, in pixels (W*H); bigger images are answered with 413.
    max_pixels: int = 40_000_000
    # Most prompts one request may carry (400 beyond that).
    max_prompts: int = 16
    # Longest prompt, in characters (400 beyond that).
    max_prompt_chars: int = 300
    # Default heatmap encoding of a response: "png" (base64 8-bit grayscale PNG, W x H) or "none".
    heatmap: str = "png"
    # Numeric precision on a GPU worker: "fp32" | "fp16" | "bf16" (CPU workers always run fp32).
    precision: str = "fp32"
    # torch intra-op threads per worker; 0 = leave torch's default (TorchServe workers share the CPU cores).
    torch_threads: int = 0
    # Run one small explanation in initialize, so that the worker is warm when TorchServe reports it READY.
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"handler.method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.heatmap not in HEATMAP_FORMATS:
            raise ValueError(f"handler.heatmap must be one of {HEATMAP_FORMATS}, got {self.heatmap!r}")
        if self.topk is not None and self.topk < 1:
            raise ValueError(f"handler.topk must be >= 1, got {self.topk}")
        if self.cam_layer and self.cam_layer not in RESNET_CAM_LAYERS:
            raise ValueError(f"handler.cam_layer must be empty or one of {RESNET_CAM_LAYERS}, got {self.cam_layer!r}")
        for name in ("batch_size", "max_pixels", "max_prompts", "max_prompt_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"handler.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"handler.precision must be fp32, fp16 or bf16, got {self.precision!r}")
        if self.torch_threads < 0:
            raise ValueError(f"handler.torch_threads must be >= 0, got {self.torch_threads}")

    @classmethod
    def from_yaml_config(cls, model_yaml_config: dict[str, Any] | None) -> ServeSettings:
        """Settings from a parsed model-config.yaml (the whole document; only ``handler:`` is read)."""
        section = (model_yaml_config or {}).get("handler") or {}
        if not isinstance(section, dict):
            raise ValueError("model-config.yaml: the 'handler' section must be a mapping")
        return cls.from_dict(section)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServeSettings:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"model-config.yaml: unknown handler settings {unknown}; known: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                kwargs[key] = None if key == "topk" else fields[key].default
            elif key in ("arch", "checkpoint", "pretrained", "method", "heatmap", "precision", "cam_layer"):
                kwargs[key] = str(value)
            elif key == "warmup":
                if not isinstance(value, bool):
                    raise ValueError(f"handler.warmup must be true or false, got {value!r}")
                kwargs[key] = value
            else:
                kwargs[key] = int(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, model_dir: str, serialized_file: str | None) -> tuple[str | None, str | None]:
        """(arch, checkpoint) as load_model arguments: files made absolute against the model directory."""
        arch = self.arch or None
        if arch and (arch.endswith(".json") or os.sep in arch):
            arch = os.path.join(model_dir, arch)
        checkpoint = self.checkpoint or serialized_file or None
        if checkpoint:
            checkpoint = os.path.join(model_dir, checkpoint)
        return arch, checkpoint

