#!/usr/bin/env python
"""Measure the embedded demo CLIP (model_store/demo/): the numbers of its model card.

On fresh generated scenes (seeds never used in training; training uses seed 0):

* retrieval: for --retrieval-n scenes (seed 1001) the best of the 30 prompts names an object present in the scene;
  top-1 accuracy on the one-object scenes of that set, and on --single-n dedicated one-object scenes (seed 1003);
* localization: --loc-n scenes with 2-5 objects (seed 1002), prompt = one present object (chosen by the seed):
  BoxAcc (IoU of ``r.box`` with the named object's box >= 0.5), pointing (heatmap maximum inside the named
  object's box), wrong-object rate (the box overlaps another object of the scene with IoU >= 0.5, or the heatmap
  maximum falls inside another object's box and not the named one) for gScoreCAM, GradCAM and ScoreCAM (on the
  first --scorecam-n scenes: 512 masked passes each), a centered box of the true size as a baseline, and negative
  controls for gScoreCAM (heatmaps shuffled between scenes, flipped, or computed for another object's prompt);
* the same for the model at initialization (``--init``: the weights that ``train_demo_clip.py --seed 0`` starts from).

    python scripts/demo_quality.py --json model_store/demo/quality.json --card model_store/demo/README.md \
        --figures model_store/demo      # trained + init; rewrites the card's tables, the sample grid and overlays
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from handler import Explainer, ExplainerConfig, load_model  # noqa: E402
from handler import scenes as S  # noqa: E402
from handler.boxes import box_iou  # noqa: E402

RETRIEVAL_SEED, LOC_SEED, SINGLE_SEED = 1001, 1002, 1003


# ---------------------------------------------------------------------------------------------------------------------
# models


def load_init_model(weights_dir: str | None = None, seed: int = 0):
    """The demo architecture with the initial weights of training (train_demo_clip.build_model(seed))."""
    from handler.loading import DEMO_CONFIG

    model = load_model(os.path.join(weights_dir, "demo_clip.json") if weights_dir else DEMO_CONFIG)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_demo_clip import build_model

    init = build_model(seed).state_dict()
    model.clip.load_state_dict(init)
    model.clip.eval()
    return model


def load_trained(weights_dir: str | None = None):
    if weights_dir is None:
        return load_model()
    return load_model(os.path.join(weights_dir, "demo_clip.json"), checkpoint=os.path.join(weights_dir, "demo_clip.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# retrieval


@torch.no_grad()
def best_prompts(model, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    """Index (into S.CAPTIONS) of the best of the 30 prompts for each image, with the serving preprocessing."""
    text = F.normalize(model.clip.encode_text(model.tokenize(list(S.CAPTIONS))).float(), dim=-1)
    out = []
    for s in range(0, len(images), batch):
        x = torch.cat([model.preprocess(im) for im in images[s : s + batch]])
        f = F.normalize(model.clip.encode_image(x).float(), dim=-1)
        out.append((f @ text.T).argmax(1).cpu().numpy())
    return np.concatenate(out)


def retrieval(model, n: int = 500, single_n: int = 200) -> dict:
    scenes = S.make_scenes(n, RETRIEVAL_SEED)
    best = best_prompts(model, [sc.image for sc in scenes])
    ok = np.array([int(b) in {o.index for o in sc.objects} for b, sc in zip(best, scenes, strict=True)])
    one = np.array([len(sc.objects) == 1 for sc in scenes])
    singles = S.make_scenes(single_n, SINGLE_SEED, n_objects=1)
    best1 = best_prompts(model, [sc.image for sc in singles])
    ok1 = np.array([int(b) == sc.objects[0].index for b, sc in zip(best1, singles, strict=True)])
    return {
        "n": n,
        "top1_present": float(ok.mean()),
        "n_single_in_set": int(one.sum()),
        "top1_single_in_set": float(ok[one].mean()),
        "n_single": single_n,
        "top1_single": float(ok1.mean()),
        "chance_present": float(np.mean([len(sc.objects) / 30 for sc in scenes])),
    }


# ---------------------------------------------------------------------------------------------------------------------
# localization


def localization_set(n: int, seed: int = LOC_SEED) -> list[tuple[S.Scene, S.SceneObject, S.SceneObject]]:
    """n scenes with 2-5 objects (cycled); the named object, and another object of the scene (wrong-prompt
    control), are chosen by the seed."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for i in range(n):
        sc = S.make_scene(seed, i, n_objects=2 + i % 4)
        t = int(rng.integers(len(sc.objects)))
        out.append((sc, sc.objects[t], sc.objects[(t + 1) % len(sc.objects)]))
    return out


