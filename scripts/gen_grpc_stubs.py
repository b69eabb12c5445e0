#!/usr/bin/env python
"""Generate the gRPC client stubs from TorchServe's own protos.

The protos ship inside TorchServe's frontend jar (``ts/frontend/model-server.jar``):
``proto/inference.proto``, ``proto/management.proto`` and ``google/rpc/status.proto``.
They are extracted to a temp dir, compiled with grpcio-tools into ``clients/grpc_stubs/`` and
the generated absolute imports are rewritten to package-relative ones, so that
``from clients.grpc_stubs import inference_pb2, inference_pb2_grpc`` works from the repo root
without touching ``sys.path`` (and without shadowing a ``google.rpc`` package installed elsewhere).

Usage: .venv/bin/python scripts/gen_grpc_stubs.py [--out clients/grpc_stubs] [--jar PATH]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ("inference.proto", "management.proto")
STATUS = "google/rpc/status.proto"


def find_jar() -> Path:
    import ts  # the torchserve package

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise SystemExit(f"TorchServe frontend jar not found at {jar}")
    return jar


def extract(jar: Path, dest: Path) -> None:
    with zipfile.ZipFile(jar) as zf:
        names = set(zf.namelist())
        for proto in PROTOS:
            src = f"proto/{proto}" if f"proto/{proto}" in names else proto
            (dest / proto).write_bytes(zf.read(src))
        (dest / "google" / "rpc").mkdir(parents=True, exist_ok=True)
        (dest / STATUS).write_bytes(zf.read(STATUS))


def compile_protos(src: Path, out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    for proto in (*PROTOS, STATUS):
        args = ["protoc", f"-I{src}", f"-I{well_known}", f"--python_out={out}", str(src / proto)]
        if proto in PROTOS:
            args.insert(-1, f"--grpc_python_out={out}")
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def fix_imports(out: Path) -> None:
    """Make the generated modules import each other relative to the package."""
    for path in out.glob("*.py"):
        text = path.read_text()
        # `import inference_pb2 as inference__pb2` -> `from . import inference_pb2 as inference__pb2`
        text = re.sub(r"^import (inference_pb2|management_pb2) as", r"from . import \1 as", text, flags=re.M)
        # `from google.rpc import status_pb2` -> the bundled copy (google.protobuf stays absolute)
        text = re.sub(r"^from google\.rpc import", "from .google.rpc import", text, flags=re.M)
        path.write_text(text)
    for pkg in (out, out / "google", out / "google" / "rpc"):
        (pkg / "__init__.py").touch()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "clients" / "grpc_stubs")
    ap.add_argument("--jar", type=Path, default=None)
    args = ap.parse_args(argv)
    jar = args.jar or find_jar()
    out: Path = args.out
    tmp_out = Path(tempfile.mkdtemp(prefix="grpc_stubs_"))
    try:
        with tempfile.TemporaryDirectory(prefix="ts_protos_") as src:
            extract(jar, Path(src))
            compile_protos(Path(src), tmp_out)
        fix_imports(tmp_out)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp_out), str(out))
    finally:
        shutil.rmtree(tmp_out, ignore_errors=True)
    print(f"[grpc] stubs generated from {jar.name} into {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
