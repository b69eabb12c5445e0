"""Zero-shot detection evaluation: metrics on hand-made heatmaps, loaders, cache/resume, reports, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from handler.evaluation import ceiling as C
from handler.evaluation import metrics as M
from handler.evaluation.datasets import Sample, Target, load_coco, load_dataset, load_partimagenet, load_wsol
from handler.evaluation.report import summary_rows, write_report
from handler.evaluation.runner import MethodSpec, Runner, method_specs

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ box ceiling


def square_mask(x0, y0, side, size=224):
    m = np.zeros((size, size), bool)
    m[y0 : y0 + side, x0 : x0 + side] = True
    return m


def test_cell_coverage_counts_the_covered_fraction_of_each_cell():
    cov = C.cell_coverage(square_mask(64, 96, 32), grid=7)  # exactly cell (row 3, col 2)
    assert cov.shape == (7, 7)
    assert float(cov[3, 2]) == pytest.approx(1.0)
    assert float(cov.sum()) == pytest.approx(1.0)
    half = C.cell_coverage(square_mask(48, 96, 32), grid=7)  # straddles cells (3, 1) and (3, 2)
    assert float(half[3, 1]) == pytest.approx(0.5) and float(half[3, 2]) == pytest.approx(0.5)
    # a non-square image is squashed to the square input first: the same object fraction of the width
    wide = np.zeros((224, 448), bool)
    wide[96:128, 128:192] = True
    assert torch.allclose(C.cell_coverage(wide, grid=7), cov, atol=1e-6)


def test_ideal_cam_sharpens_and_leaks_into_neighbours():
    cov = C.cell_coverage(square_mask(48, 96, 32), grid=7)  # 0.5 / 0.5
    assert float(C.ideal_cam(cov).max()) == 1.0 and float(C.ideal_cam(cov).min()) == 0.0
    one = C.cell_coverage(square_mask(64, 96, 32), grid=7)
    leaky = C.ideal_cam(one, leak=0.25)
    assert float(leaky[3, 2]) == pytest.approx(1.0)
    assert float(leaky[2, 1]) == pytest.approx(0.25) and float(leaky[4, 3]) == pytest.approx(0.25)
    assert float(leaky[0, 0]) == 0.0
    uneven = C.cell_coverage(square_mask(40, 96, 32), grid=7)  # 0.75 in (3, 1), 0.25 in (3, 2)
    assert float(C.ideal_cam(uneven)[3, 2]) == pytest.approx(1 / 3)
    assert float(C.ideal_cam(uneven, gamma=2.0)[3, 2]) == pytest.approx(1 / 9)
    assert float(C.ideal_cam(torch.zeros(7, 7)).max()) == 0.0  # nothing covered: all zeros, not NaN


def test_cell_profile_separates_object_halo_and_background():
    cov = C.cell_coverage(square_mask(40, 96, 32), grid=7)  # 0.75 in (3, 1), 0.25 in (3, 2)
    exact = C.cell_profile(C.ideal_cam(cov), cov)
    assert exact["core"] == pytest.approx(1.0) and exact["partial"] == pytest.approx(1 / 3)
    assert exact["adjacent"] == 0.0 and exact["far"] == 0.0
    halo = C.cell_profile(C.ideal_cam(cov, leak=0.5), cov)
    assert halo["adjacent"] > 0.1 and halo["far"] == 0.0
    whole = torch.ones(7, 7)  # everything covered: no adjacent or far cells
    assert math.isnan(C.cell_profile(whole, whole)["far"]) and C.cell_profile(whole, whole)["core"] == 1.0


def test_ideal_boxes_grow_with_the_halo_and_fit_better_on_a_finer_grid():
    mask = square_mask(70, 100, 40)
    gt = (70, 100, 110, 140)
    tight = C.ideal_box(mask, grid=7)
    halo = C.ideal_box(mask, grid=7, leak=0.5)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert area(halo) > area(tight)
    assert M.box_iou(C.ideal_box(mask, grid=14), gt) > M.box_iou(tight, gt)
    # the box always contains the object's centre
    for box in (tight, halo):
        assert box[0] <= 90 <= box[2] and box[1] <= 120 <= box[3]
    rows = C.ceiling([(mask, gt), (square_mask(0, 0, 112), (0, 0, 112, 112))], grid=14)
    assert rows["n"] == 2 and 0.0 <= rows["boxacc"] <= 1.0 and rows["mean_iou"] > 0.5


# ------------------------------------------------------------------------------------------------ metrics


def nested(outer, inner, size=100, outer_value=0.32):
    """A heatmap: 0 background, ``outer_value`` on the outer box, 1 on the inner box."""
    h = np.zeros((size, size), np.float32)
    h[outer[1]:outer[3], outer[0]:outer[2]] = outer_value
    h[inner[1]:inner[3], inner[0]:inner[2]] = 1.0
    return h


def test_box_iou_uses_exclusive_corners():
    assert M.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert M.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert M.box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching, no shared pixel
    assert M.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert M.best_iou((0, 0, 10, 10), [(50, 50, 60, 60), (0, 0, 10, 20)]) == pytest.approx(0.5)
    assert M.best_iou((0, 0, 10, 10), []) == 0.0


def test_largest_component_box_is_8_connected_and_whole_image_when_empty():
    mask = np.zeros((20, 30), bool)
    mask[2:4, 2:4] = True  # 4 px
    mask[10, 10] = mask[11, 11] = mask[12, 12] = True  # diagonal chain: one 8-connected component of 3 px
    mask[15:18, 20:28] = True  # 24 px: the largest
    assert M.largest_component_box(mask) == (20, 15, 28, 18)
    mask[15:18, 20:28] = False
    assert M.largest_component_box(mask) == (2, 2, 4, 4)
    mask[:] = False
    mask[10, 10] = mask[11, 11] = mask[12, 12] = mask[13, 13] = mask[14, 14] = True  # 5 px diagonal > 4 px square
    mask[2:4, 2:4] = True
    assert M.largest_component_box(mask) == (10, 10, 15, 15)
    assert M.largest_component_box(np.zeros((5, 7), bool)) == (0, 0, 7, 5)


def test_reference_threshold_box_matches_the_core():
    from handler.boxes import threshold_box

    rng = np.random.default_rng(0)
    for _ in range(20):
        h = rng.random((24, 31)).astype(np.float32)
        for tau in (0.0, 0.3, 0.55, 0.95):
            assert tuple(threshold_box(h, tau)) == M.largest_component_box(h >= tau)


def test_ious_at_taus_on_nested_heatmap():
    gt = [(20, 20, 60, 60)]
    ious = M.ious_at_taus(nested((10, 10, 70, 70), (22, 22, 58, 58)), gt)
    assert ious.shape == (20,)
    assert ious[0] == pytest.approx(1600 / 10000)  # tau = 0: the whole image
    assert np.allclose(ious[1:7], 1600 / 3600)  # tau 0.05 .. 0.30: the outer box (value 0.32)
    assert np.allclose(ious[7:], 36 * 36 / 1600)  # tau 0.35 .. 0.95: the inner box


def test_max_box_acc_v2_picks_different_tau_per_delta():
    gt = [(20, 20, 60, 60)]
    # image 1: outer box IoU 0.444, inner box IoU 0.81; image 2: outer 0.444, inner 0.0625
    h1 = nested((10, 10, 70, 70), (22, 22, 58, 58))
    h2 = nested((10, 10, 70, 70), (20, 20, 30, 30))
    table = np.stack([M.ious_at_taus(h1, gt), M.ious_at_taus(h2, gt)])
    # delta 0.3: both outer boxes hit at tau 0.05..0.30 (1.0); delta 0.5 and 0.7: only image 1's inner box (0.5)
    assert M.box_acc_curve(table, 0.3)[1] == 1.0 and M.box_acc_curve(table, 0.3)[10] == 0.5
    res = M.max_box_acc_v2(table)
    assert res["per_delta"] == {0.3: 1.0, 0.5: 0.5, 0.7: 0.5}
    assert res["best_tau"][0.3] == pytest.approx(0.05)
    assert res["best_tau"][0.5] == pytest.approx(0.35) and res["best_tau"][0.7] == pytest.approx(0.35)
    assert res["value"] == pytest.approx(2 / 3)
    # a single fixed tau would do worse than the per-delta maximum
    fixed = max(np.mean([M.box_acc_curve(table, d)[i] for d in M.DELTAS]) for i in range(len(M.TAUS)))
    assert fixed < res["value"]


def test_heatmaps_are_min_max_normalized():
    gt = [(20, 20, 60, 60)]
    h = nested((10, 10, 70, 70), (22, 22, 58, 58))
    assert np.allclose(M.ious_at_taus(h * 0.5 + 0.25, gt), M.ious_at_taus(h, gt))
    assert np.all(M.normalize_heatmap(np.full((4, 4), 3.0)) == 0)


def test_box_acc_mean_iou_and_pointing():
    assert M.box_acc([0.49, 0.5, 0.9, 0.1]) == 0.5
    assert math.isnan(M.box_acc([]))
    h = np.zeros((50, 80), np.float32)
    h[30, 60] = 1.0
    assert M.pointing_hit(h, [(55, 25, 70, 40)])
    assert not M.pointing_hit(h, [(0, 0, 10, 10)])
    assert not M.pointing_hit(h, [(62, 30, 70, 40)])  # peak 1.5 px left of the box
    assert M.pointing_hit(h, [(62, 30, 70, 40)], tolerance=2)
    rec = M.explanation_metrics(h, (55, 25, 70, 40), [(55, 25, 70, 40), (0, 0, 5, 5)], n_objects=5)
    assert rec["iou"] == 1.0 and rec["pointing"] and rec["object_group"] == "4-6"
    assert rec["area_fraction"] == pytest.approx(15 * 15 / 4000) and rec["size_group"] == "small"
    json.dumps(rec)  # cacheable


def test_groups_like_fig2():
    assert [M.object_group(n) for n in (1, 3, 4, 6, 7, 30)] == ["1-3", "1-3", "4-6", "4-6", "7+", "7+"]
    assert [M.size_group(f) for f in (0.0, 0.329, 0.33, 0.669, 0.67, 1.0)] == [
        "small", "small", "medium", "medium", "large", "large"]
    assert M.object_area_fraction([(0, 0, 10, 10), (0, 0, 50, 100)], 100, 100) == 0.5


def _record(iou, n_objects=2, frac=0.1, pointing=True, ms=10.0, passes=4.0):
    return {"iou": iou, "iou_at_tau": [iou] * 20, "pointing": pointing, "n_objects": n_objects,
            "object_group": M.object_group(n_objects), "area_fraction": frac, "size_group": M.size_group(frac),
            "ms_per_explanation": ms, "passes_per_explanation": passes, "passes_per_call": 2 * passes,
            "method": "gscorecam", "topk": 3}


def test_summarize_and_group_summary():
    recs = [_record(0.8, 1, 0.1), _record(0.2, 5, 0.5, pointing=False), _record(0.6, 8, 0.9)]
    s = M.summarize(recs)
    assert s["n"] == 3 and s["box_acc"] == pytest.approx(2 / 3) and s["mean_iou"] == pytest.approx(1.6 / 3)
    assert s["pointing_acc"] == pytest.approx(2 / 3) and s["ms_per_explanation"] == 10.0
    assert s["max_box_acc_v2"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    g = M.group_summary(recs, "object_group")
    assert list(g) == ["1-3", "4-6", "7+"] and g["4-6"]["mean_iou"] == pytest.approx(0.2)
    sz = M.group_summary(recs[:1], "size_group")
    assert sz["small"]["n"] == 1 and sz["large"]["n"] == 0 and math.isnan(sz["large"]["mean_iou"])


# ------------------------------------------------------------------------------------------------ datasets


def _coco(tmp_path: Path, images, annotations, categories, name="ann.json") -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for im in images:
        from PIL import Image

        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "images" / Path(
            im.get("file_name") or im["coco_url"].rsplit("/", 1)[-1]).name)
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_load_coco_groups_categories_per_image(tmp_path):
    images = [{"id": 7, "file_name": "b.png", "width": 40, "height": 30},
              {"id": 3, "file_name": "images/a.png", "width": 20, "height": 20},
              {"id": 9, "file_name": "empty.png", "width": 10, "height": 10}]
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [20, 2, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [3, 3, 4, 4]},
            {"id": 5, "image_id": 3, "category_id": 2, "bbox": [0, 0, 20, 20], "iscrowd": 0}]
    cats = [{"id": 1, "name": "traffic_light", "supercategory": "outdoor"}, {"id": 2, "name": "dog"}]
    path = _coco(tmp_path, images, anns, cats)
    samples = load_coco(path)
    assert [s.image_id for s in samples] == ["3", "7"]  # sorted, the image without annotations skipped
    s7 = samples[1]
    assert s7.path == tmp_path / "images" / "b.png" and (s7.width, s7.height) == (40, 30)
    assert s7.n_objects == 3  # crowd dropped
    assert [t.prompt for t in s7.targets] == ["traffic light", "dog"]
    assert s7.targets[0].boxes == [(1, 2, 11, 7), (20, 2, 25, 7)]
    assert samples[0].path.exists()  # "images/a.png" under the images dir
    assert [t.prompt for t in load_coco(path, template="a photo of a {name}.")[1].targets][0] == \
        "a photo of a traffic light."
    assert len(load_coco(path, limit=1)) == 1
    assert [t.name for t in load_coco(path, categories=["dog"])[1].targets] == ["dog"]


def test_partimagenet_and_lvis_layouts(tmp_path):
    images = [{"id": 1, "file_name": "n01/n01_1.JPEG", "width": 30, "height": 30}]
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 0}]
    cats = [{"id": 0, "name": "Head", "supercategory": "Quadruped"}, {"id": 3, "name": "Tail",
                                                                      "supercategory": "Quadruped"}]
    s = load_partimagenet(_coco(tmp_path, images, anns, cats))[0]
    assert [t.prompt for t in s.targets] == ["Quadruped Head", "Quadruped Tail"]
    lv_images = [{"id": 5, "coco_url": "http://images.cocodataset.org/val2017/000000000005.jpg", "width": 20,
                  "height": 10}]
    lv = load_dataset("lvis", _coco(tmp_path, lv_images, [{"id": 1, "image_id": 5, "category_id": 1,
                                                            "bbox": [1, 1, 2, 2]}],
                                    [{"id": 1, "name": "aerosol_can"}], "lvis.json"))
    assert lv[0].path.name == "000000000005.jpg" and lv[0].targets[0].prompt == "aerosol can"


def test_load_wsol_layout(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "image_ids.txt").write_text("val2/0/a.jpeg\nval2/1/b.jpeg\n")
    (meta / "class_labels.txt").write_text("val2/0/a.jpeg,0\nval2/1/b.jpeg,1\n")
    (meta / "localization.txt").write_text("val2/0/a.jpeg,1,2,10,20\nval2/0/a.jpeg,30,30,39,39\n"
                                           "val2/1/b.jpeg,0,0,49,49\n")
    (meta / "image_sizes.txt").write_text("val2/0/a.jpeg,64,48\nval2/1/b.jpeg,50,50\n")
    samples = load_wsol(meta, tmp_path / "imgs", class_names=["tench", "goldfish"], template="a photo of a {name}.")
    assert [(s.image_id, s.width, s.height, s.n_objects) for s in samples] == [
        ("val2/0/a.jpeg", 64, 48, 2), ("val2/1/b.jpeg", 50, 50, 1)]
    assert samples[0].targets[0].boxes == [(1, 2, 11, 21), (30, 30, 40, 40)]  # inclusive -> exclusive
    assert samples[1].targets[0].prompt == "a photo of a goldfish."
    assert samples[0].path == tmp_path / "imgs" / "val2/0/a.jpeg"
    default = load_wsol(meta, tmp_path / "imgs")  # ImageNet class names by default
    assert default[0].targets[0].name == "tench"


# ------------------------------------------------------------------------------------------------ runner + report


class FakeExplainer:
    """Explains every prompt with a heatmap peaked on the prompt's first ground-truth box (from a lookup)."""

    def __init__(self, boxes: dict[str, tuple]):
        self.boxes = boxes
        self.calls = 0

    def explain(self, image, prompts, method=None, topk=None):
        self.calls += 1
        out = []
        for p in prompts:
            h = np.zeros((image.height, image.width), np.float32)
            x0, y0, x1, y1 = self.boxes[p]
            h[y0:y1, x0:x1] = 1.0
            out.append(SimpleNamespace(heatmap=h, box=(x0, y0, x1, y1), score=1.0, forward_passes=6,
                                       elapsed_ms=30.0, topk=topk or 0))
        return out


