"""handler/scenes.py: the generated scenes the demo model is trained and checked on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from handler import scenes as S


@pytest.fixture(scope="module")
def sample():
    return S.make_scenes(60, seed=4242)


def test_pairs_and_captions():
    assert len(S.PAIRS) == len(set(S.PAIRS)) == 30
    assert set(S.COLOUR_NAMES) == {"red", "green", "blue", "yellow", "purple", "orange"}
    assert set(S.SHAPES) == {"circle", "square", "triangle", "star", "cross"}
    assert S.CAPTIONS[0] == "a red circle" and S.CAPTIONS[-1] == "a orange cross"
    for i, (c, s) in enumerate(S.PAIRS):
        assert S.pair_index(c, s) == i and S.CAPTIONS[i] == f"a {c} {s}"


def test_deterministic_by_seed_and_index():
    a, b = S.make_scene(5, 3), S.make_scene(5, 3)
    assert a.size == b.size
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [(o.label, o.box) for o in a.objects] == [(o.label, o.box) for o in b.objects]
    # independent of what else was generated, and different for another seed / index
    assert np.array_equal(np.asarray(S.make_scenes(4, 5)[3].image), np.asarray(a.image))
    c, d = S.make_scene(6, 3), S.make_scene(5, 4)
    assert not (c.size == a.size and np.array_equal(np.asarray(c.image), np.asarray(a.image)))
    assert not (d.size == a.size and np.array_equal(np.asarray(d.image), np.asarray(a.image)))


def test_objects_distinct_non_overlapping_and_sized(sample):
    counts = set()
    for sc in sample:
        assert sc.image.mode == "RGB"
        assert 1 <= len(sc.objects) <= 5
        counts.add(len(sc.objects))
        assert len({(o.colour, o.shape) for o in sc.objects}) == len(sc.objects)
        w, h = sc.size
        short = min(w, h)
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            extent = max(x1 - x0, y1 - y0)
            assert 0.08 * short <= extent <= 0.5 * short, (extent, short)
        assert set(np.unique(sc.mask)) == set(range(len(sc.objects) + 1))
    assert counts == {1, 2, 3, 4, 5}


def test_objects_do_not_overlap_or_touch():
    """Objects lie in disjoint discs: no object is drawn over another, and a gap of background separates them."""
    from handler.boxes import box_iou

    for sc in S.make_scenes(40, seed=99):
        for k, a in enumerate(sc.objects, start=1):
            own = sc.mask == k
            grown = own.copy()  # 1-pixel dilation (8-neighbourhood)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    grown |= np.roll(np.roll(own, dy, 0), dx, 1)
            assert set(np.unique(sc.mask[grown])) <= {0, k}
            # the whole shape survived (nothing drawn over it): its mask is as large as its box suggests
            x0, y0, x1, y1 = a.box
            assert a.area >= 0.3 * (x1 - x0) * (y1 - y0)
            for b in sc.objects[k:]:
                assert box_iou(a.box, b.box) < 0.3


def test_boxes_tight_to_masks(sample):
    for sc in sample:
        for k, o in enumerate(sc.objects, start=1):
            ys, xs = np.nonzero(sc.mask == k)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert o.area == len(xs)
            # the drawn colour is there: pixels inside the mask are close to the object's colour
            pix = np.asarray(sc.image, dtype=np.float32)[sc.mask == k]
            assert np.abs(pix.mean(0) - np.array(S.COLOURS[o.colour])).max() < 45


def test_varied_sizes_and_aspect_ratios(sample):
    aspects = [w / h for w, h in (sc.size for sc in sample)]
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    assert len({sc.size for sc in sample}) > 40
    for w, h in (sc.size for sc in sample):
        assert S.MIN_SIDE <= min(w, h) and max(w, h) <= S.MAX_SIDE


def test_backgrounds_are_not_flat(sample):
    for sc in sample[:10]:
        bg = np.asarray(sc.image, dtype=np.float32)[sc.mask == 0]
        assert bg.std(0).mean() > 3


def test_every_pair_appears():
    seen = {o.index for sc in S.make_scenes(150, seed=11) for o in sc.objects}
    assert seen == set(range(30))


def test_n_objects_and_size_arguments():
    sc = S.make_scene(1, 2, n_objects=5, size=(320, 200))
    assert sc.size == (320, 200) and len(sc.objects) == 5
    assert len(S.make_scene(1, 2, n_objects=1).objects) == 1
    with pytest.raises(ValueError):
        S.make_scene(1, 2, n_objects=6)


def test_shapes_differ():
    """Each shape fills its box differently (circle ~0.79, square ~0.5-1, triangle < 0.6, cross/star < 0.7)."""
    fills: dict[str, list[float]] = {s: [] for s in S.SHAPES}
    for sc in S.make_scenes(80, seed=3):
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            fills[o.shape].append(o.area / ((x1 - x0) * (y1 - y0)))
    assert abs(np.median(fills["circle"]) - math.pi / 4) < 0.05
    assert np.median(fills["star"]) < np.median(fills["circle"]) - 0.2
    assert np.median(fills["triangle"]) < np.median(fills["circle"]) - 0.15


def test_coco_export(tmp_path):
    path = S.export(str(tmp_path), n=6, seed=123)
    data = json.loads(open(path).read())
    assert {"images", "annotations", "categories"} <= data.keys()
    cats = data["categories"]
    assert len(cats) == 30 and [c["id"] for c in cats] == list(range(1, 31))
    assert {c["name"] for c in cats} == set(S.CAPTIONS)
    assert len(data["images"]) == 6
    ids = {im["id"] for im in data["images"]}
    for im in data["images"]:
        with Image.open(tmp_path / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"])
    for i, im in enumerate(data["images"]):
        sc = S.make_scene(123, i)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == len(sc.objects)
        for a, o in zip(anns, sc.objects, strict=True):
            x, y, w, h = a["bbox"]
            assert (x, y, x + w, y + h) == o.box  # xywh
            assert cats[a["category_id"] - 1]["name"] == o.label
            assert a["iscrowd"] == 0 and a["area"] == o.area
    assert {a["image_id"] for a in data["annotations"]} <= ids
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_cli_export_and_grid(tmp_path):
    assert S.main(["export", "--out", str(tmp_path / "set"), "--n", "3", "--seed", "5"]) == 0
    assert len(list((tmp_path / "set" / "images").glob("*.png"))) == 3
    assert S.main(["grid", "--out", str(tmp_path / "g.png"), "--n", "4", "--seed", "1"]) == 0
    with Image.open(tmp_path / "g.png") as g:
        assert g.size == (4 * 224, 224)
