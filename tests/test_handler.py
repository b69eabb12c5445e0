"""Unit tests of the TorchServe handler with TorchServe's own Context (no server): decoding of every request form,
per-request errors inside a batch, response encoding, metrics, settings, and the archive layout."""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import json
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image
from ts.context import Context, RequestProcessor

from handler.encoding import (
    RequestError,
    collect_prompts,
    heatmap_png,
    merge_repeated_fields,
    parse_request,
)
from handler.serve_settings import ServeSettings
from tests.server_fixture import build_mar, make_tiny_clip


class FakeMetrics:
    def __init__(self):
        self.calls: list[tuple] = []

    def add_counter(self, name, value, idx=None, dimensions=None):
        self.calls.append(("counter", name, value, idx))

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None, metric_type=None):
        self.calls.append(("time", name, value, idx))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    make_tiny_clip(d)
    return d


def make_context(model_dir, handler_cfg: dict | None = None, batch: int = 1) -> Context:
    manifest = {"model": {"modelName": "gscorecam", "serializedFile": "tiny_clip.safetensors",
                          "handler": "torchserve_handler.py", "configFile": "model-config.yaml"}}
    yaml_cfg = {"batchSize": batch, "handler": {"arch": "tiny_clip.json", "topk": 4, "batch_size": 16,
                                                "max_pixels": 100_000, **(handler_cfg or {})}}
    ctx = Context("gscorecam", str(model_dir), manifest, batch, None, "0.12.0", metrics=FakeMetrics(),
                  model_yaml_config=yaml_cfg)
    return ctx


@pytest.fixture(scope="module")
def handler(model_dir):
    from handler.torchserve_handler import GScoreCAMHandler

    h = GScoreCAMHandler()
    h.initialize(make_context(model_dir))
    return h


def run(handler, model_dir, rows: list) -> tuple[list[dict], Context]:
    ctx = make_context(model_dir, batch=len(rows))
    ctx.request_processor = [RequestProcessor({}) for _ in rows]
    ctx.request_ids = {i: f"req-{i}" for i in range(len(rows))}
    out = handler.handle(rows, ctx)
    assert len(out) == len(rows)
    assert all(isinstance(o, dict) for o in out)
    return out, ctx


def png(size=(48, 32), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 40, 200)).save(buf, format=fmt)
    return buf.getvalue()


def status(ctx: Context, idx: int) -> int:
    return ctx.get_response_status(idx)[0]


def test_handler_module_defines_exactly_one_class():
    from ts.utils.util import list_classes_from_module

    module = importlib.import_module("handler.torchserve_handler")
    assert [c.__name__ for c in list_classes_from_module(module)] == ["GScoreCAMHandler"]


def test_initialize_cpu_and_settings(handler):
    assert handler.device.type == "cpu"
    assert handler.settings.topk == 4 and handler.settings.arch == "tiny_clip.json"
    assert handler.clip.name == "tiny_clip"
    assert handler.initialized


def test_batch_of_every_request_form(handler, model_dir):
    image = png()
    rows = [
        {"body": {"image": base64.b64encode(image).decode(), "prompts": ["a dog", "a cat"]}},  # REST JSON
        {"image": bytearray(image), "prompt": "a dog"},  # multipart: file part bytearray, text field str
        {"image": bytearray(image), "prompts": bytearray(b'["a dog", "a bird"]')},  # gRPC: all bytearrays
        {"image": bytearray(png((40, 30), "JPEG")), "prompt": bytearray("a caf\u00e9".encode())},  # gRPC UTF-8
        {"body": bytearray(image), "prompt": "a dog"},  # raw upload + a prompt field (a custom frontend)
    ]
    bodies, ctx = run(handler, model_dir, rows)
    for i, body in enumerate(bodies):
        assert status(ctx, i) == 200, body
        assert ctx.get_response_content_type(i) == "application/json"
    assert [r["prompt"] for r in bodies[0]["results"]] == ["a dog", "a cat"]
    assert [r["prompt"] for r in bodies[2]["results"]] == ["a dog", "a bird"]
    assert bodies[3]["results"][0]["prompt"] == "a caf\u00e9" and bodies[3]["image_size"] == [40, 30]
    for body in bodies:
        assert body["model"] == "tiny_clip" and body["topk"] == 4
        for r in body["results"]:
            hm = Image.open(io.BytesIO(base64.b64decode(r["heatmap_png"])))
            assert hm.mode == "L" and hm.size == tuple(body["image_size"])
    # requests 0, 1, 2, 4 share one image: the same "a dog" explanation
    assert bodies[0]["results"][0] == bodies[1]["results"][0] == bodies[4]["results"][0]


