"""The embedded demo CLIP (model_store/demo/): config, size, retrieval and localization on fresh scenes.

The committed weights are loaded, never trained here. The localization check runs gScoreCAM on a small fixed set
of generated scenes (seeds never used in training) and must FAIL for negative controls: heatmaps shuffled between
scenes, flipped, or computed for the prompt of another object of the scene. The thresholds sit well below the
numbers measured by scripts/demo_quality.py (see model_store/demo/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from handler import Explainer, ExplainerConfig, load_model
from handler import scenes as S
from handler.boxes import box_iou, otsu_box

DEMO = Path(__file__).resolve().parent.parent / "model_store" / "demo"

# fixed fresh sets (training uses seed 0; the model card's numbers use seeds 1001-1003)
RETRIEVAL_SEED, SINGLE_SEED, LOC_SEED = 5001, 5002, 5003
RETRIEVAL_N, SINGLE_N, LOC_N = 100, 40, 40

# thresholds: the targets where the model meets them, else measured values minus a margin. Measured with the
# committed weights on these fixed sets: retrieval 1.00 (best prompt present) / 1.00 (one object); gScoreCAM
# pointing 0.75, BoxAcc 0.10, box on another object 0.0; controls: shuffled pointing 0.025, flipped 0.15 / 0.10,
# other object's prompt 0.0 (its boxes land on the other object: 0.10). BoxAcc is far below the 0.5 (the
# boxes are about twice the objects' size: see the model card's Limitations), so the check only asks for some hits;
# pointing and boxes-on-another-object are what separate real maps from the controls.
MIN_TOP1_PRESENT = 0.90
MIN_TOP1_SINGLE = 0.95
MIN_POINTING = 0.60
MIN_BOXACC = 0.05
MAX_WRONG_BOX = 0.05
# cam_layer="layer3" (14x14) on the same fixed set: measured BoxAcc 0.675, pointing 0.925, box on another 0.125
MIN_BOXACC_LAYER3 = 0.50


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model()


# ------------------------------------------------------------------------------------------------------- the artifact


def test_config_and_weights_are_committed_and_small():
    cfg = json.loads((DEMO / "demo_clip.json").read_text())
    mc = cfg["model_cfg"]
    assert mc["vision_cfg"]["image_size"] == 224
    assert isinstance(mc["vision_cfg"]["layers"], list) and mc["vision_cfg"]["width"] == 16  # ModifiedResNet
    assert mc["text_cfg"]["layers"] == 2 and mc["text_cfg"]["context_length"] == 16
    assert cfg["preprocess_cfg"]["interpolation"] == "bicubic" and len(cfg["preprocess_cfg"]["mean"]) == 3
    channels = mc["vision_cfg"]["width"] * 32
    assert abs(cfg["gscorecam"]["topk"] - 0.1 * channels) <= 2
    weights = DEMO / "demo_clip.safetensors"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    for png in DEMO.glob("*.png"):
        assert png.stat().st_size < 300 * 1024, png
    assert (DEMO / "README.md").is_file()


def test_load_model_defaults_to_the_demo(model):
    assert model.image_size == 224
    assert model.default_topk == json.loads((DEMO / "demo_clip.json").read_text())["gscorecam"]["topk"]
    captured = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        model.clip.encode_image(model.preprocess(S.make_scene(1, 1).image))
    handle.remove()
    assert tuple(captured["a"].shape) == (1, 512, 7, 7)  # CAM layer like CLIP RN50's, 7x7
    r = Explainer(model, topk=None).explain(S.make_scene(1, 1).image, [S.make_scene(1, 1).objects[0].label])[0]
    assert r.topk == model.default_topk


# --------------------------------------------------------------------------------------------------------- retrieval


@torch.no_grad()
def _best_prompts(model, images):
    text = F.normalize(model.clip.encode_text(model.tokenize(list(S.CAPTIONS))).float(), dim=-1)
    x = torch.cat([model.preprocess(im) for im in images])
    f = F.normalize(model.clip.encode_image(x).float(), dim=-1)
    return (f @ text.T).argmax(1).tolist()


def test_retrieval_names_a_present_object(model):
    scenes = S.make_scenes(RETRIEVAL_N, RETRIEVAL_SEED)
    best = _best_prompts(model, [sc.image for sc in scenes])
    hit = np.mean([b in {o.index for o in sc.objects} for b, sc in zip(best, scenes, strict=True)])
    print("retrieval: best prompt present", hit)
    assert hit >= MIN_TOP1_PRESENT, hit
    singles = S.make_scenes(SINGLE_N, SINGLE_SEED, n_objects=1)
    best = _best_prompts(model, [sc.image for sc in singles])
    hit1 = np.mean([b == sc.objects[0].index for b, sc in zip(best, singles, strict=True)])
    print("retrieval: one-object top-1", hit1)
    assert hit1 >= MIN_TOP1_SINGLE, hit1


# ------------------------------------------------------------------------------------------------------ localization


def localization_metrics(items, heatmaps, boxes) -> dict:
    """items: [(scene, named object)]. Pointing: heatmap maximum inside the named object's box."""
    point, boxacc, wrong = [], [], []
    for (sc, target), hm, box in zip(items, heatmaps, boxes, strict=True):
        y, x = np.unravel_index(int(np.argmax(hm)), hm.shape)
        x0, y0, x1, y1 = target.box
        point.append(x0 <= x < x1 and y0 <= y < y1)
        boxacc.append(box_iou(tuple(box), target.box) >= 0.5)
        wrong.append(any(box_iou(tuple(box), o.box) >= 0.5 for o in sc.objects if o is not target))
    return {"pointing": float(np.mean(point)), "boxacc": float(np.mean(boxacc)), "wrong_box": float(np.mean(wrong))}


