"""A real TorchServe (Java frontend + Python worker) for tests: own temp dir, own loopback ports, always stopped.

Usage (pytest)::

    from tests.server_fixture import TorchServeProcess
    with TorchServeProcess(model_store, models="gscorecam=gscorecam.mar") as ts:
        ts.wait_ready("gscorecam")
        requests.post(ts.inference_url + "/predictions/gscorecam", headers=ts.auth(), ...)

Everything TorchServe writes (logs, metrics logs, key_file.json, the ``.model_server.pid`` file, the worker
sockets, the config snapshots) goes under the instance's temp dir, never into the repo. ``stop()`` runs
``torchserve --stop`` with the same TMPDIR, then kills the recorded Java PID (and the workers it started) if the
frontend is still alive; only processes this instance started are touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """All descendants of pid (from /proc), deepest last."""
    out: list[int] = []
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        pass
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out.append(int(child))
            out.extend(_children(int(child)))
    except OSError:
        pass
    return out


class TorchServeProcess:
    def __init__(
        self,
        model_store: Path,
        models: str | None = None,
        tmp_root: Path | None = None,
        extra_config: dict[str, str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.models = models
        self.dir = Path(tempfile.mkdtemp(prefix="ts_", dir=tmp_root))
        self.keep_dir = keep_dir
        self.ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc", "grpc_mgmt")}
        self.worker_port = 20000 + (os.getpid() * 7 + free_port()) % 30000  # worker sockets: .ts.sock.<port>
        self.inference_url = f"http://127.0.0.1:{self.ports['inference']}"
        self.management_url = f"http://127.0.0.1:{self.ports['management']}"
        self.metrics_url = f"http://127.0.0.1:{self.ports['metrics']}"
        self.grpc_target = f"127.0.0.1:{self.ports['grpc']}"
        self.java_pid: int | None = None
        self.worker_pids: set[int] = set()
        self.config_path = self.dir / "config.properties"
        self._write_config(extra_config or {})

    # ------------------------------------------------------------------ config / env
    def _write_config(self, extra: dict[str, str]) -> None:
        cfg = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": "127.0.0.1",
            "grpc_inference_port": str(self.ports["grpc"]),
            "grpc_management_address": "127.0.0.1",
            "grpc_management_port": str(self.ports["grpc_mgmt"]),
            "initial_worker_port": str(self.worker_port),
            "model_store": str(self.model_store),
            "default_workers_per_model": "1",
            "default_response_timeout": "120",
            "max_request_size": "67108864",
            "max_response_size": "134217728",
            "metrics_mode": "prometheus",
            "model_metrics_auto_detect": "true",
            "disable_system_metrics": "true",
            "vmargs": "-Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        }
        cfg.update(extra)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in cfg.items()))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TMPDIR=str(self.dir),  # .model_server.pid lives in tempfile.gettempdir()
            TEMP=str(self.dir),  # -> -Djava.io.tmpdir: worker unix sockets
            LOG_LOCATION=str(self.dir / "logs"),
            METRICS_LOCATION=str(self.dir / "logs"),
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        )
        env.pop("TS_CONFIG_FILE", None)
        return env

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TorchServeProcess:
        cmd = [
            str(VENV_BIN / "torchserve"), "--start", "--ncs",
            "--ts-config", str(self.config_path),
            "--model-store", str(self.model_store),
        ]
        if self.models:
            cmd += ["--models", self.models]
        with open(self.dir / "torchserve_launcher.log", "wb") as log:
            subprocess.run(cmd, cwd=self.dir, env=self.env(), stdout=log, stderr=subprocess.STDOUT, check=True, timeout=60)
        pid_file = self.dir / ".model_server.pid"
        deadline = time.monotonic() + 10
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pid_file.is_file():
            raise RuntimeError(f"TorchServe did not start:\n{self.tail()}")
        self.java_pid = int(pid_file.read_text().strip())
        return self

    def key(self, which: str = "inference") -> str:
        """The token TorchServe wrote (inference / management)."""
        path = self.dir / "key_file.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                return json.loads(path.read_text())[which]["key"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        raise RuntimeError(f"no key_file.json in {self.dir}:\n{self.tail()}")

    def auth(self, which: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(which)}"}

    def describe(self, model: str) -> list[dict]:
        r = requests.get(f"{self.management_url}/models/{model}", headers=self.auth("management"), timeout=10)
        r.raise_for_status()
        return r.json()

    def wait_ready(self, model: str, workers: int = 1, timeout: float = 180) -> float:
        """Poll the management API until `workers` workers are READY (/ping answers before that). Returns seconds."""
        started = time.monotonic()
        last = None
        while time.monotonic() - started < timeout:
            if self.java_pid is not None and not _pid_alive(self.java_pid):
                raise RuntimeError(f"TorchServe exited:\n{self.tail()}")
            try:
                desc = self.describe(model)
                ws = desc[0].get("workers", [])
                last = [w.get("status") for w in ws]
                for w in ws:
                    if w.get("pid"):
                        self.worker_pids.add(int(w["pid"]))
                if sum(1 for w in ws if w.get("status") == "READY") >= workers:
                    return time.monotonic() - started
            except (requests.RequestException, ValueError, IndexError, RuntimeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{model}: {workers} READY worker(s) not reached in {timeout}s (last {last}):\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        parts = []
        for name in ("torchserve_launcher.log", "logs/ts_log.log", "logs/model_log.log"):
            p = self.dir / name
            if p.is_file():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.java_pid is None:
            return
        pids = set(_children(self.java_pid)) | {p for p in self.worker_pids if p in set(_children(self.java_pid))}
        try:
            subprocess.run(
                [str(VENV_BIN / "torchserve"), "--stop"], cwd=self.dir, env=self.env(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False,
            )
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 20
        while _pid_alive(self.java_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in [self.java_pid, *sorted(pids)]:
            if _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # workers left behind by a killed frontend (they are our grandchildren)
        deadline = time.monotonic() + 10
        while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.java_pid = None

    def cleanup(self) -> None:
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TorchServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()


# ---------------------------------------------------------------------- a tiny random-weight CLIP for fast tests
TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {},
    "gscorecam": {"topk": 8},
}


def make_tiny_clip(folder: Path, name: str = "tiny_clip", seed: int = 0) -> tuple[Path, Path]:
    """Write a tiny open_clip config JSON + random-weight safetensors; returns (json, weights)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG["model_cfg"])
    weights = folder / f"{name}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


def build_mar(export: Path, *args: str, name: str = "gscorecam") -> Path:
    """Run scripts/build_mar.py (a real torch-model-archiver run)."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_mar.py"), "--name", name, "--export-path", str(export), *args],
        check=True, cwd=ROOT,
    )
    return Path(export) / f"{name}.mar"
