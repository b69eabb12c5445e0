"""Speed of the explainer against the forward-pass floor and pytorch-grad-cam, on the same model and inputs.

The floor is the time of encoding the same k masked images in plain batches (pre-built, the model's best memory
format): what any masked-pass method must spend. ``scripts/bench.py`` is the command line over this module.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handler.explainer import Explainer, ExplainerConfig
from handler.loading import ClipModel

logger = logging.getLogger(__name__)

PROMPTS = [
    "a red circle", "a green square", "a blue triangle", "a yellow star", "a purple cross", "an orange circle",
    "a red square", "a green triangle", "a blue star", "a yellow cross", "a purple circle", "an orange square",
    "a red triangle", "a green star", "a blue cross", "a yellow circle",
]


@dataclass
class BenchResult:
    """One benchmark run's measurements (milliseconds: best of the repeats)."""

    model: str
    device: str
    image_size: int
    channels: int
    topk: int
    batch_size: int
    threads: int
    repeats: int
    ms: dict[str, float] = field(default_factory=dict)  # method -> ms per explanation (one prompt)
    passes: dict[str, int] = field(default_factory=dict)  # method -> masked passes
    floor_ms: float = 0.0  # encoding the same k masked images in plain batches, the model as loaded
    floor_all_ms: float = 0.0  # the same for all N channels (ScoreCAM's floor)
    floor_folded_ms: float = 0.0  # the k images through our inference tower (BatchNorm folded; ResNets only)
    floor_all_folded_ms: float = 0.0
    peer_ms: dict[str, float] = field(default_factory=dict)  # pytorch-grad-cam's methods
    peer_agreement: dict[str, float] = field(default_factory=dict)  # Pearson r of heatmaps, ours vs peer
    prompt_scaling_ms: dict[int, float] = field(default_factory=dict)  # prompts per image -> ms per call
    k_sweep_ms: dict[int, float] = field(default_factory=dict)  # gScoreCAM's k -> ms per explanation (one prompt)
    k_sweep_floor_ms: dict[int, float] = field(default_factory=dict)  # k -> floor (BN folded where it applies)
    peak_memory_mb: float = 0.0

    def ratios(self) -> dict[str, float]:
        out = {}
        if self.floor_ms and "gscorecam" in self.ms:
            out["gscorecam/floor"] = self.ms["gscorecam"] / self.floor_ms
        if self.floor_all_ms and "scorecam" in self.ms:
            out["scorecam/floor"] = self.ms["scorecam"] / self.floor_all_ms
        if self.floor_folded_ms and "gscorecam" in self.ms:
            out["gscorecam/floor, BN folded"] = self.ms["gscorecam"] / self.floor_folded_ms
        if self.floor_all_folded_ms and "scorecam" in self.ms:
            out["scorecam/floor, BN folded"] = self.ms["scorecam"] / self.floor_all_folded_ms
        for method, peer in (("scorecam", "ScoreCAM"), ("gradcam", "GradCAM")):
            if method in self.ms and peer in self.peer_ms:
                out[f"{method}/pytorch-grad-cam"] = self.ms[method] / self.peer_ms[peer]
        if 1 in self.prompt_scaling_ms:
            for n, ms in self.prompt_scaling_ms.items():
                if n != 1:
                    out[f"{n} prompts/1 prompt"] = ms / self.prompt_scaling_ms[1]
        return out

    def to_json(self) -> dict:
        data = asdict(self)
        data["ratios"] = self.ratios()
        return data

    def table(self) -> str:
        rows = [
            f"model {self.model} on {self.device} ({self.threads} threads), {self.image_size}px, N={self.channels}, "
            f"k={self.topk}, batch {self.batch_size}, best of {self.repeats}",
            "",
            "| what | ms | masked passes |",
            "|---|---:|---:|",
        ]
        rows += [f"| ours: {m} | {ms:.1f} | {self.passes.get(m, 0)} |" for m, ms in self.ms.items()]
        rows.append(f"| floor: k={self.topk} masked images, plain batches | {self.floor_ms:.1f} | {self.topk} |")
        if self.floor_all_ms:
            rows.append(f"| floor: all N={self.channels} masked images | {self.floor_all_ms:.1f} | {self.channels} |")
        if self.floor_folded_ms:
            rows.append(f"| floor, BN folded: k={self.topk} masked images | {self.floor_folded_ms:.1f} | {self.topk} |")
        if self.floor_all_folded_ms:
            rows.append(f"| floor, BN folded: all N={self.channels} masked images | {self.floor_all_folded_ms:.1f} "
                        f"| {self.channels} |")
        rows += [f"| pytorch-grad-cam: {m} | {ms:.1f} | |" for m, ms in self.peer_ms.items()]
        rows += [f"| ours: gscorecam, {n} prompts, one image | {ms:.1f} | |" for n, ms in self.prompt_scaling_ms.items()]
        rows += [f"| ours: gscorecam, k={k} (floor {self.k_sweep_floor_ms.get(k, 0.0):.1f}) | {ms:.1f} | |"
                 for k, ms in self.k_sweep_ms.items()]
        rows += ["", "| ratio | value |", "|---|---:|"]
        rows += [f"| {name} | {value:.3f} |" for name, value in self.ratios().items()]
        rows += [f"| heatmap agreement r, {m} vs pytorch-grad-cam | {r:.4f} |" for m, r in self.peer_agreement.items()]
        rows.append(f"\npeak memory: {self.peak_memory_mb:.0f} MB")
        return "\n".join(rows)


