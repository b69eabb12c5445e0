"""End-to-end tests against a real TorchServe (Java frontend + Python worker), no mocks.

One server for the whole module: a tiny random-weight CLIP archived by scripts/build_mar.py (batchSize 4), on
loopback ports of its own, with its state in a temp dir; it is stopped at the end even when a test fails.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.server_fixture import ROOT, TorchServeProcess, build_mar, make_tiny_clip

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

MODEL = "gscorecam"
MAX_PIXELS = 1_000_000
SAMPLE = ROOT / "scripts" / "assets" / "sample_scene.jpg"
DEMO = "demo"
DEMO_READY = (ROOT / "model_store" / "demo" / "demo_clip.safetensors").is_file()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ts_server")
    cfg, weights = make_tiny_clip(base / "model")
    store = base / "store"
    build_mar(
        store, "--arch", str(cfg), "--checkpoint", str(weights),
        "--batch-size", "4", "--max-batch-delay", "300", "--topk", "4", "--pass-batch-size", "16",
        "--max-pixels", str(MAX_PIXELS), "--torch-threads", "1", "--archive-format", "zip-store",
        name=MODEL,
    )
    models = f"{MODEL}={MODEL}.mar"
    if DEMO_READY:  # the default archive (scripts/build_mar.py without arguments): the embedded demo model
        build_mar(store, "--archive-format", "zip-store", name=DEMO)
        models += f",{DEMO}={DEMO}.mar"
    ts = TorchServeProcess(store, models=models, tmp_root=base)
    try:
        started = time.monotonic()
        ts.start()
        ts.wait_ready(MODEL)
        if DEMO_READY:
            ts.wait_ready(DEMO)
        print(f"\n[server] start to READY: {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield ts
    finally:
        ts.stop()


def png_bytes(size=(96, 64), colour=(200, 40, 40), fmt="PNG") -> bytes:
    img = Image.new("RGB", size, (30, 30, 30))
    img.paste(Image.new("RGB", (size[0] // 3, size[1] // 3), colour), (size[0] // 3, size[1] // 3))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def predict_json(ts, payload: dict, auth: bool = True) -> requests.Response:
    headers = ts.auth() if auth else {}
    return requests.post(f"{ts.inference_url}/predictions/{MODEL}", json=payload, headers=headers, timeout=120)


def check_ok_body(body: dict, size: tuple[int, int], prompts: list[str], heatmaps: bool = True) -> None:
    assert body["model"] == "tiny_clip"
    assert body["method"] == "gscorecam"
    assert body["topk"] == 4
    assert body["image_size"] == list(size)
    assert body["forward_passes"] >= 1
    assert body["elapsed_ms"] > 0
    assert [r["prompt"] for r in body["results"]] == prompts
    w, h = size
    for r in body["results"]:
        assert isinstance(r["score"], float)
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        if heatmaps:
            png = base64.b64decode(r["heatmap_png"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            hm = Image.open(io.BytesIO(png))
            assert hm.mode == "L" and hm.size == (w, h)
        else:
            assert "heatmap_png" not in r


def test_worker_imports_the_archived_handler_package(server):
    """The worker imports `handler` from the unpacked archive (its model dir), not from this checkout."""
    log = (server.dir / "logs" / "model_log.log").read_text()
    line = next(x for x in log.splitlines() if "handler package from" in x)
    origin = line.rsplit("handler package from ", 1)[1].strip()
    assert origin.startswith(str(server.dir)) and not origin.startswith(str(ROOT / "handler")), origin


def test_rest_json_two_prompts(server):
    image = png_bytes((96, 64))
    r = predict_json(server, {"image": base64.b64encode(image).decode(), "prompts": ["a red square", "a cat"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    check_ok_body(r.json(), (96, 64), ["a red square", "a cat"])


def test_rest_json_single_prompt_options(server):
    image = png_bytes((50, 70), fmt="JPEG")
    r = predict_json(
        server, {"image": base64.b64encode(image).decode(), "prompt": "a dog", "heatmap": "none", "method": "gradcam"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam" and body["topk"] == 0
    assert body["image_size"] == [50, 70] and "heatmap_png" not in body["results"][0]


def test_rest_multipart(server):
    image = png_bytes((80, 60))
    files = {"image": ("x.png", image, "image/png")}
    r = requests.post(
        f"{server.inference_url}/predictions/{MODEL}", headers=server.auth(), files=files,
        data={"prompt": "a dog"}, timeout=120,
    )
    assert r.status_code == 200, r.text
    check_ok_body(r.json(), (80, 60), ["a dog"])
    # repeated prompt fields (curl -F prompt=a -F prompt=b) all arrive
    r = requests.post(
        f"{server.inference_url}/predictions/{MODEL}", headers=server.auth(), files=files,
        data={"prompt": ["a dog", "a red square"]}, timeout=120,
    )
    assert r.status_code == 200, r.text
    check_ok_body(r.json(), (80, 60), ["a dog", "a red square"])


def test_curl_multipart(server):
    """The README's curl form, verbatim."""
    token = server.key()
    out = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {token}",
         "-F", f"image=@{SAMPLE}", "-F", "prompt=a green circle", "-F", "prompt=a purple cross",
         f"{server.inference_url}/predictions/{MODEL}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    text, code = out.rsplit("\n", 1)
    assert code == "200", text
    body = json.loads(text)
    check_ok_body(body, Image.open(SAMPLE).size, ["a green circle", "a purple cross"])


