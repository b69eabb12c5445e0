#!/usr/bin/env python
"""The BoxAcc that Otsu boxes can reach on the demo localization scenes with IDEAL heatmaps, per CAM grid.

For every (scene, named object) of scripts/demo_quality.py's localization set (seed 1002), the CAM is the fraction
of each grid cell covered by the object (handler/evaluation/ceiling.py), optionally sharpened (coverage**gamma) and
with a halo into the 8 neighbouring cells (leak); it goes through the explainer's own upsampling and Otsu box.
7x7 is the demo model's CAM layer at 224 px (and CLIP RN50's); 14x14 is what a stride-16 layer or 448-px input gives.

    python scripts/box_ceiling.py                                  # table on the 200 scenes (~1 min)
    python scripts/box_ceiling.py --json model_store/demo/box_ceiling.json --plot docs/img/box_ceiling.png \
        --measured model_store/demo/quality.json --profile --cam-layers layer4,layer3 \
        --overlays docs/img/demo_cam_layers.png                          # + the trained model (~2 min)

``--cam-layers layer4,layer3`` measures the trained demo model itself with each CAM layer (layer3: 14x14) on the
same scenes: BoxAcc, pointing and boxes on another object for gScoreCAM and GradCAM.

``--profile`` explains the same scenes with the embedded demo model and prints the mean CAM value on the object's
well-covered cells, its partly covered cells, the uncovered cells next to it and the rest: the "halo" that the
leak models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_quality import (  # noqa: E402
    contact_sheet,
    explain_set,
    figure_items,
    localization_set,
    overlay_panel,
    save_png,
    score_maps,
)

from handler.evaluation.ceiling import ceiling, cell_coverage, cell_profile, ideal_cam  # noqa: E402


def object_mask(scene, target) -> np.ndarray:
    """``(H, W)`` bool mask of one object of a generated scene."""
    return scene.mask == scene.objects.index(target) + 1


def layer_grid(model, layer: str) -> int:
    """Cells per side of a ResNet stage's output: strides 4, 8, 16, 32 for layer1..layer4."""
    return model.image_size // (32 >> (4 - int(layer[-1])))