def test_bad_requests_get_their_own_status(handler, model_dir):
    image = base64.b64encode(png()).decode()
    big = base64.b64encode(png((400, 300))).decode()  # 120,000 px > max_pixels 100,000
    rows = [
        {"body": {"image": image, "prompt": "a dog"}},
        {"body": {"image": base64.b64encode(b"garbage").decode(), "prompt": "a dog"}},
        {"body": {"image": image}},
        {"body": {"image": image, "prompts": ["a dog", ""]}},
        {"body": {"image": big, "prompt": "a dog"}},
        {"body": bytearray(b"{not json")},
        {"body": {"image": image, "prompt": "a dog", "method": "nope"}},
        {"body": {"image": image, "prompt": "a dog", "topk": "x"}},
        {"body": {"image": image, "prompt": "a cat", "heatmap": "none"}},
    ]
    bodies, ctx = run(handler, model_dir, rows)
    codes = [status(ctx, i) for i in range(len(rows))]
    assert codes == [200, 400, 400, 400, 413, 400, 400, 400, 200]
    for i, body in enumerate(bodies):
        assert ("error" in body) == (codes[i] != 200)
        assert ctx.get_response_content_type(i) == "application/json"
    assert "heatmap_png" not in bodies[8]["results"][0]


def test_metrics_per_request(handler, model_dir):
    image = base64.b64encode(png()).decode()
    rows = [{"body": {"image": image, "prompt": "a dog"}}, {"body": {"image": image, "prompt": "a cat"}}]
    _, ctx = run(handler, model_dir, rows)
    calls = ctx.metrics.calls
    passes = [c for c in calls if c[1] == "MaskedForwardPasses"]
    latency = [c for c in calls if c[1] == "ExplanationLatency"]
    assert [c[3] for c in passes] == [0, 1] and [c[3] for c in latency] == [0, 1]
    assert passes[0][2] > 0 and passes[1][2] == 0  # one image: its passes are counted once
    assert all(c[2] > 0 for c in latency)


def test_out_of_memory_is_507_and_others_survive(handler, model_dir, monkeypatch):
    import torch

    real = handler.explainer.explain_requests

    def flaky(requests):
        if any("oom" in r.prompts for r in requests):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(requests)

    monkeypatch.setattr(handler.explainer, "explain_requests", flaky)
    image = base64.b64encode(png()).decode()
    bodies, ctx = run(handler, model_dir, [{"body": {"image": image, "prompt": "a dog"}},
                                           {"body": {"image": image, "prompt": "oom"}}])
    assert [status(ctx, 0), status(ctx, 1)] == [200, 507]
    assert "error" in bodies[1]


# ---------------------------------------------------------------------------------------------- encoding helpers
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prompt": "a dog"}, ["a dog"]),
        ({"prompts": ["a", "b"]}, ["a", "b"]),
        ({"prompts": bytearray(b'["a", "b"]')}, ["a", "b"]),
        ({"prompts": "a\nb"}, ["a", "b"]),
        ({"prompt": ["a", "b"]}, ["a", "b"]),
        ({"prompt": "x", "prompt2": "y", "prompt1": "z"}, ["x", "z", "y"]),
        ({"prompt": "[not json"}, ["[not json"]),
        ({}, []),
    ],
)
def test_collect_prompts(fields, expected):
    assert collect_prompts(fields) == expected


def test_parse_request_errors():
    with pytest.raises(RequestError, match="no 'image'"):
        parse_request({"prompt": "a"})
    with pytest.raises(RequestError, match="over the limit"):
        parse_request({"image": bytearray(b"x"), "prompts": ["a"] * 3}, max_prompts=2)
    with pytest.raises(RequestError, match="UTF-8"):
        parse_request({"image": bytearray(b"x"), "prompt": bytearray(b"\xff\xfe")})
    req = parse_request({"body": {"image": "data:image/png;base64," + base64.b64encode(b"abc").decode(),
                                  "prompt": "a", "topk": "7"}})
    assert req.image == b"abc" and req.topk == 7


def test_heatmap_png_roundtrip():
    hm = np.linspace(0, 1, 6 * 4, dtype=np.float32).reshape(4, 6)
    img = Image.open(io.BytesIO(heatmap_png(hm)))
    assert img.mode == "L" and img.size == (6, 4)
    arr = np.asarray(img)
    assert arr[0, 0] == 0 and arr[-1, -1] == 255


def test_repeated_form_fields_are_merged():
    from ts.service import Service

    assert merge_repeated_fields()
    assert merge_repeated_fields()  # idempotent
    batch = [{"requestId": b"1", "headers": [], "parameters": [
        {"name": "image", "contentType": "image/png", "value": bytearray(b"img")},
        {"name": "prompt", "contentType": "text/plain", "value": "a"},
        {"name": "prompt", "contentType": "text/plain", "value": "b"},
    ]}]
    _, inputs, _ = Service.retrieve_data_for_inference(batch)
    assert inputs[0]["prompt"] == ["a", "b"] and inputs[0]["image"] == bytearray(b"img")


