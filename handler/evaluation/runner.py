"""The evaluation loop: every (image, method setting) once, all categories of an image in one call.

Per image and method setting the runner explains the image for the prompts of all the categories present in it
(so the prompts share the masked passes), turns each explanation into a per-explanation record
(:func:`handler.evaluation.metrics.explanation_metrics` + timing) and caches the image's records as one JSON file
under ``<cache>/<setting>/<image id>.json``. With ``resume=True`` cached images are not recomputed, so a killed
run continues where it stopped; ``<cache>/run.json`` records what the cache was computed with and a resume with a
different model, dataset or setting refuses to mix results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from handler.errors import InputError
from handler.evaluation.datasets import Sample
from handler.evaluation.metrics import explanation_metrics, get_threshold_box

logger = logging.getLogger(__name__)

CAM_METHODS = ("gscorecam", "scorecam", "gradcam", "gradcampp", "layercam")
METHODS = (*CAM_METHODS, "rise")


@dataclass(frozen=True)
class MethodSpec:
    """One method setting: ``topk`` only matters for gscorecam (None = the model's default k)."""

    method: str
    topk: int | None = None

    @property
    def key(self) -> str:
        return f"{self.method}_k{self.topk}" if self.method == "gscorecam" and self.topk else self.method


def method_specs(methods: Sequence[str], topks: Sequence[int] | None = None) -> list[MethodSpec]:
    """One spec per method, and per k of ``topks`` for gscorecam (the ablation sweep of Table 1)."""
    specs: list[MethodSpec] = []
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if m == "gscorecam" and topks:
            specs.extend(MethodSpec(m, int(k)) for k in topks)
        else:
            specs.append(MethodSpec(m, None))
    seen, out = set(), []
    for s in specs:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "x"
    if s != str(name) or len(s) > 100:
        s = f"{s[:80]}_{hashlib.sha1(str(name).encode()).hexdigest()[:10]}"
    return s


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache file


class Runner:
    """Runs the methods over the samples with caching/resume and a tqdm progress bar (with ETA).

    ``explainer`` defaults to the core's ``Explainer(model, batch_size=batch_size)``; ``rise`` to
    ``RISE(model, **rise_kwargs)``. Both may be injected (anything with ``explain(image, prompts, ...)``
    returning objects with ``heatmap``, ``box``, ``score``, ``forward_passes``, ``elapsed_ms``, ``topk``)."""

    def __init__(self, model, specs: Sequence[MethodSpec], cache_dir: str | Path, *, resume: bool = False,
                 batch_size: int = 32, rise_kwargs: dict | None = None, pointing_tolerance: float = 0.0,
                 progress: bool = True, warmup: bool = True, run_info: dict | None = None,
                 explainer=None, rise=None):
        self.model = model
        self.specs = list(specs)
        self.cache_dir = Path(cache_dir)
        self.resume = resume
        self.pointing_tolerance = float(pointing_tolerance)
        self.progress = progress
        self.warmup = warmup
        self.rise_kwargs = dict(rise_kwargs or {})
        self.run_info = dict(run_info or {})
        self._explainer = explainer
        self._rise = rise
        self.batch_size = batch_size
        self.threshold_box = get_threshold_box()
        self.errors: list[str] = []

    # ------------------------------------------------------------------ explainers
    @property
    def explainer(self):
        if self._explainer is None:
            from handler import Explainer

            self._explainer = Explainer(self.model, batch_size=self.batch_size)
        return self._explainer

    @property
    def rise(self):
        if self._rise is None:
            from handler.evaluation.rise import RISE

            self._rise = RISE(self.model, **self.rise_kwargs)
        return self._rise

    def explain(self, spec: MethodSpec, image, prompts: list[str]) -> list:
        if spec.method == "rise":
            return self.rise.explain(image, prompts)
        return self.explainer.explain(image, prompts, method=spec.method, topk=spec.topk)

    # ------------------------------------------------------------------ cache
    def _spec_info(self, spec: MethodSpec) -> dict:
        info = {"method": spec.method, "topk": spec.topk, "pointing_tolerance": self.pointing_tolerance}
        if spec.method == "rise":
            info["rise"] = {k: self.rise_kwargs.get(k) for k in ("n_masks", "grid", "p", "seed")}
        return info

    def _check_cache(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / "run.json"
        info = {"run": self.run_info, "specs": {s.key: self._spec_info(s) for s in self.specs}}
        if self.resume and path.exists():
            old = json.loads(path.read_text())
            if old.get("run") != info["run"]:
                raise ValueError(f"--resume: the cache in {self.cache_dir} was made with {old.get('run')}, "
                                 f"not {info['run']}; use another --cache/--out or drop --resume")
            for key, spec_info in info["specs"].items():
                if key in old.get("specs", {}) and old["specs"][key] != spec_info:
                    raise ValueError(f"--resume: cached {key} was made with {old['specs'][key]}, not {spec_info}")
            info["specs"] = {**old.get("specs", {}), **info["specs"]}
        _write_json(path, info)

    def cache_path(self, spec: MethodSpec, sample: Sample) -> Path:
        return self.cache_dir / _safe(spec.key) / f"{_safe(sample.image_id)}.json"

    # ------------------------------------------------------------------ per image
    @staticmethod
    def needs_backward(spec: MethodSpec) -> bool:
        """Whether the method runs one (head-only) backward per prompt (gradient methods and gScoreCAM)."""
        if spec.method == "rise":
            return False
        from handler.explainer import check_method

        return bool(check_method(spec.method).needs_gradient)

    def records_for(self, spec: MethodSpec, sample: Sample, image) -> list[dict]:
        prompts = [t.prompt for t in sample.targets]
        results = self.explain(spec, image, prompts)
        if len(results) != len(prompts):
            raise RuntimeError(f"{spec.key}: {len(results)} explanations for {len(prompts)} prompts")
        records = []
        n = len(results)
        backward = 1.0 if self.needs_backward(spec) else 0.0
        for target, r in zip(sample.targets, results, strict=True):
            rec = explanation_metrics(r.heatmap, r.box, target.boxes, n_objects=sample.n_objects,
                                      pointing_tolerance=self.pointing_tolerance, threshold_box=self.threshold_box)
            rec.update({
                "image_id": sample.image_id,
                "category": target.name,
                "prompt": target.prompt,
                "method": spec.method,
                "setting": spec.key,
                "topk": int(getattr(r, "topk", 0) or 0),
                "score": float(r.score),
                "box": [int(v) for v in r.box],
                "ms_per_explanation": float(r.elapsed_ms) / n,
                "passes_per_call": int(r.forward_passes),
                "passes_per_explanation": float(r.forward_passes) / n,
                # + the one unmasked forward of the call (the CAM methods' trunk pass, RISE's base score)
                "forward_passes_per_explanation": (float(r.forward_passes) + 1.0) / n,
                "backward_passes_per_explanation": backward,
            })
            records.append(rec)
        return records

    def run(self, samples: Sequence[Sample], on_image: Callable[[int], None] | None = None) -> dict[str, list[dict]]:
        """``{setting key: [records]}`` over all samples (cached ones read back)."""
        self._check_cache()
        for spec in self.specs:
            (self.cache_dir / _safe(spec.key)).mkdir(parents=True, exist_ok=True)
        out: dict[str, list[dict]] = {s.key: [] for s in self.specs}
        total = len(samples) * len(self.specs)
        bar = tqdm(total=total, desc="evaluate", unit="expl-set", disable=not self.progress, dynamic_ncols=True)
        warmed = not self.warmup
        try:
            for i, sample in enumerate(samples):
                image = None
                for spec in self.specs:
                    path = self.cache_path(spec, sample)
                    if self.resume and path.exists():
                        out[spec.key].extend(json.loads(path.read_text())["records"])
                        bar.update(1)
                        continue
                    if image is None:
                        image = sample.load_image()
                    if not warmed:  # first call pays lazy initialisation; keep it out of the timings
                        self.explain(MethodSpec("gradcam"), image, [sample.targets[0].prompt])
                        warmed = True
                    t0 = time.perf_counter()
                    try:
                        records = self.records_for(spec, sample, image)
                    except InputError as exc:  # a bad image must not kill a long run; reported at the end
                        self.errors.append(f"{sample.image_id}: {exc}")
                        records = []
                    _write_json(path, {"image_id": sample.image_id, "setting": spec.key, "records": records,
                                       "wall_s": time.perf_counter() - t0})
                    out[spec.key].extend(records)
                    bar.set_postfix_str(f"{spec.key} {sample.image_id}", refresh=False)
                    bar.update(1)
                if on_image is not None:
                    on_image(i)
        finally:
            bar.close()
        if self.errors:
            logger.warning("%d images skipped: %s", len(self.errors), "; ".join(self.errors[:5]))
        return out


def spec_as_dict(spec: MethodSpec) -> dict:
    return {**asdict(spec), "key": spec.key}