def _samples(tmp_path: Path, n=3) -> list[Sample]:
    from PIL import Image

    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30)).save(path)
        out.append(Sample(str(i), path, 40, 30, [Target(1, "a", "a", [(0, 0, 10, 10)]),
                                                 Target(2, "b", "b", [(20, 10, 40, 30)])], 2))
    return out


def test_method_specs_sweep_k_only_for_gscorecam():
    specs = method_specs(["gscorecam", "gradcam", "rise"], [1, 10])
    assert [s.key for s in specs] == ["gscorecam_k1", "gscorecam_k10", "gradcam", "rise"]
    assert [s.key for s in method_specs(["gscorecam"])] == ["gscorecam"]
    with pytest.raises(ValueError):
        method_specs(["nope"])


def test_runner_caches_and_resumes(tmp_path):
    samples = _samples(tmp_path)
    fake = FakeExplainer({"a": (0, 0, 10, 10), "b": (20, 10, 40, 30)})
    specs = [MethodSpec("gscorecam", 2), MethodSpec("gradcam")]
    runner = Runner(None, specs, tmp_path / "cache", progress=False, warmup=False, explainer=fake,
                    run_info={"model": "fake"})
    res = runner.run(samples)
    assert fake.calls == 6  # one call per (image, method): both prompts together
    assert {k: len(v) for k, v in res.items()} == {"gscorecam_k2": 6, "gradcam": 6}
    r = res["gscorecam_k2"][0]
    assert r["iou"] == 1.0 and r["pointing"] and r["ms_per_explanation"] == 15.0
    assert r["passes_per_call"] == 6 and r["passes_per_explanation"] == 3.0 and r["topk"] == 2
    assert (tmp_path / "cache" / "gscorecam_k2" / "0.json").exists()
    again = Runner(None, specs, tmp_path / "cache", resume=True, progress=False, warmup=False, explainer=fake,
                   run_info={"model": "fake"}).run(samples)
    assert fake.calls == 6 and again == res  # everything from the cache
    (tmp_path / "cache" / "gradcam" / "1.json").unlink()  # as if killed before image 1's gradcam
    Runner(None, specs, tmp_path / "cache", resume=True, progress=False, warmup=False, explainer=fake,
           run_info={"model": "fake"}).run(samples)
    assert fake.calls == 7
    with pytest.raises(ValueError, match="resume"):
        Runner(None, specs, tmp_path / "cache", resume=True, progress=False, explainer=fake,
               run_info={"model": "other"}).run(samples)


