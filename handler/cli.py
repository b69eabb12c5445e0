"""Command line: ``python -m handler explain IMAGE --prompt "a dog" [--prompt ...] --out DIR``.

Writes per prompt an overlay PNG (heatmap over the image, box, prompt and score) and a JSON
(prompt, score, box, method, k, passes, ms).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from handler.cams import METHODS, RESNET_CAM_LAYERS
from handler.errors import InputError


def _slug(text: str, index: int) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_")[:40] or "prompt"
    return f"{index:02d}_{slug}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m handler", description="gScoreCAM: what is CLIP looking at?")
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="explain an image for one or more prompts")
    explain.add_argument("image", type=Path, help="image file (JPEG/PNG/WebP/BMP/TIFF/GIF)")
    explain.add_argument("--prompt", action="append", required=True, help="text prompt (repeat for several)")
    explain.add_argument("--arch", help="open_clip model name or config JSON (default: the embedded demo model)")
    explain.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (needs a network)")
    explain.add_argument("--checkpoint", type=Path, help="local state dict (.pt/.bin/.safetensors)")
    explain.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI weights in a --checkpoint)")
    explain.add_argument("--method", default="gscorecam", choices=sorted(METHODS))
    explain.add_argument("--topk", type=int, help="gScoreCAM's k (default: the model's own, else 300)")
    explain.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    explain.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    explain.add_argument("--batch-size", type=int, default=32, help="masked images per forward pass")
    explain.add_argument("--cam-layer", choices=RESNET_CAM_LAYERS,
                         help="ResNets: the stage whose last block is the CAM layer (default: layer4, the paper's)")
    explain.add_argument("--out", type=Path, required=True, help="output folder")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def explain_command(args: argparse.Namespace) -> int:
    from PIL import Image

    from handler.explainer import Explainer, ExplainerConfig
    from handler.images import decode_image
    from handler.loading import load_model
    from handler.overlay import render_overlay

    image = decode_image(args.image.read_bytes())
    model = load_model(args.arch, args.pretrained, args.checkpoint, device=args.device, precision=args.precision,
                       quick_gelu=True if args.quick_gelu else None)
    config = ExplainerConfig(method=args.method, topk=args.topk, batch_size=args.batch_size, progress=not args.quiet,
                             cam_layer=args.cam_layer)
    results = Explainer.from_config(model, config).explain(image, args.prompt)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, r in enumerate(results):
        stem = args.out / _slug(r.prompt, index)
        label = f"{r.prompt}  score {r.score:.2f}  ({r.method})"
        render_overlay(image, r.heatmap, r.box, label).save(stem.with_suffix(".png"))
        Image.fromarray((r.heatmap * 255).astype("uint8")).save(f"{stem}_heatmap.png")
        record = {
            "image": str(args.image),
            "model": model.name,
            "prompt": r.prompt,
            "score": r.score,
            "box": list(r.box),
            "image_size": [image.width, image.height],
            "method": r.method,
            "topk": r.topk,
            "forward_passes": r.forward_passes,
            "elapsed_ms": round(r.elapsed_ms, 1),
        }
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{r.prompt!r}: score {r.score:.3f} box {list(r.box)} -> {stem}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return explain_command(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
