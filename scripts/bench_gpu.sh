#!/usr/bin/env bash
# GPU benchmark (prepared for a CUDA machine; must finish in under 5 minutes):
# RN50x16 (k=300) and RN50x4, random weights (speed does not depend on the weights), bf16 autocast,
# channels_last, ms per explanation and explanations/s at batch sizes 64..512.
#   scripts/bench_gpu.sh [--amp fp16|bf16|none] [--json out.json]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 290 "$PY" - "$@" <<'PYEOF'
import argparse, json, sys, time
import torch
sys.path.insert(0, ".")
from PIL import Image
from handler import Explainer, ExplainerConfig, load_model
from handler.benchmark import best_ms, floor_ms

p = argparse.ArgumentParser()
p.add_argument("--amp", default="bf16")
p.add_argument("--json")
a = p.parse_args()
amp = None if a.amp == "none" else a.amp
if not torch.cuda.is_available():
    sys.exit("bench_gpu.sh: no CUDA device")
torch.backends.cudnn.benchmark = True
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, amp={amp}")
image = Image.new("RGB", (640, 480), (90, 120, 60))
rows = []
for arch in ("RN50x16", "RN50x4"):
    t0 = time.perf_counter()
    model = load_model(arch, device="cuda")
    print(f"{arch}: built in {time.perf_counter() - t0:.1f} s, {model.image_size}px")
    for batch in (64, 128, 256, 512):
        explainer = Explainer.from_config(model, ExplainerConfig(topk=300, batch_size=batch, amp=amp))
        ms = best_ms(lambda: explainer.explain(image, "a dog"), 5, model.device)
        ms16 = best_ms(lambda: explainer.explain(image, [f"a photo of object {i}" for i in range(16)]), 2, model.device)
        floor = floor_ms(model, image, 300, batch, 5, amp)
        row = {"arch": arch, "batch": batch, "ms": ms, "per_s": 1000 / ms, "floor_ms": floor,
               "ms_16_prompts": ms16, "prompt_explanations_per_s_16": 16000 / ms16,
               "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
        rows.append(row)
        print(f"  {arch} k=300 batch {batch:4d}: {ms:7.1f} ms/explanation ({1000 / ms:6.1f}/s), floor {floor:7.1f} ms, "
              f"16 prompts {ms16:7.1f} ms ({16000 / ms16:6.1f} prompt-explanations/s), peak {row['peak_mb']:.0f} MB")
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
if a.json:
    json.dump(rows, open(a.json, "w"), indent=2)
PYEOF