def check_passes(m: dict) -> bool:
    return m["pointing"] >= MIN_POINTING and m["boxacc"] >= MIN_BOXACC and m["wrong_box"] <= MAX_WRONG_BOX


@pytest.fixture(scope="module")
def localization_run(model):
    """gScoreCAM on LOC_N scenes with 2-5 objects: the named object's map, and another present object's map."""
    rng = np.random.default_rng(LOC_SEED)
    explainer = Explainer(model, method="gscorecam", topk=None, batch_size=64)
    items, heatmaps, boxes, other_maps, other_boxes = [], [], [], [], []
    for i in range(LOC_N):
        sc = S.make_scene(LOC_SEED, i, n_objects=2 + i % 4)
        t = int(rng.integers(len(sc.objects)))
        target, other = sc.objects[t], sc.objects[(t + 1) % len(sc.objects)]
        r, r_other = explainer.explain(sc.image, [target.label, other.label])
        assert r.heatmap.shape == (sc.size[1], sc.size[0])
        items.append((sc, target))
        heatmaps.append(r.heatmap)
        boxes.append(r.box)
        other_maps.append(r_other.heatmap)
        other_boxes.append(r_other.box)
    return items, heatmaps, boxes, other_maps, other_boxes


def test_gscorecam_lands_on_the_named_object(localization_run):
    items, heatmaps, boxes, _, _ = localization_run
    m = localization_metrics(items, heatmaps, boxes)
    print("gscorecam on the fixed set:", m)
    assert m["pointing"] >= MIN_POINTING, m
    assert m["boxacc"] >= MIN_BOXACC, m
    assert m["wrong_box"] <= MAX_WRONG_BOX, m
    assert check_passes(m)


def test_a_finer_cam_layer_gives_tighter_boxes(model, localization_run):
    """cam_layer="layer3" (14x14): the documented trade-off (model card, Limitations) on the fixed set: far more
    boxes fit the named object than at layer4's 7x7, the maximum still lands on it, more boxes on another object."""
    items, heatmaps, boxes, _, _ = localization_run
    coarse = localization_metrics(items, heatmaps, boxes)
    explainer = Explainer.from_config(model, ExplainerConfig(cam_layer="layer3", batch_size=64))
    results = [explainer.explain(sc.image, [target.label])[0] for sc, target in items]
    assert results[0].cam.shape == (14, 14)
    fine = localization_metrics(items, [r.heatmap for r in results], [r.box for r in results])
    print("gscorecam at layer3 on the fixed set:", fine)
    assert fine["boxacc"] >= MIN_BOXACC_LAYER3 and fine["boxacc"] >= coarse["boxacc"] + 0.3, (fine, coarse)
    assert fine["pointing"] >= MIN_POINTING, fine


