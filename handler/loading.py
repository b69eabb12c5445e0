"""Loading any open_clip CLIP (ResNet or ViT tower) and locating its CAM layer.

``load_model()`` with no arguments loads the small demo CLIP shipped in ``model_store/demo/``.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from PIL import Image
from torch import nn

from handler.cams import RESNET_CAM_LAYERS
from handler.errors import InputError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The embedded demo model (trained by scripts/train_demo_clip.py; see model_store/demo/README.md).
DEMO_DIR = REPO_ROOT / "model_store" / "demo"
DEMO_CONFIG = DEMO_DIR / "demo_clip.json"
DEMO_WEIGHTS = DEMO_DIR / "demo_clip.safetensors"

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip model config read from a JSON file.

    Accepts a plain open_clip config ``{"embed_dim", "vision_cfg", "text_cfg", ...}`` or open_clip's
    local-dir layout ``{"model_cfg": {...}, "preprocess_cfg": {...}}``, optionally with a
    ``"gscorecam": {"topk": K}`` section that carries the model's default k.
    """

    name: str  # registry name (the file stem)
    model_cfg: dict  # what open_clip's CLIP(**cfg) takes
    preprocess_cfg: dict  # overrides of open_clip's preprocessing (mean/std/interpolation)
    default_topk: int | None  # the model's own default k for gScoreCAM, if it carries one

    @classmethod
    def from_json(cls, path: Path) -> ModelSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read model config {path}: {exc}") from exc
        model_cfg = dict(data.get("model_cfg", data))
        for key in ("preprocess_cfg", "gscorecam"):
            model_cfg.pop(key, None)
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - model_cfg.keys()
        if missing:
            raise InputError(f"model config {path} lacks {sorted(missing)}")
        topk = data.get("gscorecam", {}).get("topk")
        return cls(Path(path).stem, model_cfg, dict(data.get("preprocess_cfg", {})), topk)

    def register(self) -> None:
        """Register the config with open_clip (``open_clip.add_model_config`` reads files, so write one)."""
        import open_clip

        folder = Path(tempfile.mkdtemp(prefix="gscorecam-cfg-"))
        (folder / f"{self.name}.json").write_text(json.dumps(self.model_cfg))
        open_clip.add_model_config(folder)


