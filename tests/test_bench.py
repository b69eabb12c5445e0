"""Benchmark smoke test: loose ratio checks that catch a 2x regression, not precise timing."""

import pytest

from handler.benchmark import run_benchmark


@pytest.mark.slow
def test_benchmark_ratios_are_sane(tiny_rn128, photo):
    result = run_benchmark(tiny_rn128, photo, topk=64, batch_size=32, repeats=3, prompt_counts=(1, 4))
    ratios = result.ratios()
    # randomly initialized: some CAM channels are constant and share one all-zero mask
    assert 0 < result.passes["gscorecam"] <= 64 and 128 < result.passes["scorecam"] <= 256
    assert result.passes["gradcam"] == 0 and result.floor_folded_ms > 0 and result.floor_all_folded_ms > 0
    # The masked passes are the whole cost: gScoreCAM within 2x of encoding its k masked images.
    assert ratios["gscorecam/floor"] < 2.5, result.table()  # tiny model: fixed costs weigh more than on RN50
    assert ratios["scorecam/floor"] < 2.0, result.table()
    # Ahead of pytorch-grad-cam, with heatmaps that agree.
    assert ratios["scorecam/pytorch-grad-cam"] < 1.0, result.table()
    assert result.peer_agreement["ScoreCAM"] >= 0.99 and result.peer_agreement["GradCAM"] >= 0.99
    # Prompts of one image share passes: 4 prompts cost far less than 4 calls.
    assert ratios["4 prompts/1 prompt"] < 3.0, result.table()
    assert "| ours: gscorecam |" in result.table() and result.peak_memory_mb > 0
    assert result.to_json()["ratios"] == ratios


def test_k_sweep_reuses_the_default_k_measurement(tiny_rn128, photo):
    messages = []
    result = run_benchmark(tiny_rn128, photo, topk=16, batch_size=16, repeats=1, methods=("gscorecam",), peer=(),
                           prompt_counts=(), progress=messages.append, k_sweep=(8, 16))
    assert result.k_sweep_ms[16] == result.ms["gscorecam"] and result.k_sweep_floor_ms[16] == result.floor_folded_ms
    assert result.k_sweep_ms[8] > 0 and result.k_sweep_floor_ms[8] > 0
    assert "ours: gscorecam, k=8" in messages and "ours: gscorecam, k=16" not in messages


def test_heatmap_agreement_handles_flat_maps():
    import numpy as np

    from handler.benchmark import heatmap_agreement

    ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert heatmap_agreement(ramp, 2 * ramp + 1) == pytest.approx(1.0)
    assert heatmap_agreement(ramp, -ramp) == pytest.approx(-1.0)
    assert heatmap_agreement(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert heatmap_agreement(np.zeros((4, 4)), ramp) == 0.0


def test_table_lists_every_measurement():
    from handler.benchmark import BenchResult

    r = BenchResult("m", "cpu", 64, 256, 64, 32, 2, 3, ms={"gscorecam": 110.0}, passes={"gscorecam": 64},
                    floor_ms=100.0, peer_ms={"ScoreCAM": 500.0}, prompt_scaling_ms={1: 110.0, 16: 330.0})
    assert r.ratios() == {"gscorecam/floor": pytest.approx(1.1), "16 prompts/1 prompt": pytest.approx(3.0)}
    assert "| floor: k=64 masked images, plain batches | 100.0 | 64 |" in r.table()


def test_k_sweep_rows_and_plot(tmp_path):
    from handler.benchmark import BenchResult, plot

    r = BenchResult("m", "cpu", 64, 256, 64, 32, 2, 3, prompt_scaling_ms={1: 200.0, 4: 400.0, 16: 900.0},
                    k_sweep_ms={10: 50.0, 64: 210.0}, k_sweep_floor_ms={10: 40.0, 64: 190.0})
    assert "| ours: gscorecam, k=10 (floor 40.0) | 50.0 | |" in r.table()
    plot(r, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
