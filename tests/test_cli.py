"""The command line writes an overlay PNG and a JSON per prompt."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "handler", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_writes_png_and_json(tmp_path, config_dir, photo):
    image = tmp_path / "photo.jpg"
    photo.save(image)
    out = tmp_path / "out"
    done = run_cli("explain", image, "--prompt", "a red disc", "--prompt", "a blue disc", "--arch",
                   config_dir / "tiny_rn.json", "--topk", "12", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    for stem in ("00_a_red_disc", "01_a_blue_disc"):
        overlay = Image.open(out / f"{stem}.png")
        assert overlay.size == photo.size and overlay.mode == "RGB"
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["method"] == "gscorecam" and record["topk"] == 12
        # two prompts x k=12, shared; constant (all-zero) channels of the random model share one pass
        assert record["image_size"] == [140, 90] and 1 <= record["forward_passes"] <= 24
        x0, y0, x1, y1 = record["box"]
        assert 0 <= x0 < x1 <= 140 and 0 <= y0 < y1 <= 90
        assert isinstance(record["score"], float) and record["elapsed_ms"] > 0


def test_cli_reports_bad_input_clearly(tmp_path, config_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    done = run_cli("explain", bad, "--prompt", "x", "--arch", config_dir / "tiny_rn.json", "--out", tmp_path)
    assert done.returncode == 2 and "could not be decoded" in done.stderr
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    done = run_cli("explain", good, "--prompt", "x", "--arch", "NoSuchNet", "--out", tmp_path)
    assert done.returncode == 2 and "unknown arch 'NoSuchNet'" in done.stderr