def fold_batchnorm(tower: nn.Module) -> nn.Module:
    """An inference copy of a ModifiedResNet tower with every BatchNorm folded into the convolution before it.

    In eval mode BatchNorm is a per-channel affine map, so ``bn(conv(x)) == conv'(x)`` with rescaled weights and a
    bias: the copy computes the same function (up to float rounding) with one pass less over every activation, about
    a fifth of a small ResNet's CPU time. Pairs are ``convN``/``bnN`` children and ``Conv2d, BatchNorm2d``
    neighbours in a Sequential (the downsample branch), which is every BatchNorm of open_clip's ModifiedResNet.
    The folding is done in float32 and the copy is cast back to the tower's dtype.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    dtype = next(tower.parameters()).dtype
    folded = copy.deepcopy(tower).float().eval()
    for parent in list(folded.modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.BatchNorm2d):
                continue
            if isinstance(parent, nn.Sequential):
                conv_name, conv = children[i - 1] if i > 0 else (None, None)
            else:
                conv_name = "conv" + name[2:] if name.startswith("bn") else None
                conv = getattr(parent, conv_name, None) if conv_name else None
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"no convolution before BatchNorm {name!r} in {type(parent).__name__}")
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, child))
            setattr(parent, name, nn.Identity())
    return folded.to(dtype).requires_grad_(False)


class ClipModel:
    """An open_clip CLIP in eval mode with frozen weights, plus what explaining it needs.

    Attributes:
        clip: the open_clip module.
        target_layer: the module whose output is the CAM layer.
        image_size: S, the square input size.
        default_topk: the model's own default k for gScoreCAM, or None (then 300).
        name: the arch name.
        device: where the model lives.
        kind: "resnet" or "vit".
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        name: str,
        default_topk: int | None = None,
        channels_last: bool | None = None,
    ) -> None:
        self.clip = clip.eval().requires_grad_(False)  # no parameter needs a gradient: the trunk builds no graph
        self.tokenizer = tokenizer
        self.name = name
        self.default_topk = default_topk
        visual = clip.visual
        self.device = next(clip.parameters()).device
        self.dtype = next(visual.parameters()).dtype
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device=self.device).view(1, 3, 1, 1)
        if isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            self.target_layer: nn.Module = visual.layer4[-1]
            self.cam_grid = (self.image_size // 32, self.image_size // 32)
        elif isinstance(visual, VisionTransformer):
            if len(visual.transformer.resblocks) < 2:
                raise InputError("ViT towers need at least 2 residual blocks for the CAM layer")
            self.kind = "vit"
            self.target_layer = visual.transformer.resblocks[-2]
            self.cam_grid = tuple(int(g) for g in visual.grid_size)
        else:
            raise InputError(f"unsupported vision tower {type(visual).__name__}: need a ModifiedResNet or VisionTransformer")
        # channels_last is faster for the ResNet convolutions on CPU and GPU (see docs/BENCHMARKS.md).
        self.channels_last = (self.kind == "resnet") if channels_last is None else channels_last
        if self.channels_last:
            visual.to(memory_format=torch.channels_last)
        self._inference_tower: nn.Module | None = None

    def __repr__(self) -> str:
        return f"ClipModel({self.name}, {self.kind}, {self.image_size}px, device={self.device})"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalized ``(1, 3, S, S)`` tensor on the model's device.

        The WHOLE image is resized to S x S (bicubic, aspect ratio not kept) so no object is cropped away.
        """
        from handler.images import to_rgb

        rgb = to_rgb(image).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).to(self.device)
        x = pixels.permute(2, 0, 1).unsqueeze(0).float() / 255.0  # normalize in fp32, then cast to the weights' dtype
        x = ((x - self.mean) / self.std).to(self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def inference_tower(self) -> nn.Module:
        """The vision tower for passes that need no hook and no gradient (the masked passes): for ResNets a copy
        with BatchNorm folded into the convolutions (built once, on first use), else the tower itself.
        ``inference_tower()(x)`` equals ``clip.encode_image(x)`` up to float rounding. It is a copy: weights changed
        in place after its first use do not reach it (ClipModel treats the weights as frozen)."""
        if self._inference_tower is None:
            if self.kind == "resnet":
                self._inference_tower = fold_batchnorm(self.clip.visual).to(memory_format=self.memory_format)
            else:
                self._inference_tower = self.clip.visual
        return self._inference_tower

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> ``(P, context_length)`` token tensor on the device; long prompts are truncated."""
        return self.tokenizer(list(prompts)).to(self.device)

    def cam_layer(self, name: str | None = None) -> nn.Module:
        """The module whose output is the CAM layer. ``None``: the default, ``target_layer`` (a ResNet's last
        convolutional block, the paper's choice; a ViT's second-to-last block). ResNets also take ``"layer1"`` to
        ``"layer4"``, the last block of that stage: each stage before layer4 doubles the grid (layer3: 14x14 at
        224 px) with less prompt-specific maps (model_store/demo/README.md measures both on the demo model)."""
        if name is None:
            return self.target_layer
        if self.kind != "resnet":
            raise InputError(f"cam_layer {name!r}: only ResNet towers take a CAM layer other than the default")
        if name not in RESNET_CAM_LAYERS:
            raise InputError(f"cam_layer must be one of {RESNET_CAM_LAYERS} or None, got {name!r}")
        return getattr(self.clip.visual, name)[-1]

    def activation_maps(self, captured: torch.Tensor) -> torch.Tensor:
        """CAM-layer output -> ``(B, N, h, w)`` maps. ViT: drop the class token(s), tokens to the patch grid."""
        if self.kind == "resnet":
            return captured
        gh, gw = self.cam_grid
        patches = captured[:, captured.shape[1] - gh * gw :, :]  # open_clip ViTs run batch-first (B, L, D)
        return patches.transpose(1, 2).reshape(captured.shape[0], -1, gh, gw)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad checkpoint file
        raise InputError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise InputError(f"checkpoint {path} holds no state dict")
    return state


def _load_checkpoint(clip: nn.Module, path: Path) -> None:
    """Load an open_clip or OpenAI-layout state dict; a mismatch names the missing/unexpected keys."""
    from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = _read_state_dict(path)
    if next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and clip.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI archive extras
        state.pop(key, None)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    expected = clip.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatch: {few(wrong_shape)}")
        raise InputError(f"checkpoint {path} does not match the architecture: " + "; ".join(parts))
    clip.load_state_dict(state, strict=True)


def load_model(
    arch: str | Path | None = None,
    pretrained: str | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    quick_gelu: bool | None = None,
) -> ClipModel:
    """Load a CLIP for explanation.

    Args:
        arch: an open_clip model name (``"RN50x16"``, ``"ViT-B-32"``, ...) or the path of a model-config JSON.
            None with no weights given: the embedded demo model.
        pretrained: an open_clip pretrained tag (e.g. ``"openai"``; downloads where a network exists) or None
            for random weights.
        checkpoint: a local state dict (``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or
            ``.safetensors``), open_clip or OpenAI key layout.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, or ``"fp16"``/``"bf16"`` weights (for GPUs).
        channels_last: memory format of the vision tower; None picks channels_last for ResNet towers.
        quick_gelu: build with QuickGELU activations, as OpenAI's weights need. None: what the pretrained tag
            says (``pretrained="openai"`` turns it on), else the config's own. For OpenAI weights in a
            ``checkpoint`` file pass True (or the ``-quickgelu`` arch name): plain GELU loads without error
            but gives wrong embeddings.

    Raises:
        InputError: unknown arch, unreadable config, or a checkpoint that does not match the arch.
    """
    import open_clip

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if arch is None and pretrained is None and checkpoint is None:
        if not DEMO_WEIGHTS.is_file():
            raise InputError(f"the embedded demo model is missing ({DEMO_WEIGHTS}); train it with scripts/train_demo_clip.py")
        arch, checkpoint = DEMO_CONFIG, DEMO_WEIGHTS
    if arch is None:
        raise InputError("arch is required when pretrained or checkpoint is given")
    default_topk = None
    preprocess_cfg = None
    name = str(arch)
    if name.endswith(".json") or Path(name).is_file():
        spec = ModelSpec.from_json(Path(name))
        spec.register()
        name, default_topk, preprocess_cfg = spec.name, spec.default_topk, spec.preprocess_cfg or None
    elif name not in open_clip.list_models():
        raise InputError(f"unknown arch {name!r}: not an open_clip model name nor a config JSON path")
    if pretrained is not None and checkpoint is not None:
        raise InputError("give either pretrained or checkpoint, not both")
    if pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tags and pretrained not in tags:
            raise InputError(f"unknown pretrained tag {pretrained!r} for {name}; open_clip has {', '.join(tags)}")
        if quick_gelu is None:
            quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    # open_clip warns "Model initialized randomly" when no tag is given: wrong when our checkpoint follows.
    quiet = _DropRandomInitWarning() if checkpoint is not None else None
    if quiet is not None:
        logging.getLogger().addFilter(quiet)
    try:
        clip = open_clip.create_model(
            name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            force_quick_gelu=bool(quick_gelu),
            force_preprocess_cfg=preprocess_cfg,
        )
    except RuntimeError as exc:
        if pretrained is not None:
            raise RuntimeError(
                f"could not load pretrained={pretrained!r} for {name}: {exc}. Without a network, download the "
                "weights elsewhere and pass checkpoint=FILE"
            ) from exc
        raise
    finally:
        if quiet is not None:
            logging.getLogger().removeFilter(quiet)
    if checkpoint is not None:
        _load_checkpoint(clip, Path(checkpoint))
    tokenizer = open_clip.get_tokenizer(name)
    model = ClipModel(clip, tokenizer, Path(name).stem, default_topk, channels_last)
    logger.info("loaded %r (pretrained=%s, checkpoint=%s)", model, pretrained, checkpoint)
    return model