def _grpc_predict(server, inputs: dict, token: str | None):
    import grpc

    from clients.grpc_stubs import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return stub.Predictions(inference_pb2.PredictionsRequest(model_name=MODEL, input=inputs), metadata=metadata,
                                timeout=120)


def test_grpc(server):
    image = png_bytes((72, 48))
    reply = _grpc_predict(server, {"image": image, "prompts": json.dumps(["a dog", "a cat"]).encode()}, server.key())
    check_ok_body(json.loads(reply.prediction), (72, 48), ["a dog", "a cat"])
    reply = _grpc_predict(server, {"image": image, "prompt": b"a red square"}, server.key())
    check_ok_body(json.loads(reply.prediction), (72, 48), ["a red square"])


def test_grpc_error_is_in_the_body(server):
    """gRPC carries no per-request status in TorchServe 0.12: the reply is OK, clients must check "error"."""
    import grpc

    try:
        reply = _grpc_predict(server, {"image": b"not an image", "prompt": b"a dog"}, server.key())
    except grpc.RpcError as exc:  # a later TorchServe may map it to a status: accept that too
        assert exc.code() != grpc.StatusCode.OK
        return
    assert "error" in json.loads(reply.prediction)


def test_grpc_without_token_refused(server):
    import grpc

    with pytest.raises(grpc.RpcError):
        _grpc_predict(server, {"image": png_bytes(), "prompt": b"a dog"}, None)


def test_request_without_token_refused(server):
    r = predict_json(server, {"image": base64.b64encode(png_bytes()).decode(), "prompt": "a dog"}, auth=False)
    assert r.status_code in (400, 401, 403)
    assert "Token" in r.text
    r = requests.get(f"{server.management_url}/models", timeout=10)
    assert r.status_code in (400, 401, 403)


def test_corrupt_image_400(server):
    r = predict_json(server, {"image": base64.b64encode(b"\x89PNG\r\n\x1a\ngarbage").decode(), "prompt": "a dog"})
    assert r.status_code == 400
    assert "error" in r.json()
    r = predict_json(server, {"image": "%%% not base64 %%%", "prompt": "a dog"})
    assert r.status_code == 400 and "error" in r.json()


def test_no_prompt_400(server):
    image = base64.b64encode(png_bytes()).decode()
    for payload in ({"image": image}, {"image": image, "prompts": []}, {"image": image, "prompt": "  "}):
        r = predict_json(server, payload)
        assert r.status_code == 400, payload
        assert "prompt" in r.json()["error"]