def test_report_writes_markdown_csv_and_plots(tmp_path):
    results = {"gscorecam_k1": [_record(0.2) | {"topk": 1}] * 3, "gscorecam_k10": [_record(0.6) | {"topk": 10}] * 3,
               "gradcam": [_record(0.4, 7, 0.7) | {"method": "gradcam", "topk": 0}] * 2}
    rows = summary_rows(results)
    assert [r["topk"] for r in rows] == [1, 10, 0]
    paths = write_report(results, tmp_path / "out", {"model": "fake", "command": "scripts/evaluate.py x"})
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    md = paths["markdown"].read_text()
    assert "| gscorecam | 10 | 3 | 100.0 |" in md and "scripts/evaluate.py x" in md
    with open(paths["csv"]) as f:
        assert [row["setting"] for row in csv.DictReader(f)] == ["gscorecam_k1", "gscorecam_k10", "gradcam"]
    with open(paths["groups_csv"]) as f:
        assert len(list(csv.DictReader(f))) == 3 * 6


# ------------------------------------------------------------------------------------------------ end to end


def _model_arch(tmp_path: Path) -> list[str]:
    """The demo model if its weights exist, else a tiny random CLIP config."""
    if (ROOT / "model_store" / "demo" / "demo_clip.safetensors").is_file():
        return []
    cfg = {"model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                                          "patch_size": None},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                      "layers": 1}},
           "gscorecam": {"topk": 8}}
    path = tmp_path / "tiny_clip.json"
    path.write_text(json.dumps(cfg))
    return ["--arch", str(path)]