def plot(result: BenchResult, path) -> None:
    """Time vs k (ours and the floor) and time vs prompts per image, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_k, by_prompts) = plt.subplots(1, 2, figsize=(10, 4))
    ks = sorted(result.k_sweep_ms)
    if ks:
        by_k.plot(ks, [result.k_sweep_ms[k] for k in ks], "o-", label="ours: gscorecam")
        by_k.plot(ks, [result.k_sweep_floor_ms[k] for k in ks], "s--", label="floor: k masked images")
        by_k.legend()
    by_k.set(xlabel="k (masked channels)", ylabel="ms per explanation", title=f"{result.model} on {result.device}")
    counts = sorted(result.prompt_scaling_ms)
    if counts:
        by_prompts.plot(counts, [result.prompt_scaling_ms[n] for n in counts], "o-", label="ours: gscorecam")
        one = result.prompt_scaling_ms.get(1)
        if one:
            by_prompts.plot(counts, [one * n for n in counts], ":", color="grey", label="one call per prompt")
        by_prompts.legend()
    by_prompts.set(xlabel="prompts per image (one call)", ylabel="ms per call", title=f"k={result.topk}",
                   xscale="log", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time of ``fn`` in ms over ``repeats`` runs, after one warm-up call (the minimum is the estimate
    least disturbed by other work on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return min(times)


def floor_ms(model: ClipModel, image: Image.Image, count: int, batch_size: int, repeats: int, amp: str | None,
             tower: torch.nn.Module | None = None) -> float:
    """Time to encode ``count`` pre-built masked images in plain batches: the cost no masked method avoids.

    ``tower``: the vision tower to time (default: the model's own, as loaded)."""
    tower = tower if tower is not None else model.clip.visual
    x = model.preprocess(image)
    batches = []
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        masks = torch.rand((n, 1, model.image_size, model.image_size), device=model.device, dtype=x.dtype)
        batches.append((x * masks).contiguous(memory_format=model.memory_format))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp or "")

    def encode_all():
        with torch.inference_mode(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
            for batch in batches:
                F.normalize(tower(batch).float(), dim=-1)

    return best_ms(encode_all, repeats, model.device)


class ClipAsClassifier(torch.nn.Module):
    """CLIP wrapped as a classifier over cached prompt embeddings: how pytorch-grad-cam sees a model."""

    def __init__(self, clip: torch.nn.Module, text: torch.Tensor) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("text", text)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.logit_scale.exp() * F.normalize(self.clip.encode_image(x), dim=-1) @ self.text.T


def peer_runs(model: ClipModel, image: Image.Image, prompt: str, batch_size: int, methods: list[str],
              repeats: int, ours: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    """pytorch-grad-cam's methods on a copy of the model (it needs autograd through the trunk)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    text = Explainer(model).text_embeddings([prompt]).clone()
    clip = copy.deepcopy(model.clip).requires_grad_(True)
    wrapper = ClipAsClassifier(clip, text).eval()
    if model.kind == "resnet":
        target, reshape = clip.visual.layer4[-1], None
    else:
        target, reshape = clip.visual.transformer.resblocks[-2], model.activation_maps
    x = model.preprocess(image)
    times, agreement = {}, {}
    for name in methods:
        cam_class = getattr(pytorch_grad_cam, name)
        with cam_class(model=wrapper, target_layers=[target], reshape_transform=reshape) as cam:
            cam.batch_size = batch_size
            result = {}

            def run(cam=cam, result=result):
                result["cam"] = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])[0]

            times[name] = best_ms(run, repeats, model.device)
        ours_name = {"ScoreCAM": "scorecam", "GradCAM": "gradcam"}[name]
        if ours_name in ours:
            mine = F.interpolate(torch.from_numpy(ours[ours_name])[None, None], size=result["cam"].shape,
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
            agreement[name] = heatmap_agreement(mine, result["cam"])
    return times, agreement


def heatmap_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two heatmaps; two flat maps agree (1.0), one flat map does not (0.0)."""
    flat_a, flat_b = np.ptp(a) < 1e-6, np.ptp(b) < 1e-6
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_benchmark(
    model: ClipModel,
    image: Image.Image,
    topk: int | None = None,
    batch_size: int = 32,
    repeats: int = 3,
    methods: tuple[str, ...] = ("gscorecam", "scorecam", "gradcam"),
    peer: tuple[str, ...] = ("ScoreCAM", "GradCAM"),
    prompt_counts: tuple[int, ...] = (1, 4, 16),
    amp: str | None = None,
    progress: Callable[[str], None] = logger.info,
    k_sweep: tuple[int, ...] = (),
) -> BenchResult:
    """Measure ours, the floor, the peer and prompt scaling on one model and image."""
    config = ExplainerConfig(topk=topk, batch_size=batch_size, amp=amp)
    explainer = Explainer.from_config(model, config)
    prompt = PROMPTS[0]
    probe = explainer.explain(image, prompt, method="gscorecam")[0]
    channels = int(model.activation_maps(capture_cam_layer(model, image)).shape[1])
    result = BenchResult(model.name, str(model.device), model.image_size, channels, probe.topk, batch_size,
                         torch.get_num_threads(), repeats)
    cams = {}
    for method in methods:
        progress(f"ours: {method}")
        out = {}

        def run(method=method, out=out):
            out["r"] = explainer.explain(image, prompt, method=method)[0]

        result.ms[method] = best_ms(run, repeats, model.device)
        result.passes[method] = out["r"].forward_passes
        cams[method] = out["r"].cam
    progress("floor")
    result.floor_ms = floor_ms(model, image, probe.topk, batch_size, repeats, amp)
    if "scorecam" in methods:
        result.floor_all_ms = floor_ms(model, image, channels, batch_size, repeats, amp)
    has_folded_tower = model.inference_tower() is not model.clip.visual  # ResNets
    if has_folded_tower:
        folded = model.inference_tower()
        result.floor_folded_ms = floor_ms(model, image, probe.topk, batch_size, repeats, amp, folded)
        if "scorecam" in methods:
            result.floor_all_folded_ms = floor_ms(model, image, channels, batch_size, repeats, amp, folded)
    for count in prompt_counts:
        progress(f"ours: gscorecam, {count} prompts")
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
        result.prompt_scaling_ms[count] = best_ms(lambda p=prompts: explainer.explain(image, p), repeats, model.device)
    # the explainer's masked passes run on the folded tower where it applies: so does the sweep's floor, and the
    # floors measured above are reused by image count
    explainer_folds = config.fold_batchnorm and has_folded_tower
    fastest = model.inference_tower() if explainer_folds else None
    known_floors = {probe.topk: result.floor_folded_ms if explainer_folds else result.floor_ms}
    if "scorecam" in methods:
        known_floors[channels] = result.floor_all_folded_ms if explainer_folds else result.floor_all_ms
    for k in k_sweep:
        count = min(k, channels)
        if count == probe.topk and "gscorecam" in result.ms:  # measured above: do not time it twice
            result.k_sweep_ms[k] = result.ms["gscorecam"]
        else:
            progress(f"ours: gscorecam, k={k}")
            result.k_sweep_ms[k] = best_ms(lambda k=k: explainer.explain(image, prompt, topk=k), repeats, model.device)
        if known_floors.get(count):
            result.k_sweep_floor_ms[k] = known_floors[count]
        else:
            result.k_sweep_floor_ms[k] = floor_ms(model, image, count, batch_size, repeats, amp, fastest)
    if peer:
        progress(f"pytorch-grad-cam: {', '.join(peer)}")
        result.peer_ms, result.peer_agreement = peer_runs(model, image, prompt, batch_size, list(peer), repeats, cams)
    result.peak_memory_mb = peak_memory_mb(model.device)
    return result


def capture_cam_layer(model: ClipModel, image: Image.Image) -> torch.Tensor:
    """The CAM layer's raw output for ``image`` (one inference pass)."""
    captured = {}
    hook = model.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.inference_mode():
            model.clip.encode_image(model.preprocess(image))
    finally:
        hook.remove()
    return captured["out"]