def test_image_over_pixel_limit_413(server):
    big = png_bytes((1001, 1000))  # 1,001,000 pixels > MAX_PIXELS; a few KB as PNG
    r = predict_json(server, {"image": base64.b64encode(big).decode(), "prompt": "a dog"})
    assert r.status_code == 413, r.text
    assert "pixels" in r.json()["error"]


def test_concurrent_batch_with_two_corrupt(server):
    """16 concurrent requests, batchSize 4: the two corrupt ones get 400, the others 200 (same batches)."""
    good = [base64.b64encode(png_bytes((64 + i, 48), colour=(40 * (i % 6), 100, 200))).decode() for i in range(16)]
    bad = {3, 10}
    payloads = [
        {"image": base64.b64encode(b"corrupt-%d" % i).decode() if i in bad else good[i], "prompts": ["a dog", "a cat"]}
        for i in range(16)
    ]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda p: predict_json(server, p), payloads))
    for i, r in enumerate(responses):
        if i in bad:
            assert r.status_code == 400, (i, r.text)
            assert "error" in r.json()
        else:
            assert r.status_code == 200, (i, r.text)
            check_ok_body(r.json(), (64 + i, 48), ["a dog", "a cat"], heatmaps=True)
    # TorchServe did batch them: the handler logs each batch's statuses
    batches = [json.loads(line.split("statuses ", 1)[1].strip()) for line in
               (server.dir / "logs" / "model_log.log").read_text().splitlines() if "gScoreCAM batch of" in line]
    assert max(len(b) for b in batches) > 1, batches
    print(f"\n[batching] batches seen: {batches}", file=sys.stderr)


def _wait_workers(server, n: int, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = server.describe(MODEL)[0]["workers"]
        if len(workers) == n and all(w["status"] == "READY" for w in workers):
            return workers
        time.sleep(0.5)
    raise AssertionError(f"not {n} READY workers: {server.describe(MODEL)[0]['workers']}")


def test_scale_to_two_workers_and_back(server):
    mgmt = server.auth("management")
    r = requests.put(f"{server.management_url}/models/{MODEL}?min_worker=2&max_worker=2&synchronous=true",
                     headers=mgmt, timeout=180)
    assert r.status_code == 200, r.text
    workers = _wait_workers(server, 2)
    server.worker_pids.update(int(w["pid"]) for w in workers if w.get("pid"))
    image = base64.b64encode(png_bytes()).decode()
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(lambda _: predict_json(server, {"image": image, "prompt": "a dog"}).status_code, range(4)))
    assert codes == [200] * 4
    r = requests.put(f"{server.management_url}/models/{MODEL}?min_worker=1&max_worker=1&synchronous=true",
                     headers=mgmt, timeout=180)
    assert r.status_code == 200, r.text
    _wait_workers(server, 1)
    assert predict_json(server, {"image": image, "prompt": "a dog"}).status_code == 200


def test_model_registration_is_disabled(server):
    """The model-control API is off (the default): no archive can be registered from a URL."""
    r = requests.post(f"{server.management_url}/models?url=https://example.com/evil.mar",
                      headers=server.auth("management"), timeout=10)
    assert r.status_code in (400, 403, 405), r.text


def test_custom_metrics(server):
    image = base64.b64encode(png_bytes()).decode()
    assert predict_json(server, {"image": image, "prompt": "a metric"}).status_code == 200
    deadline = time.monotonic() + 30
    values: dict[str, float] = {}
    while time.monotonic() < deadline:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            for name in ("MaskedForwardPasses", "ExplanationLatency"):
                if line.startswith(name + "{") and f'ModelName="{MODEL}"' in line:
                    values[name] = float(line.rsplit(" ", 1)[1])
        if len(values) == 2:
            break
        time.sleep(1)
    assert values.get("MaskedForwardPasses", 0) > 0, values
    assert values.get("ExplanationLatency", 0) > 0, values


