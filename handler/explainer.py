"""The explainer: gScoreCAM (and ScoreCAM, GradCAM, GradCAM++, LayerCAM) for an open_clip CLIP.

Cost model: one trunk pass per distinct image, one head-only backward per prompt (the CAM-layer output
is detached in a forward hook, so nothing behind it is differentiated), then the masked passes, which
are the whole cost. Masked inputs do not depend on the prompt, so each distinct (image, channel) is
encoded ONCE for every prompt that selected it, and all prompts' scores are one matrix product.
Masked inputs are built per batch (never all k at once) and encoded under inference mode, on a copy of a
ResNet tower with BatchNorm folded into the convolutions; channels with a constant map (all-zero masks) share
one pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handler.boxes import Box, otsu_box
from handler.cams import METHODS, RESNET_CAM_LAYERS, CamMethod, minmax
from handler.errors import InputError
from handler.images import DEFAULT_MAX_PIXELS, check_size, decode_image, to_rgb
from handler.loading import ClipModel

logger = logging.getLogger(__name__)

#: gScoreCAM's k in the paper; clamped to the channel count N.
PAPER_TOPK = 300
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExplainerConfig:
    """Settings of an Explainer (the server reads them from the archive's model-config.yaml)."""

    method: str = "gscorecam"  # gscorecam | scorecam | gradcam | gradcampp | layercam
    topk: int | None = None  # gScoreCAM's k; None = the model's own default, else 300 (clamped to N)
    batch_size: int = 32  # masked images per forward pass
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above W*H are refused (ImageTooLargeError)
    amp: str | None = None  # "fp16" | "bf16": autocast the masked passes (for GPUs); None = model precision
    text_cache_size: int = 1024  # prompts whose text embedding is kept (LRU)
    progress: bool = False  # tqdm bar over the masked batches (the CLI turns it on)
    # Masked passes on a copy of a ResNet tower with BatchNorm folded into the convolutions: the same scores up to
    # float rounding, 18-32% less CPU time (RN50, demo model); costs one extra copy of the tower's weights.
    fold_batchnorm: bool = True
    # ResNets: the stage whose last block is the CAM layer, "layer1".."layer4"; None = the last convolutional layer
    # (layer4), the paper's. layer3 doubles the grid (14x14 at 224 px): tighter boxes, less prompt-specific maps.
    cam_layer: str | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        check_topk(self.topk)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise InputError(f"amp must be None or one of {sorted(AMP_DTYPES)}, got {self.amp!r}")
        if self.max_pixels < 1:
            raise InputError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.cam_layer is not None and self.cam_layer not in RESNET_CAM_LAYERS:
            raise InputError(f"cam_layer must be one of {RESNET_CAM_LAYERS} or None, got {self.cam_layer!r}")


@dataclass
class Explanation:
    """One prompt's explanation of one image."""

    prompt: str
    score: float  # logit_scale * cos(image, prompt) on the unmasked image
    cam: np.ndarray = field(repr=False)  # float32 (h, w) in [0, 1], CAM-layer resolution
    heatmap: np.ndarray = field(repr=False)  # float32 (H, W) in [0, 1], original image size
    box: Box  # (x0, y0, x1, y1), original pixels, x1/y1 exclusive
    method: str
    topk: int  # k used: N for scorecam, 0 for gradient-only methods
    forward_passes: int  # masked passes run for this image by the call (constant maps share one all-zero mask)
    elapsed_ms: float  # wall time of the whole call
    # False when an earlier request of the same explain_requests call sent the same image: its passes were shared
    # (they are counted on that request), so that summing forward_passes over requests counts each pass once
    owns_passes: bool = True


@dataclass(frozen=True)
class ExplainRequest:
    """A validated request: an RGB image and prompts with the method and k to use."""

    image: Image.Image
    prompts: tuple[str, ...]
    method: str
    topk: int


@dataclass
class _ImageJob:
    """Work for one distinct image: every prompt of every request that sent it."""

    image: Image.Image
    prompts: list[str] = field(default_factory=list)
    methods: list[CamMethod] = field(default_factory=list)
    topks: list[int] = field(default_factory=list)
    owners: list[tuple[int, int]] = field(default_factory=list)  # (request index, prompt index)
    x: torch.Tensor | None = None  # (1, 3, S, S)
    activations: torch.Tensor | None = None  # (N, h, w)
    grads: torch.Tensor | None = None  # (P, N, h, w)
    base_scores: torch.Tensor | None = None  # (P,)
    text: torch.Tensor | None = None  # (P, D) normalized
    prompt_channels: list[torch.Tensor | None] = field(default_factory=list)
    channels: torch.Tensor | None = None  # (M,) distinct channels to mask, sorted
    encode_rows: list[int] = field(default_factory=list)  # positions in `channels` that get a masked pass
    zero_mask_rows: torch.Tensor | None = None  # positions whose mask is all zeros (constant maps)
    masked_embeddings: torch.Tensor | None = None  # (M, D) normalized


def heatmap_from_cam(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(h, w)`` CAM in [0, 1] -> ``(height, width)`` heatmap: bilinear upsampling with half-pixel centres (like
    pytorch-grad-cam's cv2.resize), clamped to [0, 1]."""
    return F.interpolate(cam[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def check_method(method: str) -> CamMethod:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return METHODS[method]


def check_topk(topk: int | None) -> None:
    if topk is None:
        return
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise InputError(f"topk must be an integer >= 1, got {topk!r}")


def check_prompts(prompts: str | Sequence[str]) -> tuple[str, ...]:
    """One prompt or a list -> tuple; empty lists, non-strings and blank prompts are InputErrors."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is None or len(prompts) == 0:
        raise InputError("no prompt given: send at least one text prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i} is not a string: {prompt!r}")
        if not prompt.strip():
            raise InputError(f"prompt {i} is empty")
    return tuple(prompts)


class Explainer:
    """Explains a CLIP's image-text score with CAM heatmaps and boxes.

    >>> explainer = Explainer(load_model(), method="gscorecam")
    >>> [r.box for r in explainer.explain(image, ["a red circle", "a blue star"])]
    """

    def __init__(
        self,
        model: ClipModel,
        method: str = "gscorecam",
        topk: int | None = None,
        batch_size: int = 32,
        *,
        config: ExplainerConfig | None = None,
    ) -> None:
        self.model = model
        self.config = config if config is not None else ExplainerConfig(method=method, topk=topk, batch_size=batch_size)
        self.cam_layer = model.cam_layer(self.config.cam_layer)  # InputError now if the tower has no such layer
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_config(cls, model: ClipModel, config: ExplainerConfig) -> Explainer:
        return cls(model, config=config)

    # ----------------------------------------------------------------------------------------- API
    def explain(
        self,
        image: Image.Image | bytes | bytearray,
        prompts: str | Sequence[str],
        method: str | None = None,
        topk: int | None = None,
    ) -> list[Explanation]:
        """Explain ``image`` for each prompt (one Explanation per prompt, in order)."""
        return self.explain_requests([self.request(image, prompts, method, topk)])[0]

    def request(
        self,
        image: Image.Image | bytes | bytearray,
        prompts: str | Sequence[str],
        method: str | None = None,
        topk: int | None = None,
    ) -> ExplainRequest:
        """Validate one request before any pass runs. Raises InputError (ImageTooLargeError) on bad input."""
        cam_method = check_method(method if method is not None else self.config.method)
        check_topk(topk)
        prompt_tuple = check_prompts(prompts)
        if isinstance(image, (bytes, bytearray, memoryview)):
            rgb = decode_image(image, self.config.max_pixels)
        elif isinstance(image, Image.Image):
            check_size(image.width, image.height, self.config.max_pixels)
            rgb = to_rgb(image)
        else:
            raise InputError(f"image must be a PIL image or encoded bytes, got {type(image).__name__}")
        k = topk or self.config.topk or self.model.default_topk or PAPER_TOPK
        return ExplainRequest(rgb, prompt_tuple, cam_method.name, k)

    def explain_requests(self, requests: Sequence[ExplainRequest]) -> list[list[Explanation]]:
        """Explain validated requests together: requests with the same image share the trunk pass and the
        masked passes, and masked passes of different images fill the same batches."""
        start = time.perf_counter()
        jobs = self._group(requests)
        for job in jobs:
            self._trunk_pass(job)
            self._select_channels(job)
        self._encode_masked(jobs)
        results: list[list[Explanation | None]] = [[None] * len(r.prompts) for r in requests]
        per_job = [self._finish(job) for job in jobs]
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        for job, explanations in zip(jobs, per_job, strict=True):
            first_request = job.owners[0][0]
            for (req, pos), explanation in zip(job.owners, explanations, strict=True):
                explanation.elapsed_ms = elapsed_ms
                explanation.owns_passes = req == first_request
                results[req][pos] = explanation
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------ stages
    @staticmethod
    def _group(requests: Sequence[ExplainRequest]) -> list[_ImageJob]:
        jobs: dict[bytes, _ImageJob] = {}
        for r_index, request in enumerate(requests):
            image = request.image
            key = hashlib.blake2b(image.tobytes(), digest_size=16, person=b"gscorecam").digest() + repr(image.size).encode()
            job = jobs.setdefault(key, _ImageJob(image))
            for p_index, prompt in enumerate(request.prompts):
                job.prompts.append(prompt)
                job.methods.append(METHODS[request.method])
                job.topks.append(request.topk)
                job.owners.append((r_index, p_index))
        return list(jobs.values())

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalized text embeddings ``(P, D)``, cached per prompt (bounded LRU)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                encoded = F.normalize(self.model.clip.encode_text(self.model.tokenize(missing)).float(), dim=-1)
            for prompt, embedding in zip(missing, encoded, strict=True):
                self._text_cache[prompt] = embedding
        for prompt in prompts:
            self._text_cache.move_to_end(prompt)
        embeddings = torch.stack([self._text_cache[p] for p in prompts])
        while len(self._text_cache) > self.config.text_cache_size:
            self._text_cache.popitem(last=False)
        return embeddings

    def _trunk_pass(self, job: _ImageJob) -> None:
        """One forward of the unmasked image; gradients at the CAM layer for the prompts that need them."""
        model = self.model
        job.x = model.preprocess(job.image)
        job.text = self.text_embeddings(job.prompts)
        need_grad = [m.needs_gradient for m in job.methods]
        captured: dict[str, torch.Tensor] = {}

        def detach_at_cam_layer(_module, _inputs, output):
            # Cut the graph here: the backward then runs only through the layers after it, never the trunk before.
            output = output.detach().requires_grad_(any(need_grad))
            captured["cam_layer"] = output
            return output

        handle = self.cam_layer.register_forward_hook(detach_at_cam_layer)
        try:
            with torch.enable_grad() if any(need_grad) else torch.no_grad():
                embedding = F.normalize(model.clip.encode_image(job.x).float(), dim=-1)
                scores = model.logit_scale.float() * embedding @ job.text.T  # (1, P)
                grads = []
                wanted = [p for p, flag in enumerate(need_grad) if flag]
                for n, p in enumerate(wanted):
                    (grad,) = torch.autograd.grad(scores[0, p], captured["cam_layer"], retain_graph=n < len(wanted) - 1)
                    grads.append(grad)
        finally:
            handle.remove()
        job.base_scores = scores[0].detach()
        job.activations = model.activation_maps(captured["cam_layer"].detach())[0].float()
        if grads:
            maps = model.activation_maps(torch.cat(grads)).float()
            job.grads = torch.zeros((len(job.prompts), *maps.shape[1:]), dtype=maps.dtype, device=maps.device)
            job.grads[torch.tensor(wanted, device=maps.device)] = maps

    @staticmethod
    def _select_channels(job: _ImageJob) -> None:
        num_channels = job.activations.shape[0]
        job.prompt_channels = [
            method.select_channels(job.grads[p] if method.needs_gradient else None, num_channels, job.topks[p])
            for p, method in enumerate(job.methods)
        ]
        selected = [c for c in job.prompt_channels if c is not None]
        job.channels = torch.unique(torch.cat(selected)) if selected else torch.zeros(0, dtype=torch.long)
        # A constant activation map min-max normalizes to an all-zero mask (cams.minmax), so every constant channel
        # gives the same masked input: encode it once. ReLU leaves many all-zero channels in some models.
        flat = job.activations[job.channels.to(job.activations.device)].flatten(1)
        constant = (flat.amax(dim=1) == flat.amin(dim=1)).cpu()
        positions = torch.arange(len(job.channels))
        job.zero_mask_rows = positions[constant]
        job.encode_rows = sorted(positions[~constant].tolist() + job.zero_mask_rows[:1].tolist())

    def _masked_batch(self, segments: list[tuple[_ImageJob, int, int]]) -> torch.Tensor:
        """Build ``(B, 3, S, S)`` masked inputs for slices of the jobs' channel lists."""
        size = self.model.image_size
        parts = []
        for job, lo, hi in segments:
            channels = job.channels[lo:hi].to(job.activations.device)
            maps = job.activations[channels].unsqueeze(0)  # (1, m, h, w)
            masks = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)[0]
            masks = minmax(masks, dims=(1, 2)).to(job.x.dtype)  # (m, S, S)
            parts.append(job.x * masks[:, None])  # (m, 3, S, S)
        return torch.cat(parts).contiguous(memory_format=self.model.memory_format)

    def _encode_masked(self, jobs: list[_ImageJob]) -> None:
        """Encode every job's masked images in batches of ``batch_size`` (jobs share batches)."""
        work: list[tuple[_ImageJob, int, int]] = []  # segments (job, lo, hi) in job.channels
        for job in jobs:
            job.masked_embeddings = torch.empty((len(job.channels), job.text.shape[1]), device=job.text.device)
            work.extend((job, i, i + 1) for i in job.encode_rows)
        batch_size = self.config.batch_size
        batches = []
        for start in range(0, len(work), batch_size):
            chunk, merged = work[start : start + batch_size], []
            for job, lo, hi in chunk:  # merge consecutive channels of one job into a slice
                if merged and merged[-1][0] is job and merged[-1][2] == lo:
                    merged[-1] = (job, merged[-1][1], hi)
                else:
                    merged.append((job, lo, hi))
            batches.append(merged)
        if self.config.amp is not None:
            autocast = torch.autocast(self.model.device.type, dtype=AMP_DTYPES[self.config.amp])
        else:
            autocast = contextlib.nullcontext()
        progress = None
        if self.config.progress and len(batches) > 1:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(work), desc="masked passes", unit="img")
        tower = self.model.inference_tower() if self.config.fold_batchnorm else self.model.clip.visual
        with torch.inference_mode(), autocast:
            for segments in batches:
                embeddings = F.normalize(tower(self._masked_batch(segments)).float(), dim=-1)
                offset = 0
                for job, lo, hi in segments:
                    job.masked_embeddings[lo:hi] = embeddings[offset : offset + hi - lo]
                    offset += hi - lo
                if progress is not None:
                    progress.update(offset)
        if progress is not None:
            progress.close()
        for job in jobs:  # constant channels share the one all-zero mask's embedding
            if len(job.zero_mask_rows) > 1:
                job.masked_embeddings[job.zero_mask_rows[1:]] = job.masked_embeddings[job.zero_mask_rows[0]].clone()

    def _finish(self, job: _ImageJob) -> list[Explanation]:
        """Weights -> CAM -> heatmap at the original size -> Otsu box, per prompt."""
        width, height = job.image.size
        if len(job.channels):
            masked_scores = self.model.logit_scale.float() * job.masked_embeddings @ job.text.T  # (M, P)
        num_channels = job.activations.shape[0]
        explanations = []
        for p, method in enumerate(job.methods):
            channels = job.prompt_channels[p]
            scores = None
            if channels is not None:
                rows = torch.searchsorted(job.channels, channels)
                scores = masked_scores[rows.to(masked_scores.device), p]
            grads = job.grads[p] if method.needs_gradient else None
            weighted = method.weighted_map(job.activations, grads, channels, scores)
            cam = minmax(torch.relu(weighted), dims=(0, 1))
            heatmap_np = heatmap_from_cam(cam, height, width).cpu().numpy().astype(np.float32)
            k = 0 if channels is None else len(channels)
            if method.masked == "all":
                k = num_channels
            explanations.append(
                Explanation(
                    prompt=job.prompts[p],
                    score=float(job.base_scores[p]),
                    cam=cam.cpu().numpy().astype(np.float32),
                    heatmap=heatmap_np,
                    box=otsu_box(heatmap_np),
                    method=method.name,
                    topk=k,
                    forward_passes=len(job.encode_rows),
                    elapsed_ms=0.0,
                )
            )
        return explanations
