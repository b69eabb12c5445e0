"""Command line of the zero-shot detection evaluation (``scripts/evaluate.py``).

Examples::

    # the demo scenes with the embedded demo model, all methods, 20 images
    python -m handler.scenes export --out /tmp/scenes --n 200 --seed 20261204
    scripts/evaluate.py --annotations /tmp/scenes/annotations.json --limit 20 --out eval_out/demo

    # COCO val2017 with RN50x16 on a GPU, gScoreCAM's k sweep (Table 1)
    scripts/evaluate.py --dataset coco --annotations instances_val2017.json --images val2017 \\
        --arch RN50x16 --checkpoint RN50x16.pt --device cuda --methods gscorecam --topk 1 10 100 300 3072

    # ImageNet-v2 in Choe et al.'s WSOL layout
    scripts/evaluate.py --dataset wsol --annotations metadata/ILSVRC/test --images imagenetv2 --arch RN50x16 ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

from handler.cams import RESNET_CAM_LAYERS
from handler.evaluation.datasets import DEFAULT_TEMPLATES, KINDS, load_dataset
from handler.evaluation.report import write_report
from handler.evaluation.runner import METHODS, Runner, method_specs


def _methods(text: str) -> list[str]:
    out = [m.strip().lower() for m in text.replace(" ", ",").split(",") if m.strip()]
    bad = [m for m in out if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    return out


def weights_digest(arch: str | None, pretrained: str | None, checkpoint: str | None) -> str | None:
    """sha256 (12 hex digits) of the weights file the run uses (the demo model's when nothing is given), so a
    resumed cache never mixes results of different weights and reports name the exact model."""
    path = None
    if checkpoint:
        path = Path(checkpoint)
    elif arch is None and pretrained is None:
        from handler.loading import DEMO_WEIGHTS

        path = DEMO_WEIGHTS
    if path is None or not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/evaluate.py", description="Zero-shot detection evaluation of CLIP "
                                "explanations: BoxAcc, MaxBoxAccV2, mean IoU, pointing accuracy, runtime.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    d = p.add_argument_group("dataset")
    d.add_argument("--dataset", choices=KINDS, default="coco", help="annotation layout (default coco)")
    d.add_argument("--annotations", required=True, help="COCO-style instances JSON, or the WSOL metadata directory")
    d.add_argument("--images", default=None, help="image directory (default: <annotations dir>/images if it exists)")
    d.add_argument("--template", default=None,
                   help="prompt template over {name}, {supercategory}, {class}, {part}; default "
                   + ", ".join(f"{k}: {v!r}" for k, v in DEFAULT_TEMPLATES.items()))
    d.add_argument("--categories", nargs="+", default=None, help="only these category names")
    d.add_argument("--limit", type=int, default=None, help="first N images (with annotations) only")
    m = p.add_argument_group("model")
    m.add_argument("--arch", default=None, help="open_clip name or model-config JSON (default: the demo model)")
    m.add_argument("--pretrained", default=None)
    m.add_argument("--checkpoint", default=None)
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    m.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    m.add_argument("--amp", default=None, choices=("fp16", "bf16"), help="autocast the CAM methods' masked passes")
    e = p.add_argument_group("methods")
    e.add_argument("--methods", type=_methods, default=list(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    e.add_argument("--topk", type=int, nargs="+", default=None,
                   help="gScoreCAM k values to sweep (default: the model's default k)")
    e.add_argument("--batch-size", type=int, default=32, help="masked images per forward pass (CAM methods)")
    e.add_argument("--cam-layer", choices=RESNET_CAM_LAYERS, default=None,
                   help="ResNets: the stage whose last block is the CAM layer (default: layer4, the paper's)")
    e.add_argument("--rise-masks", type=int, default=8000, help="RISE masks N (default 8000, like the paper)")
    e.add_argument("--rise-batch", type=int, default=100)
    e.add_argument("--rise-grid", type=int, default=None, help="RISE grid cells per side (default: input size / 32)")
    e.add_argument("--rise-p", type=float, default=0.5)
    e.add_argument("--seed", type=int, default=0, help="RISE's mask seed")
    e.add_argument("--pointing-tolerance", type=float, default=0.0, help="pixels (pointing game; default 0)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="output directory (default eval_out/<dataset>_<model>)")
    o.add_argument("--cache", default=None, help="per-image result cache (default <out>/cache)")
    o.add_argument("--resume", action="store_true", help="reuse cached per-image results")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--quiet", action="store_true", help="do not print the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from handler import Explainer, ExplainerConfig, load_model

    samples = load_dataset(args.dataset, args.annotations, args.images, args.template, limit=args.limit,
                           **({"categories": args.categories} if args.categories and args.dataset != "wsol" else {}))
    if not samples:
        sys.stderr.write("no annotated images found\n")
        return 2
    model = load_model(args.arch, args.pretrained, args.checkpoint, device=args.device, precision=args.precision)
    out = Path(args.out or f"eval_out/{args.dataset}_{model.name}")
    cache = Path(args.cache) if args.cache else out / "cache"
    specs = method_specs(args.methods, args.topk)
    rise_kwargs = {"n_masks": args.rise_masks, "grid": args.rise_grid, "p": args.rise_p,
                   "batch_size": args.rise_batch, "seed": args.seed}
    digest = weights_digest(args.arch, args.pretrained, args.checkpoint)
    run_info = {"model": model.name, "weights_sha256": digest, "arch": args.arch, "pretrained": args.pretrained, "checkpoint": args.checkpoint,
                "precision": args.precision, "dataset": args.dataset,
                "annotations": str(Path(args.annotations).resolve()), "template": args.template,
                "categories": args.categories}
    if args.cam_layer:  # only when set: caches made before the option existed stay resumable
        run_info["cam_layer"] = args.cam_layer
    config = ExplainerConfig(batch_size=args.batch_size, amp=args.amp, cam_layer=args.cam_layer)
    explainer = Explainer.from_config(model, config)
    runner = Runner(model, specs, cache, resume=args.resume, rise_kwargs=rise_kwargs,
                    pointing_tolerance=args.pointing_tolerance, progress=not args.no_progress,
                    run_info=run_info, explainer=explainer)
    t0 = time.perf_counter()
    results = runner.run(samples)
    meta = {"model": model.name, "weights_sha256": digest, "dataset": args.dataset, "images": len(samples),
            "explanations": sum(len(s.targets) for s in samples), "device": args.device,
            "rise_masks": args.rise_masks if "rise" in args.methods else None,
            "cam_layer": args.cam_layer,
            "wall_s": round(time.perf_counter() - t0, 1),
            "command": "scripts/evaluate.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))}
    meta = {k: v for k, v in meta.items() if v is not None}
    paths = write_report(results, out, meta)
    with open(out / "records.jsonl", "w") as f:
        for records in results.values():
            for r in records:
                f.write(json.dumps(r) + "\n")
    if runner.errors:
        sys.stderr.write(f"{len(runner.errors)} images skipped (bad input): {runner.errors[:3]}\n")
    if not args.quiet:
        sys.stdout.write(paths["markdown"].read_text() + "\n")
    sys.stdout.write("wrote " + ", ".join(str(p) for p in paths.values()) + f", {out / 'records.jsonl'}\n")
    return 0