def test_client_script_rest_and_grpc(server, tmp_path):
    key_file = server.dir / "key_file.json"
    common = [sys.executable, str(ROOT / "scripts" / "client.py"), str(SAMPLE),
              "-p", "a green circle", "-p", "a purple cross", "--key-file", str(key_file)]
    rest = subprocess.run([*common, "--url", server.inference_url, "--out", str(tmp_path / "rest")],
                          capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    grpc_run = subprocess.run([*common, "--grpc", "--grpc-target", server.grpc_target, "--out", str(tmp_path / "grpc")],
                              capture_output=True, text=True, timeout=120)
    assert grpc_run.returncode == 0, grpc_run.stderr
    for sub in ("rest", "grpc"):
        body = json.loads((tmp_path / sub / "sample_scene.json").read_text())
        assert len(body["results"]) == 2
        overlays = sorted((tmp_path / sub).glob("sample_scene_*.png"))
        assert len(overlays) == 2
        assert Image.open(overlays[0]).size == Image.open(SAMPLE).size
    # errors: non-zero exit and a message (REST 400, gRPC error body)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    for extra in (["--url", server.inference_url], ["--grpc", "--grpc-target", server.grpc_target]):
        bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "client.py"), str(corrupt), "-p", "a dog",
                              "--key-file", str(key_file), "--out", str(tmp_path / "bad"), *extra],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "error" in bad.stderr.lower(), bad.stderr
    nokey = subprocess.run([sys.executable, str(ROOT / "scripts" / "client.py"), str(SAMPLE), "-p", "a dog",
                            "--token", "wrong", "--url", server.inference_url, "--out", str(tmp_path / "nokey")],
                           capture_output=True, text=True, timeout=120)
    assert nokey.returncode != 0 and "Token" in nokey.stderr


def test_heatmap_values_follow_the_core(server):
    """The PNG carries the core's heatmap quantized to 8 bits (max 255 somewhere: the core normalizes to [0, 1])."""
    r = predict_json(server, {"image": base64.b64encode(png_bytes((90, 60))).decode(), "prompt": "a red square"})
    hm = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["results"][0]["heatmap_png"]))))
    assert hm.dtype == np.uint8 and hm.shape == (60, 90)
    assert hm.max() >= 1



def test_token_rotation(server):
    """POST /token?type=inference with the API key rotates the inference key (docs/SERVING.md)."""
    old = server.key("inference")
    api_key = json.loads((server.dir / "key_file.json").read_text())["API"]["key"]
    r = requests.post(f"{server.management_url}/token?type=inference",
                      headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert r.status_code == 200, r.text
    new = server.key("inference")
    assert new != old
    image = base64.b64encode(png_bytes()).decode()
    r = requests.post(f"{server.inference_url}/predictions/{MODEL}", json={"image": image, "prompt": "a dog"},
                      headers={"Authorization": f"Bearer {old}"}, timeout=60)
    assert r.status_code in (400, 401, 403)
    assert predict_json(server, {"image": image, "prompt": "a dog"}).status_code == 200


@pytest.mark.skipif(not DEMO_READY, reason="the demo model (model_store/demo/) is not trained yet")
def test_default_demo_archive_explains_the_sample_scene(server):
    """The archive scripts/build_mar.py builds without arguments serves the embedded demo model with its own k."""
    scene = json.loads(SAMPLE.with_suffix(".json").read_text())
    prompts = ["a green circle", "a purple cross"]
    r = requests.post(f"{server.inference_url}/predictions/{DEMO}", headers=server.auth(), timeout=120,
                      json={"image": base64.b64encode(SAMPLE.read_bytes()).decode(), "prompts": prompts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "demo_clip" and body["method"] == "gscorecam"
    assert body["topk"] == json.loads((ROOT / "model_store" / "demo" / "demo_clip.json").read_text())["gscorecam"]["topk"]
    assert body["image_size"] == scene["size"]
    truth = {o["prompt"]: o["box"] for o in scene["objects"]}
    for res in body["results"]:  # the object's centre lies in the box the demo model points at
        x0, y0, x1, y1 = truth[res["prompt"]]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        bx0, by0, bx1, by1 = res["box"]
        assert bx0 <= cx < bx1 and by0 <= cy < by1, (res["prompt"], res["box"], truth[res["prompt"]])