def argmax_point(heatmap: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


def inside(pt: tuple[int, int], box) -> bool:
    return box[0] <= pt[0] < box[2] and box[1] <= pt[1] < box[3]


def score_maps(items, heatmaps, boxes) -> dict:
    """BoxAcc / pointing / wrong-object rates of heatmaps and boxes aligned with items [(scene, target, _)]."""
    box_ok, point_ok, wrong_box, wrong_point, ious = [], [], [], [], []
    for (sc, target, _), hm, box in zip(items, heatmaps, boxes, strict=True):
        iou = box_iou(tuple(box), target.box)
        others = [o for o in sc.objects if o is not target]
        pt = argmax_point(hm) if hm is not None else None
        ious.append(iou)
        box_ok.append(iou >= 0.5)
        wrong_box.append(any(box_iou(tuple(box), o.box) >= 0.5 for o in others))
        if pt is not None:
            point_ok.append(inside(pt, target.box))
            wrong_point.append(not inside(pt, target.box) and any(inside(pt, o.box) for o in others))
    res = {
        "boxacc": float(np.mean(box_ok)),
        "wrong_box": float(np.mean(wrong_box)),
        "mean_iou": float(np.mean(ious)),
    }
    if point_ok:
        res["pointing"] = float(np.mean(point_ok))
        res["wrong_point"] = float(np.mean(wrong_point))
    return res


def explain_set(model, items, method: str, with_other: bool = False, topk=None, cam_layer: str | None = None):
    """Heatmaps and boxes for the named object (and, with_other, for the other object: one call, shared passes)."""
    config = ExplainerConfig(method=method, topk=topk, batch_size=64, cam_layer=cam_layer)
    explainer = Explainer.from_config(model, config)
    heatmaps, boxes, other = [], [], []
    for sc, target, oth in tqdm(items, desc=method, leave=False, mininterval=2):
        rs = explainer.explain(sc.image, [target.label] + ([oth.label] if with_other else []))
        heatmaps.append(rs[0].heatmap)
        boxes.append(rs[0].box)
        if with_other:
            other.append((rs[1].heatmap, rs[1].box))
    return (heatmaps, boxes, other) if with_other else (heatmaps, boxes)


def localization(model, n: int = 200, scorecam_n: int = 200, controls: bool = True) -> dict:
    items = localization_set(n)
    out = {"n": n}
    t = time.time()
    if controls:
        hm, bx, other = explain_set(model, items, "gscorecam", with_other=True)
    else:
        hm, bx = explain_set(model, items, "gscorecam")
    out["gscorecam"] = score_maps(items, hm, bx)
    out["gscorecam"]["seconds"] = round(time.time() - t, 1)
    out["topk"] = model.default_topk
    if controls:
        # negative controls: each must score far lower than the real maps
        from handler.boxes import otsu_box

        shift = [hm[(i + 1) % n] for i in range(n)]  # another scene's map, resized to this image
        shift = [np.asarray(Image.fromarray(h).resize(it[0].size, Image.BILINEAR)) for h, it in zip(shift, items, strict=True)]
        out["control_shuffled"] = score_maps(items, shift, [otsu_box(h) for h in shift])
        flip = [h[::-1, ::-1].copy() for h in hm]
        out["control_flipped"] = score_maps(items, flip, [otsu_box(h) for h in flip])
        # the map for another object of the scene, scored against the named object
        out["control_other_prompt"] = score_maps(items, [o[0] for o in other], [o[1] for o in other])
    t = time.time()
    hm, bx = explain_set(model, items, "gradcam")
    out["gradcam"] = score_maps(items, hm, bx)
    out["gradcam"]["seconds"] = round(time.time() - t, 1)
    if scorecam_n:
        sub = items[:scorecam_n]
        t = time.time()
        hm, bx = explain_set(model, sub, "scorecam")
        out["scorecam"] = score_maps(sub, hm, bx)
        out["scorecam"]["n"] = len(sub)
        out["scorecam"]["seconds"] = round(time.time() - t, 1)
    # baseline: a box of the true size centred in the image; the image centre as the point
    base_boxes, base_maps = [], []
    for sc, target, _ in items:
        w, h = sc.size
        bw_, bh_ = target.box[2] - target.box[0], target.box[3] - target.box[1]
        x0, y0 = (w - bw_) // 2, (h - bh_) // 2
        base_boxes.append((x0, y0, x0 + bw_, y0 + bh_))
        m = np.zeros((h, w), np.float32)
        m[h // 2, w // 2] = 1.0
        base_maps.append(m)
    out["center_baseline"] = score_maps(items, base_maps, base_boxes)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# figures


def save_png(im: Image.Image, path: str) -> None:
    """128-colour PNG: the noisy backgrounds would make a true-colour PNG several times larger."""
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def overlay_panel(scene: S.Scene, obj: S.SceneObject, result, size: int = 200) -> Image.Image:
    """The heatmap and box of ``result`` over the scene, the object's ground-truth box thin white, longest side ``size``."""
    from handler.overlay import render_overlay

    im = render_overlay(scene.image, result.heatmap, result.box, obj.label)
    x0, y0, x1, y1 = obj.box
    ImageDraw.Draw(im).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=1)
    s = size / max(im.size)
    return im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)


