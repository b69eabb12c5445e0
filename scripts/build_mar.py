#!/usr/bin/env python
"""Build a TorchServe model archive (EXPORT_PATH/NAME.mar) of CLIP + the gScoreCAM handler.

  scripts/build_mar.py                                    # the embedded demo model -> model_store/gscorecam.mar
  scripts/build_mar.py --arch RN50x16 --pretrained openai # downloads through open_clip (needs network), packs weights
  scripts/build_mar.py --arch RN50x4-quickgelu --checkpoint RN50x4.pt  # offline; OpenAI weights need -quickgelu
  scripts/build_mar.py --arch my_clip.json --checkpoint my.safetensors  # a model-config JSON + its weights

The archive holds: the handler file (``--handler``), the ``handler`` package and the arch JSON (``--extra-files``
points at a staging folder whose CONTENTS land in the archive root), the weights as the serialized file, and the
model-config.yaml this script writes (TorchServe batching/workers + the handler's ``handler:`` settings). The
server never needs the network: ``--pretrained`` weights are downloaded here and packed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handler.cams import RESNET_CAM_LAYERS  # noqa: E402
from handler.serve_settings import METHODS, ServeSettings  # noqa: E402

DEMO_DIR = ROOT / "model_store" / "demo"
DEMO_ARCH = DEMO_DIR / "demo_clip.json"
DEMO_WEIGHTS = DEMO_DIR / "demo_clip.safetensors"
HANDLER_FILE = "torchserve_handler.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Build the gScoreCAM TorchServe archive (.mar).")
    ap.add_argument("--arch", help="open_clip model name (RN50x16, RN50x4, ViT-B-32...) or a model-config JSON file; "
                    "default: the embedded demo model")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pretrained", help="open_clip pretrained tag (e.g. openai); downloaded now and packed")
    src.add_argument("--checkpoint", type=Path, help="local state dict (.safetensors/.pt/.bin) to pack")
    ap.add_argument("--name", default="gscorecam", help="model name (the archive is NAME.mar; default gscorecam)")
    ap.add_argument("--export-path", type=Path, default=ROOT / "model_store", help="output folder (default model_store/)")
    ap.add_argument("--version", default="1.0", help="model version in the manifest")
    ap.add_argument("--batch-size", type=int, default=4, help="TorchServe batchSize: requests per handler call (default 4)")
    ap.add_argument("--max-batch-delay", type=int, default=50, help="TorchServe maxBatchDelay in ms (default 50)")
    ap.add_argument("--workers", type=int, default=None,
                    help="minWorkers=maxWorkers; default: config.properties' default_workers_per_model")
    ap.add_argument("--response-timeout", type=int, default=300, help="seconds before TorchServe kills a busy worker")
    ap.add_argument("--method", choices=METHODS, default="gscorecam", help="default CAM method")
    ap.add_argument("--topk", type=int, default=None, help="default k (default: the model's own, else the core's)")
    ap.add_argument("--cam-layer", choices=RESNET_CAM_LAYERS, default=None,
                    help="ResNets: the stage whose last block is the CAM layer (default: layer4, the paper's)")
    ap.add_argument("--pass-batch-size", type=int, default=32, help="masked images per forward pass (default 32)")
    ap.add_argument("--max-pixels", type=int, default=ServeSettings().max_pixels, help="413 above this many pixels")
    ap.add_argument("--max-prompts", type=int, default=ServeSettings().max_prompts, help="400 above this many prompts")
    ap.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="precision on GPU workers")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch threads per worker (0 = torch default)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up explanation when a worker starts")
    ap.add_argument("--archive-format", choices=("default", "zip-store", "no-archive", "tgz"), default="default",
                    help="torch-model-archiver format; zip-store skips compression (faster for big weights)")
    args = ap.parse_args(argv)
    if args.arch is None:
        if args.pretrained or args.checkpoint:
            ap.error("--pretrained/--checkpoint need --arch")
    elif not (args.pretrained or args.checkpoint):
        ap.error("--arch needs --pretrained TAG or --checkpoint FILE")
    return args


def _write_yaml(path: Path, args: argparse.Namespace, handler_settings: dict) -> None:
    import yaml

    doc: dict = {}
    if args.workers is not None:
        doc["minWorkers"] = args.workers
        doc["maxWorkers"] = args.workers
    doc["batchSize"] = args.batch_size
    doc["maxBatchDelay"] = args.max_batch_delay
    doc["responseTimeout"] = args.response_timeout
    doc["handler"] = handler_settings
    header = (
        "# Written by scripts/build_mar.py and packed into the archive.\n"
        "# Top level: TorchServe's per-model settings; handler: the gScoreCAM handler's settings\n"
        "# (handler/serve_settings.py documents every field).\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))


def _download_pretrained(arch: str, pretrained: str, dest: Path) -> tuple[Path, str]:
    """open_clip model with pretrained weights -> (its state dict as safetensors, the arch name to rebuild it).

    The weights are packed, so serving is offline. OpenAI weights expect QuickGELU, which open_clip switches on
    for the pretrained tag; rebuilding from a checkpoint needs the ``<arch>-quickgelu`` config to match.
    """
    import open_clip
    from safetensors.torch import save_file

    print(f"[build_mar] downloading {arch}/{pretrained} through open_clip", file=sys.stderr)
    model = open_clip.create_model(arch, pretrained=pretrained, device="cpu")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    out = dest / f"{arch.replace('/', '_')}-{pretrained}.safetensors"
    save_file(state, str(out))
    packed_arch = arch
    quick_gelu = (open_clip.get_pretrained_cfg(arch, pretrained) or {}).get("quick_gelu", False)
    if quick_gelu and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
        packed_arch = f"{arch}-quickgelu"
    return out, packed_arch


def _stage_handler_package(stage: Path) -> None:
    shutil.copytree(
        ROOT / "handler",
        stage / "handler",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_grpc", "*.mar"),
    )


def build(args: argparse.Namespace) -> Path:
    export = args.export_path.resolve()
    export.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build_mar_") as tmp:
        tmp = Path(tmp)
        stage = tmp / "extra"  # its CONTENTS become the archive root
        stage.mkdir()
        _stage_handler_package(stage)
        settings: dict = {}
        if args.arch is None:
            if not (DEMO_ARCH.is_file() and DEMO_WEIGHTS.is_file()):
                raise SystemExit(f"demo model not found: {DEMO_ARCH} / {DEMO_WEIGHTS}")
            shutil.copy2(DEMO_ARCH, stage / DEMO_ARCH.name)
            settings["arch"] = DEMO_ARCH.name
            weights = DEMO_WEIGHTS
        else:
            arch_path = Path(args.arch)
            if arch_path.suffix == ".json":
                if not arch_path.is_file():
                    raise SystemExit(f"--arch {args.arch}: file not found")
                shutil.copy2(arch_path, stage / arch_path.name)
                settings["arch"] = arch_path.name
            else:
                settings["arch"] = args.arch
            if args.checkpoint is not None:
                if not args.checkpoint.is_file():
                    raise SystemExit(f"--checkpoint {args.checkpoint}: file not found")
                weights = args.checkpoint.resolve()
            else:
                weights, settings["arch"] = _download_pretrained(args.arch, args.pretrained, tmp)
        settings.update(
            method=args.method,
            topk=args.topk,
            cam_layer=args.cam_layer or "",
            batch_size=args.pass_batch_size,
            max_pixels=args.max_pixels,
            max_prompts=args.max_prompts,
            precision=args.precision,
            torch_threads=args.torch_threads,
            warmup=not args.no_warmup,
        )
        ServeSettings.from_dict(settings)  # validate before packing
        config = tmp / "model-config.yaml"
        _write_yaml(config, args, settings)
        cmd = [
            sys.executable, "-c",
            "import sys; from model_archiver.model_packaging import generate_model_archive as g; sys.exit(g())",
            "--model-name", args.name,
            "--version", args.version,
            "--handler", str(stage / "handler" / HANDLER_FILE),
            "--serialized-file", str(weights),
            "--extra-files", str(stage),
            "--config-file", str(config),
            "--export-path", str(export),
            "--archive-format", args.archive_format,
            "--force",
        ]
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
    suffix = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}[args.archive_format]
    out = export / f"{args.name}{suffix}"
    print(f"[build_mar] {out} ({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
