#!/usr/bin/env python
"""Benchmark: ms per explanation for gscorecam/scorecam/gradcam, the forward-pass floor, pytorch-grad-cam's
ScoreCAM and GradCAM on the same model and inputs, scaling with 1/4/16 prompts per image, peak memory.

    .venv/bin/python scripts/bench.py                                   # the demo model
    .venv/bin/python scripts/bench.py --arch RN50 --pretrained none     # a real architecture, random weights
    .venv/bin/python scripts/bench.py --arch RN50x16 --device cuda --amp bf16 --batch-size 256 --no-peer

Prints a markdown table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", help="open_clip model name or config JSON (default: the demo model)")
    parser.add_argument("--pretrained", default=None, help="open_clip tag, or 'none' for random weights")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--amp", choices=["fp16", "bf16"], help="autocast the masked passes (GPUs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--topk", type=int, help="gScoreCAM's k (default: the model's own, else 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="gscorecam,scorecam,gradcam")
    parser.add_argument("--no-peer", action="store_true", help="skip pytorch-grad-cam")
    parser.add_argument("--peer", default="ScoreCAM,GradCAM", help="pytorch-grad-cam methods to time")
    parser.add_argument("--prompts", default="1,4,16", help="prompt counts for the scaling rows")
    parser.add_argument("--image", type=Path, help="image to explain (default: the bundled sample scene)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sweep-k", default="", help="comma-separated k values for the time-vs-k rows and plot")
    parser.add_argument("--plot", type=Path, help="write a PNG of time vs k and vs prompts per image here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)

    import torch
    from PIL import Image

    from handler.benchmark import run_benchmark
    from handler.images import decode_image
    from handler.loading import REPO_ROOT, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    model = load_model(args.arch, pretrained, args.checkpoint, device=args.device, precision=args.precision)
    if args.image:
        image = decode_image(args.image.read_bytes())
    else:
        sample = REPO_ROOT / "scripts" / "assets" / "sample_scene.jpg"
        image = decode_image(sample.read_bytes()) if sample.is_file() else Image.new("RGB", (320, 240), (90, 120, 60))
    result = run_benchmark(
        model,
        image,
        topk=args.topk,
        batch_size=args.batch_size,
        repeats=args.repeats,
        methods=tuple(m for m in args.methods.split(",") if m),
        peer=() if args.no_peer else tuple(p for p in args.peer.split(",") if p),
        prompt_counts=tuple(int(n) for n in args.prompts.split(",") if n),
        amp=args.amp,
        progress=logging.getLogger("bench").info,
        k_sweep=tuple(int(k) for k in args.sweep_k.split(",") if k),
    )
    print(result.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from handler.benchmark import plot

        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
