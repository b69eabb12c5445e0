#!/usr/bin/env python
"""Ask a running gScoreCAM TorchServe what CLIP is looking at, over REST (default) or gRPC (--grpc).

  scripts/client.py scripts/assets/sample_scene.jpg -p "a green circle" -p "a purple cross"
  scripts/client.py photo.jpg -p "a dog" --grpc                  # gRPC on 127.0.0.1:7070
  scripts/client.py photo.jpg -p "a dog" --multipart --topk 100  # multipart/form-data instead of JSON

Writes OUT/<image>.json (the server's response) and OUT/<image>_<n>_<prompt>.png (heatmap + box overlays).
The token comes from TorchServe's key_file.json (--key-file; default: $GSCORECAM_KEY_FILE, else the one
scripts/serve.sh's server wrote, else ./key_file.json) or --token. Exits non-zero with a message on any error
(over gRPC a per-request error arrives as an OK reply whose JSON has an "error" key: that is checked too).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class ClientError(Exception):
    pass


def default_state_dir() -> Path:
    """Where scripts/serve.sh runs TorchServe (key_file.json, logs, pid file)."""
    env = os.environ.get("GSCORECAM_STATE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / f"gscorecam-serve-{os.getuid()}"


def find_key_file(explicit: Path | None) -> Path | None:
    candidates = [explicit] if explicit else []
    if not explicit:
        if os.environ.get("GSCORECAM_KEY_FILE"):
            candidates.append(Path(os.environ["GSCORECAM_KEY_FILE"]))
        candidates += [default_state_dir() / "key_file.json", Path("key_file.json")]
    for c in candidates:
        if c is not None and c.is_file():
            return c
    if explicit:
        raise ClientError(f"key file {explicit} not found")
    return None


def read_token(key_file: Path | None, which: str = "inference") -> str | None:
    if key_file is None:
        return None
    try:
        return json.loads(key_file.read_text())[which]["key"]
    except (OSError, ValueError, KeyError) as exc:
        raise ClientError(f"cannot read the {which} key from {key_file}: {exc}") from exc


def build_payload(image: bytes, prompts: list[str], method: str | None, topk: int | None, heatmap: str) -> dict:
    payload: dict = {"image": base64.b64encode(image).decode("ascii"), "prompts": prompts, "heatmap": heatmap}
    if method:
        payload["method"] = method
    if topk is not None:
        payload["topk"] = topk
    return payload


def call_rest(args: argparse.Namespace, image: bytes, token: str | None) -> dict:
    import requests

    url = f"{args.url.rstrip('/')}/predictions/{args.model}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if args.multipart:
            data: dict = {"prompt": args.prompt, "heatmap": args.heatmap}
            if args.method:
                data["method"] = args.method
            if args.topk is not None:
                data["topk"] = str(args.topk)
            files = {"image": (args.image.name, image, "application/octet-stream")}
            r = requests.post(url, headers=headers, files=files, data=data, timeout=args.timeout)
        else:
            payload = build_payload(image, args.prompt, args.method, args.topk, args.heatmap)
            r = requests.post(url, headers=headers, json=payload, timeout=args.timeout)
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach {url}: {exc}") from exc
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text.strip()[:500]}
    if r.status_code != 200:
        message = body.get("error") or body.get("message") or body
        if "Token" in str(message):
            message = (f"{message} (send the 'inference' key of TorchServe's key_file.json with --key-file/--token; "
                       "an expired key is rotated with POST /token?type=inference on the management API)")
        raise ClientError(f"HTTP {r.status_code} from {url}: {message}")
    return body


def call_grpc(args: argparse.Namespace, image: bytes, token: str | None) -> dict:
    import grpc

    try:
        from clients.grpc_stubs import inference_pb2, inference_pb2_grpc
    except ImportError as exc:
        raise ClientError("gRPC stubs missing: run .venv/bin/python scripts/gen_grpc_stubs.py") from exc
    inputs = {"image": image, "prompts": json.dumps(args.prompt).encode("utf-8"), "heatmap": args.heatmap.encode()}
    if args.method:
        inputs["method"] = args.method.encode()
    if args.topk is not None:
        inputs["topk"] = str(args.topk).encode()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    options = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    with grpc.insecure_channel(args.grpc_target, options=options) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        try:
            reply = stub.Predictions(
                inference_pb2.PredictionsRequest(model_name=args.model, input=inputs),
                metadata=metadata,
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            raise ClientError(f"gRPC {exc.code().name} from {args.grpc_target}: {exc.details()}") from exc
    try:
        body = json.loads(reply.prediction)
    except ValueError as exc:
        raise ClientError(f"gRPC reply is not JSON: {reply.prediction[:200]!r}") from exc
    if "error" in body:  # TorchServe's gRPC carries no per-request status: the handler's error is in the body
        raise ClientError(f"server refused the request: {body['error']}")
    return body


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "prompt"


def write_outputs(out: Path, image_path: Path, image: bytes, body: dict) -> list[Path]:
    import numpy as np
    from PIL import Image

    from handler.overlay import render_overlay

    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{image_path.stem}.json"]
    written[0].write_text(json.dumps(body, indent=2))
    picture = Image.open(io.BytesIO(image)).convert("RGB")
    try:
        from PIL import ImageOps

        picture = ImageOps.exif_transpose(picture)
    except Exception:
        pass
    for n, res in enumerate(body.get("results", [])):
        if "heatmap_png" not in res:
            continue
        gray = Image.open(io.BytesIO(base64.b64decode(res["heatmap_png"]))).convert("L")
        heat = np.asarray(gray, dtype=np.float32) / 255.0
        label = f"{res['prompt']} ({res['score']:.1f})"
        overlay = render_overlay(picture, heat, tuple(res["box"]), label)
        path = out / f"{image_path.stem}_{n}_{slug(res['prompt'])}.png"
        overlay.save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path, help="JPEG/PNG/WebP/BMP/TIFF/GIF file")
    ap.add_argument("-p", "--prompt", action="append", required=True, help="a text prompt (repeat for several)")
    ap.add_argument("--grpc", action="store_true", help="use gRPC Predictions instead of REST")
    ap.add_argument("--multipart", action="store_true", help="REST multipart/form-data instead of a JSON body")
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="REST inference address")
    ap.add_argument("--grpc-target", default="127.0.0.1:7070", help="gRPC inference address")
    ap.add_argument("--model", default="gscorecam", help="model name")
    ap.add_argument("--method", help="gscorecam | scorecam | gradcam | gradcampp | layercam (default: the server's)")
    ap.add_argument("--topk", type=int, help="k (default: the server's)")
    ap.add_argument("--heatmap", choices=("png", "none"), default="png", help="ask for heatmap PNGs (default png)")
    ap.add_argument("--key-file", type=Path, help="TorchServe key_file.json")
    ap.add_argument("--token", help="inference token (overrides --key-file)")
    ap.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out/)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds")
    args = ap.parse_args(argv)
    try:
        image = args.image.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc}", file=sys.stderr)
        return 2
    try:
        token = args.token or read_token(find_key_file(args.key_file))
        body = (call_grpc if args.grpc else call_rest)(args, image, token)
        written = write_outputs(args.out, args.image, image, body)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for res in body.get("results", []):
        print(f"{res['prompt']!r}: score {res['score']:.2f} box {res['box']}")
    print(
        f"model {body.get('model')} method {body.get('method')} k={body.get('topk')} "
        f"{body.get('forward_passes')} masked passes, {body.get('elapsed_ms')} ms"
    )
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