def profiles(model, items, methods: tuple[str, ...] = ("gscorecam", "gradcam")) -> dict[str, dict[str, float]]:
    """Mean cell profile (handler.evaluation.ceiling.cell_profile) of the model's CAMs on the localization items
    ``(scene, named object, other object)``, and of ideal maps."""
    from handler import Explainer

    coverages = [cell_coverage(object_mask(scene, target), 7) for scene, target, _ in items]
    out = {}
    for name, gamma in (("ideal coverage^1", 1.0), ("ideal coverage^2", 2.0)):
        rows = [cell_profile(ideal_cam(cov, gamma), cov) for cov in coverages]
        out[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    for method in methods:
        explainer = Explainer(model, method=method)
        rows = []
        for (scene, target, _), cov in zip(items, coverages, strict=True):
            cam = explainer.explain(scene.image, target.label)[0].cam
            rows.append(cell_profile(torch.from_numpy(cam), cov))
        out[f"trained demo: {method}"] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    return out


def plot(rows: list[dict], leaks: list[float], path: str, measured: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for grid, colour in zip(sorted({r["grid"] for r in rows}), ("tab:blue", "tab:green", "tab:purple"), strict=False):
        for gamma, style in ((1.0, "-"), (2.0, "--")):
            pts = [r for r in rows if r["grid"] == grid and r["gamma"] == gamma]
            if pts:
                ax.plot([r["leak"] for r in pts], [100 * r["boxacc"] for r in pts], style, marker="o", color=colour,
                        label=f"ideal {grid}x{grid}, coverage^{gamma:g}")
    for name, value in (measured or {}).items():
        ax.axhline(100 * value, color="grey", lw=0.8, ls=":")
        ax.text(max(leaks), 100 * value + 1, name, ha="right", va="bottom", fontsize=8, color="grey")
    ax.axhline(50, color="red", lw=0.8)
    ax.text((min(leaks) + max(leaks)) / 2, 51, "issue 3's target: 50%", fontsize=8, color="red", va="bottom", ha="center")
    ax.set_xlabel("halo: leak into each of the 8 neighbouring cells")
    ax.set_ylabel("Otsu-box BoxAcc (IoU >= 0.5), %")
    ax.set_ylim(0, 100)
    ax.set_title("What Otsu boxes can reach with ideal heatmaps (demo scenes)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def measured_by_layer(model, items, layers: list[str],
                      methods: tuple[str, ...] = ("gscorecam", "gradcam")) -> list[dict]:
    """The model's localization numbers (scripts/demo_quality.py's definitions) per CAM layer."""
    rows = []
    for layer in layers:
        for method in methods:
            heatmaps, boxes = explain_set(model, items, method, cam_layer=layer)
            rows.append({"cam_layer": layer, "grid": layer_grid(model, layer), "method": method,
                         **score_maps(items, heatmaps, boxes)})
    return rows


def layer_overlays(model, layers: list[str], path: str) -> None:
    """gScoreCAM overlays of the model on the figure scenes, one row per CAM layer (ground truth thin white)."""
    from PIL import ImageDraw

    from handler import Explainer, ExplainerConfig

    items = figure_items()
    label_w, rows = 70, []
    for layer in layers:
        explainer = Explainer.from_config(model, ExplainerConfig(cam_layer=layer))
        panels = [overlay_panel(sc, o, explainer.explain(sc.image, [o.label])[0], size=150) for sc, o in items]
        row = contact_sheet(panels, cols=len(panels), cell=154)
        labelled = row.crop((-label_w, 0, row.width, row.height))
        labelled.paste((255, 255, 255), (0, 0, label_w, row.height))
        grid = layer_grid(model, layer)
        ImageDraw.Draw(labelled).text((6, row.height // 2 - 12), f"{layer}\n{grid}x{grid}", fill=(0, 0, 0))
        rows.append(labelled)
    sheet = rows[0].crop((0, 0, rows[0].width, sum(r.height for r in rows)))
    for i, row in enumerate(rows):
        sheet.paste(row, (0, sum(r.height for r in rows[:i])))
    save_png(sheet, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="localization scenes (seed 1002, as scripts/demo_quality.py)")
    p.add_argument("--grids", default="7,14")
    p.add_argument("--gammas", default="1,2")
    p.add_argument("--leaks", default="0,0.1,0.2,0.3,0.5")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--plot", default=None, help="write a PNG of BoxAcc vs leak here")
    p.add_argument("--measured", default=None,
                   help="a scripts/demo_quality.py JSON: draw the trained model's gScoreCAM/GradCAM BoxAcc on the plot")
    p.add_argument("--cam-layers", default="",
                   help="comma-separated ResNet stages (e.g. layer4,layer3): measure the demo model with each CAM layer")
    p.add_argument("--overlays", default=None,
                   help="with --cam-layers: write a PNG of gScoreCAM overlays per CAM layer (a row each) here")
    p.add_argument("--profile", action="store_true",
                   help="also print the demo model's mean CAM value per kind of cell (7x7 grid) on these scenes")
    a = p.parse_args(argv)
    items = localization_set(a.n)
    data = [(object_mask(scene, target), target.box) for scene, target, _ in items]
    leaks = [float(v) for v in a.leaks.split(",")]
    rows = [ceiling(data, int(grid), float(gamma), leak)
            for grid in a.grids.split(",") for gamma in a.gammas.split(",") for leak in leaks]
    print(f"Ideal heatmaps -> Otsu boxes, {len(data)} demo localization scenes\n")
    print("| CAM grid | map | leak | BoxAcc | mean IoU |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['grid']}x{r['grid']} | coverage^{r['gamma']:g} | {r['leak']:g} | {100 * r['boxacc']:.1f}% "
              f"| {r['mean_iou']:.3f} |")
    result = {"ceiling": rows}
    model = None
    if a.profile or a.cam_layers:
        from handler import load_model

        model = load_model()  # the embedded demo model
    if a.profile:
        result["profile"] = profiles(model, items)
        print("\nMean 7x7 CAM value per kind of cell (core: coverage >= 0.3; partial: covered, < 0.3; adjacent: "
              "uncovered next to the object; far: the rest)\n")
        print("| maps | core | partial | adjacent | far |\n|---|---|---|---|---|")
        for name, prof in result["profile"].items():
            print(f"| {name} | {prof['core']:.2f} | {prof['partial']:.2f} | {prof['adjacent']:.2f} | {prof['far']:.2f} |")
    if a.cam_layers:
        result["measured"] = measured_by_layer(model, items, a.cam_layers.split(","))
        print("\nThe trained demo model with each CAM layer (BoxAcc: IoU >= 0.5 with the named object's box)\n")
        print("| CAM layer | grid | method | BoxAcc | pointing | box on another object | mean IoU |\n"
              "|---|---|---|---|---|---|---|")
        for r in result["measured"]:
            print(f"| {r['cam_layer']} | {r['grid']}x{r['grid']} | {r['method']} | {100 * r['boxacc']:.1f}% | "
                  f"{100 * r['pointing']:.1f}% | {100 * r['wrong_box']:.1f}% | {r['mean_iou']:.3f} |")
        if a.overlays:
            layer_overlays(model, a.cam_layers.split(","), a.overlays)
            print(f"\nwrote {a.overlays}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    if a.plot:
        measured = None
        if a.measured:
            with open(a.measured) as f:
                q = json.load(f)["trained"]["localization"]
            measured = {f"trained demo: {m}": q[m]["boxacc"] for m in ("gscorecam", "gradcam")}
        plot(rows, leaks, a.plot, measured)
        print(f"\nwrote {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