def assert_control_fails(name: str, localization_run, maps, boxes=None) -> dict:
    """A negative control: ``maps`` (boxes: their Otsu boxes unless given) must fail the check and point far worse
    than the real maps."""
    items, heatmaps, real_boxes, _, _ = localization_run
    real = localization_metrics(items, heatmaps, real_boxes)
    m = localization_metrics(items, maps, boxes if boxes is not None else [otsu_box(h) for h in maps])
    print(f"control {name}:", m)
    assert not check_passes(m), m
    assert m["pointing"] <= real["pointing"] - 0.3, (m, real)
    return m


def test_check_fails_for_shuffled_heatmaps(localization_run):
    items, heatmaps = localization_run[0], localization_run[1]
    n = len(items)
    shuffled = []
    for i, (sc, _) in enumerate(items):  # the map of another scene, resized to this image
        shuffled.append(np.asarray(Image.fromarray(heatmaps[(i + 7) % n]).resize(sc.size, Image.BILINEAR)))
    assert_control_fails("shuffled", localization_run, shuffled)


def test_check_fails_for_flipped_heatmaps(localization_run):
    for flip in (lambda h: h[:, ::-1], lambda h: h[::-1, :]):
        assert_control_fails("flipped", localization_run, [np.ascontiguousarray(flip(h)) for h in localization_run[1]])


def test_check_fails_for_the_wrong_prompt(localization_run):
    """Maps computed for another object of the same scene do not land on the named object."""
    _, _, _, other_maps, other_boxes = localization_run
    m = assert_control_fails("other prompt", localization_run, other_maps, other_boxes)
    assert m["wrong_box"] >= 0.05  # ... they land on the other object instead (measured 0.10)


def test_box_ceiling_script_bounds_otsu_boxes_by_the_cam_grid(tmp_path, monkeypatch, capsys):
    """scripts/box_ceiling.py on a few localization scenes: ideal 14x14 maps fit better than 7x7 ones, a halo makes
    7x7 boxes worse, and the profile puts ideal maps at zero off the object while the trained maps peak on it."""
    import runpy

    out = tmp_path / "ceiling.json"
    argv = ["--n", "10", "--grids", "7,14", "--gammas", "1", "--leaks", "0,0.3", "--json", str(out),
            "--plot", str(tmp_path / "ceiling.png"), "--measured", str(DEMO / "quality.json"), "--profile",
            "--cam-layers", "layer3", "--overlays", str(tmp_path / "layers.png")]
    monkeypatch.setattr("sys.argv", ["scripts/box_ceiling.py", *argv])
    monkeypatch.syspath_prepend(str(DEMO.parent.parent / "scripts"))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(DEMO.parent.parent / "scripts" / "box_ceiling.py"), run_name="__main__")
    assert exit_info.value.code == 0
    result = json.loads(out.read_text())
    rows = {(r["grid"], r["leak"]): r for r in result["ceiling"]}
    assert set(rows) == {(7, 0.0), (7, 0.3), (14, 0.0), (14, 0.3)} and all(r["n"] == 10 for r in rows.values())
    assert rows[(14, 0.0)]["mean_iou"] > rows[(7, 0.0)]["mean_iou"] > rows[(7, 0.3)]["mean_iou"]
    ideal, trained = result["profile"]["ideal coverage^1"], result["profile"]["trained demo: gscorecam"]
    assert ideal["adjacent"] == 0.0 and ideal["far"] == 0.0 and ideal["core"] > ideal["partial"]
    assert trained["core"] > trained["partial"] > trained["far"]
    assert [(r["cam_layer"], r["grid"], r["method"]) for r in result["measured"]] == [
        ("layer3", 14, "gscorecam"), ("layer3", 14, "gradcam")]
    assert all(0.0 <= r["boxacc"] <= 1.0 for r in result["measured"])
    assert (tmp_path / "ceiling.png").stat().st_size > 0 and (tmp_path / "layers.png").stat().st_size > 0
    assert "| 7x7 | coverage^1 | 0 |" in capsys.readouterr().out
