"""Box extraction on synthetic heatmaps (pure functions, tiny arrays)."""

import cv2
import numpy as np
import pytest

from handler.boxes import box_iou, largest_component_box, otsu_box, otsu_threshold, threshold_box


def blob(shape, center, radius, value=1.0):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.where((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2, value, 0.0).astype(np.float32)


def test_one_blob_gives_its_tight_box():
    heat = blob((40, 60), (20, 30), 5)
    assert otsu_box(heat) == (25, 15, 36, 26)  # x0, y0, x1 (exclusive), y1 (exclusive)


def test_two_blobs_the_larger_wins_even_when_dimmer():
    heat = blob((50, 80), (10, 10), 3, value=1.0) + blob((50, 80), (30, 55), 9, value=0.8)
    assert otsu_box(heat) == (46, 21, 65, 40)


def test_diagonal_pixels_are_one_component():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # 8-connected chain
    mask[5, 0] = True
    assert largest_component_box(mask) == (1, 1, 4, 4)


def test_empty_and_constant_heatmaps_give_the_whole_image():
    assert otsu_box(np.zeros((30, 50), np.float32)) == (0, 0, 50, 30)
    assert otsu_box(np.full((30, 50), 0.7, np.float32)) == (0, 0, 50, 30)
    assert threshold_box(np.zeros((30, 50), np.float32), 0.5) == (0, 0, 50, 30)
    assert largest_component_box(np.zeros((4, 4), bool)) is None


def test_non_square_heatmap_boxes_use_x_for_columns():
    heat = np.zeros((20, 100), np.float32)
    heat[5:9, 70:95] = 1.0
    assert otsu_box(heat) == (70, 5, 95, 9)
    assert otsu_box(heat.T) == (5, 70, 9, 95)


def test_threshold_box_follows_tau():
    heat = blob((40, 40), (20, 20), 12, 0.4) + blob((40, 40), (20, 20), 4, 0.6)
    assert threshold_box(heat, 0.3) == (8, 8, 33, 33)
    assert threshold_box(heat, 0.9) == (16, 16, 25, 25)


@pytest.mark.parametrize("seed", range(5))
def test_otsu_threshold_matches_opencv(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(60, 15, 500), rng.normal(180, 25, 300)]).clip(0, 255).astype(np.uint8)
    image = values.reshape(20, 40)
    expected, _ = cv2.threshold(image, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert otsu_threshold(image) == int(expected)


def test_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