def test_evaluate_script_end_to_end_on_demo_scenes(tmp_path, capsys, monkeypatch):
    import runpy

    from handler import scenes
    from handler.evaluation.cli import main

    ann = scenes.export(str(tmp_path / "scenes"), 20, 20261204)
    out = tmp_path / "out"
    argv = ["--annotations", ann, "--limit", "20", "--out", str(out), "--methods", "gscorecam,rise",
            "--topk", "1", "--rise-masks", "4", "--rise-batch", "4", "--no-progress", *_model_arch(tmp_path)]
    monkeypatch.setattr("sys.argv", ["scripts/evaluate.py", *argv])
    with pytest.raises(SystemExit) as exit_info:  # the script itself, in this process (no second torch import)
        runpy.run_path(str(ROOT / "scripts" / "evaluate.py"), run_name="__main__")
    assert exit_info.value.code == 0
    for name in ("results.md", "results.csv", "groups.csv", "records.jsonl", "boxacc_vs_k.png",
                 "iou_by_objects.png", "iou_by_size.png", "runtime_vs_accuracy.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == ["gscorecam_k1", "rise"]
    n = sum(len(s["records"]) for s in [json.loads(p.read_text()) for p in (out / "cache" / "rise").glob("*.json")])
    assert n >= 20
    for r in rows:
        assert int(r["n"]) == n
        for key in ("box_acc", "max_box_acc_v2", "mean_iou", "pointing_acc"):
            assert 0.0 <= float(r[key]) <= 1.0, (r["setting"], key)
        assert float(r["ms_per_explanation"]) > 0
    assert float(rows[1]["passes_per_call"]) == 4 and 0 < float(rows[0]["passes_per_call"]) <= 5
    assert "| gscorecam | 1 |" in capsys.readouterr().out
    # resume: nothing recomputed, same table
    before = (out / "results.csv").read_text()
    assert main([*argv, "--resume", "--quiet"]) == 0
    assert (out / "results.csv").read_text() == before
    # another CAM layer is another run: its results may not be mixed into this cache
    with pytest.raises(ValueError, match="cam_layer"):
        main([*argv, "--resume", "--quiet", "--cam-layer", "layer3"])
