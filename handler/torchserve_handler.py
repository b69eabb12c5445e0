"""TorchServe handler: a thin adapter between TorchServe's batch protocol and the gScoreCAM core.

No algorithm lives here. ``initialize`` loads CLIP with the core's ``load_model`` from the archive's model
directory (settings from the ``handler:`` section of model-config.yaml); ``preprocess`` decodes each request of
the batch (JSON, multipart or gRPC fields); ``inference`` hands all valid requests of the batch to the core in one
call (gradient ranking, then batched top-k masked passes, on the worker's GPU when it has one; requests with the
same image share passes); ``postprocess`` encodes the JSON responses (box + base64 grayscale PNG heatmap per prompt).

A bad request gets its own 4xx status and ``{"error": "..."}`` body while the rest of its batch succeeds; the
returned list always has the batch's length. Over gRPC TorchServe 0.12 does not carry a per-request status
(the call returns OK with the body), so gRPC clients must check the ``error`` key.

This module defines exactly one class (TorchServe's loader requires it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import torch
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

from handler import Explainer, ExplainerConfig, ImageTooLargeError, InputError, load_model
from handler.encoding import (
    JSON_CONTENT_TYPE,
    RequestError,
    heatmap_png_b64,
    merge_repeated_fields,
    parse_request,
)
from handler.serve_settings import ServeSettings

logger = logging.getLogger(__name__)

_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error", 507: "Insufficient Storage"}


class GScoreCAMHandler(BaseHandler):
    """gScoreCAM explanations for CLIP as a TorchServe custom handler."""

    def __init__(self) -> None:
        super().__init__()
        self.settings: ServeSettings | None = None
        self.clip = None  # the core's loaded model (handler.load_model)
        self.explainer: Explainer | None = None

    # ------------------------------------------------------------------ lifecycle
    def initialize(self, context) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir") or os.getcwd()
        self.manifest = context.manifest or {}
        self.settings = ServeSettings.from_yaml_config(getattr(context, "model_yaml_config", None))
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{gpu_id}")
            torch.cuda.set_device(self.device)
            precision = self.settings.precision
        else:
            self.device = torch.device("cpu")
            precision = "fp32"
        self.map_location = self.device.type
        serialized = (self.manifest.get("model") or {}).get("serializedFile")
        arch, checkpoint = self.settings.resolve(model_dir, serialized)
        pretrained = None if checkpoint else (self.settings.pretrained or None)
        if arch and not checkpoint and not pretrained:
            raise ValueError(f"handler.arch={arch!r} without weights: pack a checkpoint or set handler.pretrained")
        started = time.perf_counter()
        self.clip = load_model(arch or None, pretrained, checkpoint or None, device=str(self.device), precision=precision)
        self.model = self.clip.clip
        self.explainer = Explainer.from_config(
            self.clip,
            ExplainerConfig(
                method=self.settings.method,
                topk=self.settings.topk,
                batch_size=self.settings.batch_size,
                max_pixels=self.settings.max_pixels,
                cam_layer=self.settings.cam_layer or None,
            ),
        )
        merge_repeated_fields()
        load_ms = (time.perf_counter() - started) * 1000
        if self.settings.warmup:
            self._warmup()
        logger.info(
            "gScoreCAM handler ready: model=%s device=%s settings=%s (load %.0f ms, total %.0f ms); "
            "handler package from %s",
            self.clip.name,
            self.device,
            self.settings.to_dict(),
            load_ms,
            (time.perf_counter() - started) * 1000,
            os.path.dirname(os.path.abspath(sys.modules["handler"].__file__)),
        )
        self.initialized = True

    # ------------------------------------------------------------------ TorchServe stages
    def handle(self, data: list[Any], context) -> list[dict[str, Any]]:
        """preprocess -> inference -> postprocess, one response per request of the batch.

        Replaces BaseHandler.handle so that its captum "explain"/"describe" header paths (which answer one item
        for a whole batch) cannot be triggered by a client header.
        """
        started = time.perf_counter()
        self.context = context
        out = self.postprocess(self.inference(self.preprocess(data)))
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            dims = [Dimension("ModelName", context.model_name), Dimension("Level", "Model")]
            metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms", dims)
        return out

    def preprocess(self, data: list[Any]) -> list[dict[str, Any]]:
        """Each request -> {"request": ExplainRequest, ...} or {"status": 4xx, "error": message}."""
        settings = self.settings or ServeSettings()
        items: list[dict[str, Any]] = []
        for row in data:
            try:
                parsed = parse_request(row, settings.max_prompts, settings.max_prompt_chars)
                request = self.explainer.request(parsed.image, parsed.prompts, parsed.method, parsed.topk)
                items.append({"request": request, "parsed": parsed})
            except RequestError as exc:
                items.append({"status": exc.status, "error": str(exc)})
            except ImageTooLargeError as exc:
                items.append({"status": 413, "error": str(exc)})
            except InputError as exc:
                items.append({"status": 400, "error": str(exc)})
            except Exception as exc:  # never let one request's surprise fail its whole batch
                logger.exception("could not decode a request")
                items.append({"status": 500, "error": f"could not decode the request: {type(exc).__name__}: {exc}"})
        return items

    def inference(self, items: list[dict[str, Any]], *args, **kwargs) -> list[dict[str, Any]]:
        """All valid requests of the batch in one core call: requests with the same image share the trunk and
        masked passes, and masked passes of different images fill the same batches (on the worker's device)."""
        valid = [i for i, item in enumerate(items) if "request" in item]
        if not valid:
            return items
        try:
            self._explain(items, valid)
        except torch.OutOfMemoryError:
            logger.error("device out of memory on a batch of %d request(s); retrying one by one", len(valid))
            self._release_memory()
            for i in valid:  # a smaller working set may fit; what still does not gets 507
                self._explain_isolated(items, i)
        except Exception:
            logger.exception("batch of %d request(s) failed; retrying one by one", len(valid))
            for i in valid:
                self._explain_isolated(items, i)
        return items

    def postprocess(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One JSON object per request (TorchServe serializes dicts; request envelopes can embed them)."""
        out: list[dict[str, Any]] = []
        for idx, item in enumerate(items):
            if "results" not in item:
                status = int(item.get("status", 500))
                self._set_status(idx, status)
                out.append({"error": item.get("error", "request failed")})
                continue
            request, results = item["request"], item["results"]
            heatmap = item["parsed"].heatmap or self.settings.heatmap
            first = results[0]
            body = {
                "model": self.clip.name,
                "method": first.method,
                "topk": first.topk,
                "image_size": [request.image.width, request.image.height],
                "results": [self._result(r, heatmap) for r in results],
                "forward_passes": int(first.forward_passes),
                "elapsed_ms": round(float(first.elapsed_ms), 2),
            }
            self._set_status(idx, 200)
            # requests of one batch with the same image share its masked passes: the metric counts them once
            self._emit_metrics(idx, int(first.forward_passes) if first.owns_passes else 0, first.elapsed_ms)
            out.append(body)
        logger.info("gScoreCAM batch of %d request(s): statuses %s", len(items),
                    [200 if "results" in item else int(item.get("status", 500)) for item in items])
        return out

    # ------------------------------------------------------------------ helpers
    def _warmup(self) -> None:
        """One small explanation (k=2), so the first client request does not pay one-time setup costs."""
        from PIL import Image

        image = Image.new("RGB", (64, 64), (127, 127, 127))
        try:
            self.explainer.explain(image, ["warm-up"], topk=2)
        except Exception:  # warming up is an optimisation: never fail the model load on it
            logger.warning("warm-up explanation failed", exc_info=True)

    def _explain(self, items: list[dict[str, Any]], indices: list[int]) -> None:
        results = self.explainer.explain_requests([items[i]["request"] for i in indices])
        for i, res in zip(indices, results, strict=True):
            items[i]["results"] = res

    def _explain_isolated(self, items: list[dict[str, Any]], i: int) -> None:
        try:
            self._explain(items, [i])
        except ImageTooLargeError as exc:
            self._fail(items, i, 413, str(exc))
        except InputError as exc:
            self._fail(items, i, 400, str(exc))
        except torch.OutOfMemoryError:
            self._release_memory()
            self._fail(items, i, 507, "out of device memory; retry later or send a smaller image/topk")
        except Exception as exc:  # one failing request must not fail the others of the batch
            logger.exception("explanation failed")
            self._fail(items, i, 500, f"explanation failed: {type(exc).__name__}: {exc}")

    def _release_memory(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _fail(items: list[dict[str, Any]], i: int, status: int, message: str) -> None:
        items[i].pop("results", None)
        items[i]["status"] = status
        items[i]["error"] = message

    @staticmethod
    def _result(r, heatmap: str) -> dict[str, Any]:
        res: dict[str, Any] = {
            "prompt": r.prompt,
            "score": round(float(r.score), 4),
            "box": [int(v) for v in r.box],
        }
        if heatmap == "png":
            res["heatmap_png"] = heatmap_png_b64(r.heatmap)
        return res

    def _set_status(self, idx: int, status: int) -> None:
        ctx = self.context
        if ctx is None:
            return
        try:
            ctx.set_response_content_type(idx, JSON_CONTENT_TYPE)
            if status != 200:
                ctx.set_response_status(status, _PHRASES.get(status, "Error"), idx)
        except (TypeError, IndexError, AttributeError):  # no per-request processor (e.g. under a request envelope)
            pass

    def _emit_metrics(self, idx: int, passes: int, elapsed_ms: float) -> None:
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        dims = [Dimension("ModelName", self.context.model_name), Dimension("Level", "Model")]
        try:
            metrics.add_counter("MaskedForwardPasses", passes, idx=idx, dimensions=list(dims))
            metrics.add_time("ExplanationLatency", round(float(elapsed_ms), 2), idx=idx, unit="ms", dimensions=list(dims))
        except Exception:  # metrics must never fail a request
            logger.warning("could not emit metrics", exc_info=True)