# ---------------------------------------------------------------------------------------------- settings
def test_settings_from_yaml():
    s = ServeSettings.from_yaml_config({"batchSize": 4, "handler": {"arch": "RN50x16", "topk": "300", "batch_size": 8}})
    assert (s.arch, s.topk, s.batch_size, s.method) == ("RN50x16", 300, 8, "gscorecam")
    assert ServeSettings.from_yaml_config({}) == ServeSettings()
    with pytest.raises(ValueError, match="unknown handler settings"):
        ServeSettings.from_yaml_config({"handler": {"top_k": 3}})
    with pytest.raises(ValueError):
        ServeSettings(method="nope")
    arch, ckpt = ServeSettings(arch="m.json").resolve("/models/x", "w.safetensors")
    assert arch == "/models/x/m.json" and ckpt == "/models/x/w.safetensors"
    assert ServeSettings(arch="RN50").resolve("/d", None) == ("RN50", None)
    assert ServeSettings.from_yaml_config({"handler": {"cam_layer": "layer3"}}).cam_layer == "layer3"
    assert ServeSettings.from_yaml_config({"handler": {"cam_layer": None}}).cam_layer == ""
    with pytest.raises(ValueError, match="cam_layer"):
        ServeSettings(cam_layer="fc")


def test_cam_layer_setting_reaches_the_explainer(model_dir):
    from handler.torchserve_handler import GScoreCAMHandler

    h = GScoreCAMHandler()
    h.initialize(make_context(model_dir, {"cam_layer": "layer3", "warmup": False}))
    assert h.explainer.cam_layer is h.clip.clip.visual.layer3[-1]
    assert h.explainer.config.cam_layer == "layer3"


def test_settings_fields_are_commented():
    source = inspect.getsource(ServeSettings)
    for name in ServeSettings.__dataclass_fields__:
        line_no = next(i for i, line in enumerate(source.splitlines()) if line.strip().startswith(f"{name}:"))
        assert source.splitlines()[line_no - 1].strip().startswith("#"), name


# ---------------------------------------------------------------------------------------------- archive layout
def test_build_mar_layout(tmp_path, model_dir):
    mar = build_mar(tmp_path, "--arch", str(model_dir / "tiny_clip.json"), "--checkpoint",
                    str(model_dir / "tiny_clip.safetensors"), "--batch-size", "8", "--workers", "2",
                    "--topk", "5", "--method", "scorecam", "--cam-layer", "layer3", "--archive-format", "zip-store",
                    name="tiny")
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        cfg = yaml.safe_load(zf.read("model-config.yaml"))
    assert {"torchserve_handler.py", "handler/__init__.py", "handler/torchserve_handler.py", "tiny_clip.json",
            "tiny_clip.safetensors", "model-config.yaml"} <= names
    assert not any("__pycache__" in n for n in names)
    assert manifest["model"]["handler"] == "torchserve_handler.py"
    assert manifest["model"]["serializedFile"] == "tiny_clip.safetensors"
    assert cfg["batchSize"] == 8 and cfg["minWorkers"] == cfg["maxWorkers"] == 2
    settings = ServeSettings.from_yaml_config(cfg)
    assert (settings.arch, settings.topk, settings.method, settings.cam_layer) == ("tiny_clip.json", 5, "scorecam", "layer3")


def test_build_mar_pretrained_packs_weights_and_quickgelu_arch(tmp_path, monkeypatch):
    """--pretrained downloads through open_clip at build time (stubbed here: no network) and packs the weights;
    OpenAI weights are rebuilt with the -quickgelu config."""
    import importlib.util

    import open_clip

    from tests.server_fixture import ROOT, TINY_CLIP_CONFIG

    spec = importlib.util.spec_from_file_location("build_mar_script", ROOT / "scripts" / "build_mar.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []

    def fake_create_model(arch, pretrained=None, device="cpu"):
        calls.append((arch, pretrained))
        return open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"quick_gelu": True})
    monkeypatch.setattr(open_clip, "list_models", lambda: ["RN50x16", "RN50x16-quickgelu"])
    assert script.main(["--arch", "RN50x16", "--pretrained", "openai", "--export-path", str(tmp_path),
                        "--archive-format", "zip-store"]) == 0
    assert calls == [("RN50x16", "openai")]
    with zipfile.ZipFile(tmp_path / "gscorecam.mar") as zf:
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        cfg = yaml.safe_load(zf.read("model-config.yaml"))
    assert manifest["model"]["serializedFile"] == "RN50x16-openai.safetensors"
    assert cfg["handler"]["arch"] == "RN50x16-quickgelu"


def test_explain_and_describe_headers_do_not_hijack_the_batch(handler, model_dir):
    image = base64.b64encode(png()).decode()
    rows = [{"body": {"image": image, "prompt": "a dog"}}, {"body": {"image": image, "prompt": "a cat"}}]
    ctx = make_context(model_dir, batch=2)
    ctx.request_processor = [RequestProcessor({"explain": "True", "describe": "True"}) for _ in rows]
    ctx.request_ids = {0: "a", 1: "b"}
    out = handler.handle(rows, ctx)
    assert [r["results"][0]["prompt"] for r in out] == ["a dog", "a cat"]


def test_arch_without_weights_is_refused(model_dir):
    from handler.torchserve_handler import GScoreCAMHandler

    ctx = make_context(model_dir)
    ctx.manifest = {"model": {"modelName": "gscorecam"}}  # no serialized file
    with pytest.raises(ValueError, match="without weights"):
        GScoreCAMHandler().initialize(ctx)