def contact_sheet(panels: list[Image.Image], cols: int, cell: int = 204) -> Image.Image:
    """Panels centred in ``cell`` x ``cell`` squares, ``cols`` per row, on white."""
    sheet = Image.new("RGB", (cols * cell, ((len(panels) + cols - 1) // cols) * cell), (255, 255, 255))
    for i, im in enumerate(panels):
        sheet.paste(im, ((i % cols) * cell + (cell - im.width) // 2, (i // cols) * cell + (cell - im.height) // 2))
    return sheet


def figure_items() -> list[tuple[S.Scene, S.SceneObject]]:
    """The (scene, object) pairs of the overlay figures: 4 fresh scenes, their first two objects."""
    items = []
    for i in range(4):
        sc = S.make_scene(LOC_SEED + 100, i, n_objects=3 + i % 2)
        items.extend((sc, o) for o in sc.objects[:2])
    return items


def figures(model, out_dir: str) -> list[str]:
    paths = []
    grid = S.sample_grid(S.make_scenes(12, 7), cols=4, cell=200)
    p = os.path.join(out_dir, "scenes_grid.png")
    save_png(grid, p)
    paths.append(p)
    explainer = Explainer(model, method="gscorecam")
    panels = [overlay_panel(sc, o, explainer.explain(sc.image, [o.label])[0]) for sc, o in figure_items()]
    p = os.path.join(out_dir, "gscorecam_overlays.png")
    save_png(contact_sheet(panels, cols=4), p)
    paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = []
    for name, res in results.items():
        if name == "meta":
            continue
        r, loc = res["retrieval"], res["localization"]
        lines.append(f"### {name}")
        lines.append("")
        lines.append(
            f"retrieval ({r['n']} scenes): best prompt present {r['top1_present']:.1%} (chance {r['chance_present']:.1%}); "
            f"one-object scenes top-1 {r['top1_single']:.1%} ({r['n_single']} scenes), "
            f"{r['top1_single_in_set']:.1%} on the {r['n_single_in_set']} of the set"
        )
        lines.append("")
        lines.append(f"localization ({loc['n']} scenes with 2-5 objects, k = {loc['topk']}):")
        lines.append("")
        lines.append("| method | BoxAcc (IoU>=0.5) | pointing | box on another object | max on another object | mean IoU |")
        lines.append("|---|---|---|---|---|---|")
        for key in ("gscorecam", "gradcam", "scorecam", "center_baseline", "control_shuffled", "control_flipped",
                    "control_other_prompt"):
            if key not in loc:
                continue
            m = loc[key]
            label = key + (f" (first {m['n']})" if "n" in m else "")
            pt = f"{m['pointing']:.1%}" if "pointing" in m else "-"
            wp = f"{m['wrong_point']:.1%}" if "wrong_point" in m else "-"
            lines.append(f"| {label} | {m['boxacc']:.1%} | {pt} | {m['wrong_box']:.1%} | {wp} | {m['mean_iou']:.3f} |")
        lines.append("")
    return "\n".join(lines)


CARD_BEGIN, CARD_END = "<!-- quality:begin (scripts/demo_quality.py --card) -->", "<!-- quality:end -->"


def update_card(path: str, text: str) -> None:
    with open(path) as f:
        card = f.read()
    if CARD_BEGIN not in card or CARD_END not in card:
        raise SystemExit(f"{path} lacks the markers {CARD_BEGIN} ... {CARD_END}")
    head, rest = card.split(CARD_BEGIN, 1)
    _, tail = rest.split(CARD_END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{CARD_BEGIN}\n{text.strip()}\n{CARD_END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="a directory with demo_clip.json/.safetensors (default: the embedded)")
    p.add_argument("--retrieval-n", type=int, default=500)
    p.add_argument("--single-n", type=int, default=200)
    p.add_argument("--loc-n", type=int, default=200)
    p.add_argument("--scorecam-n", type=int, default=40, help="ScoreCAM (512 masked passes per image) on the first n")
    p.add_argument("--no-init", action="store_true", help="skip the model at initialization")
    p.add_argument("--only-init", action="store_true", help="only the model at initialization")
    p.add_argument("--merge", default=None, help="a JSON written by an earlier run whose models are added (not re-run)")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--card", default=None,
                   help="a model card whose block between the quality markers is replaced by the new tables")
    p.add_argument("--figures", default=None, help="write scenes_grid.png and gscorecam_overlays.png here")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    models = {} if a.only_init else {"trained": lambda: load_trained(a.weights)}
    if not a.no_init:
        models["init"] = lambda: load_init_model(a.weights)
    results = {"meta": {"retrieval_seed": RETRIEVAL_SEED, "localization_seed": LOC_SEED, "single_seed": SINGLE_SEED,
                        "command": "python scripts/demo_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}}
    for name, make in models.items():
        model = make()
        t = time.time()
        results[name] = {"retrieval": retrieval(model, a.retrieval_n, a.single_n)}
        print(f"[{name}] retrieval {json.dumps(results[name]['retrieval'])} ({time.time() - t:.0f}s)", flush=True)
        t = time.time()
        results[name]["localization"] = localization(model, a.loc_n, a.scorecam_n, controls=(name == "trained"))
        print(f"[{name}] localization ({time.time() - t:.0f}s)", flush=True)
        if name == "trained" and a.figures:
            print("figures:", figures(model, a.figures), flush=True)
    results["meta"]["seconds"] = round(time.time() - t0)
    if a.merge:
        with open(a.merge) as f:
            earlier = json.load(f)
        for name, res in earlier.items():
            if name != "meta" and name not in results:
                results[name] = res
                results["meta"][f"{name}_from"] = earlier.get("meta", {}).get("command", a.merge)
    print(table(results))
    if a.card:
        update_card(a.card, table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
