"""The explainer on tiny open_clip models: parity with pytorch-grad-cam, gScoreCAM's definition,
shared work between prompts and requests, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from handler import Explainer, ExplainerConfig, InputError, load_model
from handler.benchmark import ClipAsClassifier, capture_cam_layer
from handler.cams import minmax


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def upsample_cam(cam: np.ndarray, size: int) -> np.ndarray:
    """Our (h, w) cam at the input size, as pytorch-grad-cam returns it (cv2.resize == half-pixel bilinear)."""
    t = torch.from_numpy(cam)[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def vit_reshape(model):
    def reshape(tokens):
        return model.activation_maps(tokens)

    return reshape


PEERS = {
    "scorecam": "ScoreCAM",
    "gradcam": "GradCAM",
    "gradcampp": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
}


@pytest.mark.parametrize("tower", ["tiny_rn128", "tiny_vit"])
@pytest.mark.parametrize("method", sorted(PEERS))
def test_parity_with_pytorch_grad_cam(request, tower, method, photo):
    assert_parity(request.getfixturevalue(tower), method, photo)


@pytest.mark.parametrize("method", ["scorecam", "gradcam"])
def test_parity_at_another_cam_layer(tiny_rn128, method, photo):
    assert_parity(tiny_rn128, method, photo, cam_layer="layer3")


def assert_parity(model, method: str, photo, cam_layer: str | None = None) -> None:
    """Our CAMs against pytorch-grad-cam's on the same model, CAM layer and prompts (r >= 0.99 per prompt)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tower = f"{model.name} at {cam_layer or 'the default layer'}"
    prompts = ["a red disc", "a blue disc", "a photo", "green"]
    config = ExplainerConfig(method=method, batch_size=16, cam_layer=cam_layer)
    ours = Explainer.from_config(model, config).explain(photo, prompts)

    peer_clip = copy.deepcopy(model.clip).requires_grad_(True)  # the peer needs autograd through the trunk
    explainer = Explainer(model)
    wrapper = ClipAsClassifier(peer_clip, explainer.text_embeddings(prompts).clone()).eval()
    if model.kind == "resnet":
        target = getattr(peer_clip.visual, cam_layer or "layer4")[-1]
    else:
        target = peer_clip.visual.transformer.resblocks[-2]
    cam_class = getattr(pytorch_grad_cam, PEERS[method])
    reshape = None if model.kind == "resnet" else vit_reshape(model)
    x = model.preprocess(photo)
    compared = 0
    with cam_class(model=wrapper, target_layers=[target], reshape_transform=reshape) as cam:
        if method == "scorecam":
            cam.batch_size = 16
        for index, result in enumerate(ours):
            theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(index)])[0]
            mine = upsample_cam(result.cam, model.image_size)
            assert mine.shape == theirs.shape
            if np.ptp(mine) == 0:  # a random model can give an all-negative map: both must then be flat
                assert np.ptp(theirs) < 1e-6, f"{method} on {tower}, prompt {index}: ours flat, theirs not"
                continue
            compared += 1
            r = pearson(mine, theirs)
            assert r >= 0.99, f"{method} on {tower}, prompt {index}: r = {r:.4f}"
    assert compared >= 2, "too few non-degenerate maps to compare"


def constant_channels(model, image) -> int:
    """How many CAM-layer channels of ``image`` are constant (their masks are all zero: one shared pass)."""
    flat = model.activation_maps(capture_cam_layer(model, image))[0].flatten(1)
    return int((flat.amax(1) == flat.amin(1)).sum())


def distinct_masks(model, image, n: int) -> int:
    constant = constant_channels(model, image)
    return n - constant + min(constant, 1)


def test_gscorecam_with_k_equal_to_n_is_scorecam(tiny_rn128, photo):
    n = 256  # width 8 ModifiedResNet: 8 * 8 * 4 channels
    full = Explainer(tiny_rn128, method="gscorecam", topk=n).explain(photo, ["a red disc"])[0]
    clamped = Explainer(tiny_rn128, method="gscorecam", topk=10_000).explain(photo, ["a red disc"])[0]
    score = Explainer(tiny_rn128, method="scorecam").explain(photo, ["a red disc"])[0]
    np.testing.assert_allclose(full.cam, score.cam, atol=1e-5)
    np.testing.assert_allclose(clamped.cam, score.cam, atol=1e-5)
    assert full.forward_passes == score.forward_passes == distinct_masks(tiny_rn128, photo, n)
    assert score.topk == n and clamped.topk == n


def test_gscorecam_with_k1_is_the_top_gradient_channel(tiny_rn128, photo):
    """Hand-checkable: softmax over one score is 1, so the CAM is that channel's normalized activation."""
    captured = {}
    handle = tiny_rn128.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    x = tiny_rn128.preprocess(photo)
    clip = copy.deepcopy(tiny_rn128.clip).requires_grad_(True)
    handle.remove()
    handle = clip.visual.layer4[-1].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        text = Explainer(tiny_rn128).text_embeddings(["a red disc"])
        score = clip.logit_scale.exp() * F.normalize(clip.encode_image(x), dim=-1) @ text.T
        (grad,) = torch.autograd.grad(score[0, 0], captured["a"])  # full backprop, no detach trick
    finally:
        handle.remove()
    top = int(grad[0].mean(dim=(1, 2)).argmax())
    expected = minmax(torch.relu(captured["a"][0, top].detach()), dims=(0, 1)).numpy()
    result = Explainer(tiny_rn128, method="gscorecam", topk=1).explain(photo, ["a red disc"])[0]
    np.testing.assert_allclose(result.cam, expected, atol=1e-5)
    assert result.forward_passes == 1 and result.topk == 1


def reference_gscorecam(model, image, prompt, k):
    """A plain, loop-by-loop gScoreCAM straight from the paper (one masked image at a time)."""
    captured = {}
    clip = copy.deepcopy(model.clip).requires_grad_(True)
    handle = clip.visual.layer4[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    text = Explainer(model).text_embeddings([prompt])
    scale = clip.logit_scale.exp()
    x = model.preprocess(image)
    score = scale * F.normalize(clip.encode_image(x), dim=-1) @ text.T
    (grad,) = torch.autograd.grad(score[0, 0], captured["a"])
    handle.remove()
    activations = captured["a"][0].detach()
    channels = torch.topk(grad[0].mean(dim=(1, 2)), k).indices
    scores = []
    with torch.no_grad():
        for c in channels:
            mask = F.interpolate(activations[c][None, None], size=x.shape[-2:], mode="bilinear", align_corners=True)
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)  # constant map: zero mask
            scores.append((scale * F.normalize(clip.encode_image(x * mask), dim=-1) @ text.T)[0, 0])
    weights = torch.softmax(torch.stack(scores), dim=0)
    cam = torch.relu((weights[:, None, None] * activations[channels]).sum(0))
    return ((cam - cam.min()) / (cam.max() - cam.min())).numpy()


def test_gscorecam_matches_a_loop_reference(tiny_rn128, photo):
    result = Explainer(tiny_rn128, method="gscorecam", topk=24, batch_size=7).explain(photo, "a blue disc")[0]
    np.testing.assert_allclose(result.cam, reference_gscorecam(tiny_rn128, photo, "a blue disc", 24), atol=1e-4)


def test_constant_maps_share_one_all_zero_pass_and_change_nothing(tiny_rn128, photo):
    """Randomly initialized ResNets have many all-zero CAM channels (ReLU): they cost one pass, not one each."""
    n = 256
    constant = constant_channels(tiny_rn128, photo)
    assert constant > 1, "precondition: the tiny model has several constant channels on this image"
    score = Explainer(tiny_rn128, method="scorecam", batch_size=32).explain(photo, "a blue disc")[0]
    assert score.forward_passes == n - constant + 1 and score.topk == n
    np.testing.assert_allclose(score.cam, reference_gscorecam(tiny_rn128, photo, "a blue disc", n), atol=1e-4)


def test_folded_batchnorm_tower_matches_the_model(tiny_rn128, photo):
    from handler.loading import fold_batchnorm

    tower = tiny_rn128.inference_tower()
    assert tower is tiny_rn128.inference_tower()  # built once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_rn128.clip.visual.modules())  # the model is untouched
    x = torch.randn(3, 3, 128, 128).contiguous(memory_format=tiny_rn128.memory_format)
    with torch.no_grad():
        np.testing.assert_allclose(tower(x).numpy(), tiny_rn128.clip.encode_image(x).numpy(), rtol=1e-4, atol=1e-5)
    folded = Explainer(tiny_rn128, method="gscorecam", topk=40).explain(photo, "a red disc")[0]
    plain = Explainer(tiny_rn128, config=ExplainerConfig(topk=40, fold_batchnorm=False)).explain(photo, "a red disc")[0]
    np.testing.assert_allclose(folded.cam, plain.cam, atol=1e-4)
    with pytest.raises(ValueError, match="no convolution before BatchNorm"):
        fold_batchnorm(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3)))


def test_vit_masked_passes_use_the_tower_itself(tiny_vit):
    assert tiny_vit.inference_tower() is tiny_vit.clip.visual


def test_several_prompts_share_passes_and_match_one_at_a_time(tiny_rn128, photo):
    prompts = ["a red disc", "a blue disc", "a green field", "a red disc"]
    explainer = Explainer(tiny_rn128, method="gscorecam", topk=40, batch_size=16)
    together = explainer.explain(photo, prompts)
    alone = [explainer.explain(photo, [p])[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        assert a.prompt == b.prompt
        assert a.score == pytest.approx(b.score, abs=1e-4)
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-4)
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-4)
    assert all(r.forward_passes == together[0].forward_passes for r in together)
    assert together[0].forward_passes < sum(r.forward_passes for r in alone)
    assert together[0].forward_passes <= 3 * 40  # duplicates and overlaps are encoded once


def test_scorecam_for_several_prompts_costs_one_prompts_passes(tiny_rn, photo):
    results = Explainer(tiny_rn, method="scorecam").explain(photo, ["a", "b", "c"])
    assert [r.forward_passes for r in results] == [distinct_masks(tiny_rn, photo, 256)] * 3


def test_requests_with_different_images_share_batches_and_match(tiny_rn, photo):
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    explainer = Explainer(tiny_rn, method="gscorecam", topk=20, batch_size=32)
    requests = [
        explainer.request(photo, ["a red disc"]),
        explainer.request(other, ["a blue disc"], method="gradcam"),
        explainer.request(photo.copy(), ["a blue disc"], topk=5),  # same pixels: shares the trunk pass
    ]
    batched = explainer.explain_requests(requests)
    separate = [
        explainer.explain(photo, ["a red disc"]),
        explainer.explain(other, ["a blue disc"], method="gradcam"),
        explainer.explain(photo, ["a blue disc"], topk=5),
    ]
    for got, want in zip(batched, separate, strict=True):
        np.testing.assert_allclose(got[0].cam, want[0].cam, atol=1e-4)
        assert got[0].method == want[0].method and got[0].topk == want[0].topk
    assert batched[1][0].forward_passes == 0 and batched[1][0].topk == 0
    # the third request's image is the first's: its passes are counted on the first request only
    assert [r[0].owns_passes for r in batched] == [True, True, False]


def test_result_fields(tiny_vit, photo):
    r = Explainer(tiny_vit, method="gscorecam", topk=8).explain(photo, ["a red disc"])[0]
    assert r.cam.shape == (4, 4) and r.cam.dtype == np.float32
    assert r.heatmap.shape == (90, 140) and r.heatmap.dtype == np.float32
    assert 0.0 <= r.heatmap.min() and r.heatmap.max() <= 1.0 and r.cam.max() == pytest.approx(1.0)
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= 140 and 0 <= y0 < y1 <= 90
    assert r.forward_passes == 8 and r.topk == 8 and r.elapsed_ms > 0 and isinstance(r.score, float)


def test_default_topk_comes_from_the_model_then_300(tiny_rn, photo):
    assert Explainer(tiny_rn).explain(photo, "x")[0].topk == 256  # 300 clamped to N
    tiny_rn.default_topk = 12
    try:
        assert Explainer(tiny_rn).explain(photo, "x")[0].topk == 12
        assert Explainer(tiny_rn, topk=5).explain(photo, "x")[0].topk == 5
    finally:
        tiny_rn.default_topk = None


def test_text_embeddings_are_cached_lru(tiny_rn):
    explainer = Explainer.from_config(tiny_rn, ExplainerConfig(text_cache_size=2))
    first = explainer.text_embeddings(["a", "b"])
    explainer.text_embeddings(["a", "c"])  # "b" is the least recently used
    assert list(explainer._text_cache) == ["a", "c"]
    assert torch.equal(explainer.text_embeddings(["a"])[0], first[0])


def test_long_prompts_are_truncated_not_errors(tiny_rn, photo):
    r = Explainer(tiny_rn, method="gradcam").explain(photo, ["word " * 100])[0]
    assert r.heatmap.shape == (90, 140)


def test_no_backward_through_the_trunk(tiny_rn128, photo):
    """The gradient pass must not differentiate the stem/layer1-3: their inputs never require grad."""
    seen = []
    hook = tiny_rn128.clip.visual.layer3.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        Explainer(tiny_rn128, method="gradcam").explain(photo, ["a red disc"])
    finally:
        hook.remove()
    assert seen == [False]


def test_cam_layer_option_picks_the_stage_and_its_grid(tiny_rn128, tiny_vit, photo):
    default = Explainer(tiny_rn128, method="gradcam").explain(photo, ["a red disc"])[0]
    finer = Explainer.from_config(tiny_rn128, ExplainerConfig(method="gradcam", cam_layer="layer3")).explain(
        photo, ["a red disc"])[0]
    assert default.cam.shape == (4, 4) and finer.cam.shape == (8, 8)  # 128 px: stride 32, then 16
    assert finer.heatmap.shape == default.heatmap.shape == (photo.height, photo.width)
    same = Explainer.from_config(tiny_rn128, ExplainerConfig(method="gradcam", cam_layer="layer4"))
    np.testing.assert_allclose(same.explain(photo, ["a red disc"])[0].cam, default.cam, atol=1e-6)
    with pytest.raises(InputError, match="cam_layer must be one of"):
        ExplainerConfig(cam_layer="layer5")
    with pytest.raises(InputError, match="only ResNet towers"):
        Explainer.from_config(tiny_vit, ExplainerConfig(cam_layer="layer3"))


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "prompts, message",
    [([], "no prompt"), (["a dog", "   "], "prompt 1 is empty"), ([""], "prompt 0 is empty"), ([3], "not a string")],
)
def test_bad_prompts_fail_before_any_pass(tiny_rn, photo, prompts, message):
    calls = []
    hook = tiny_rn.clip.visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match=message):
            Explainer(tiny_rn).explain(photo, prompts)
    finally:
        hook.remove()
    assert calls == []


@pytest.mark.parametrize("kwargs, message", [({"method": "eigencam"}, "unknown method"), ({"topk": 0}, "topk"),
                                             ({"topk": 2.5}, "topk"), ({"topk": True}, "topk")])
def test_bad_method_and_topk(tiny_rn, photo, kwargs, message):
    with pytest.raises(InputError, match=message):
        Explainer(tiny_rn).explain(photo, ["a dog"], **kwargs)
    with pytest.raises(InputError, match=message):
        Explainer(tiny_rn, **kwargs)


def test_bad_images(tiny_rn):
    explainer = Explainer.from_config(tiny_rn, ExplainerConfig(max_pixels=10_000))
    with pytest.raises(InputError, match="could not be decoded"):
        explainer.explain(b"\x89PNG garbage", ["a dog"])
    with pytest.raises(InputError, match="zero size"):
        explainer.explain(Image.new("RGB", (0, 5)), ["a dog"])
    with pytest.raises(InputError, match="over the limit"):
        explainer.explain(Image.new("RGB", (200, 200)), ["a dog"])
    with pytest.raises(InputError, match="PIL image or encoded bytes"):
        explainer.explain(np.zeros((5, 5, 3)), ["a dog"])


def test_unknown_arch_and_mismatched_checkpoint(tmp_path, config_dir, tiny_rn):
    with pytest.raises(InputError, match="unknown arch 'RN51'"):
        load_model("RN51")
    other = load_model(config_dir / "tiny_vit.json")
    path = tmp_path / "vit.pt"
    torch.save(other.clip.state_dict(), path)
    with pytest.raises(InputError, match=r"does not match the architecture: missing keys: .*visual\.attnpool"):
        load_model(config_dir / "tiny_rn.json", checkpoint=path)
    with pytest.raises(InputError, match="does not exist"):
        load_model(config_dir / "tiny_rn.json", checkpoint=tmp_path / "nope.pt")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        load_model(config_dir / "tiny_rn.json", checkpoint=tmp_path / "junk.bin")


def test_openai_tags_get_quickgelu_and_bad_tags_are_named(monkeypatch):
    import open_clip

    built = {}

    def fake_create_model(name, **kwargs):  # records what load_model asks open_clip for, downloads nothing
        built.update(kwargs, name=name)
        raise RuntimeError("no network")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    with pytest.raises(RuntimeError, match="Without a network.*checkpoint=FILE"):
        load_model("RN50", pretrained="openai")
    assert built["name"] == "RN50" and built["force_quick_gelu"] is True and built["pretrained"] == "openai"
    with pytest.raises(InputError, match="unknown pretrained tag 'nope' for RN50; open_clip has .*openai"):
        load_model("RN50", pretrained="nope")


def test_checkpoint_loads_do_not_claim_random_weights(tmp_path, config_dir, tiny_rn, caplog):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_rn.clip.state_dict().items()}, tmp_path / "w.safetensors")
    with caplog.at_level("WARNING"):
        load_model(config_dir / "tiny_rn.json", checkpoint=tmp_path / "w.safetensors")
    assert "initialized randomly" not in caplog.text
    with caplog.at_level("WARNING"):
        load_model(config_dir / "tiny_rn.json")  # truly random: open_clip's warning stays
    assert "initialized randomly" in caplog.text


def test_checkpoints_round_trip_in_both_formats(tmp_path, config_dir, tiny_rn, photo):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_rn.clip.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    want = Explainer(tiny_rn, method="gradcam").explain(photo, "a red disc")[0].cam
    for name in ("w.safetensors", "w.pt"):
        model = load_model(config_dir / "tiny_rn.json", checkpoint=tmp_path / name)
        got = Explainer(model, method="gradcam").explain(photo, "a red disc")[0].cam
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_local_dir_layout_config_carries_topk(tmp_path, config_dir):
    import json

    from tests.conftest import TINY_CONFIGS

    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"model_cfg": TINY_CONFIGS["tiny_rn"], "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3},
                                "gscorecam": {"topk": 17}}))
    model = load_model(path)
    assert model.default_topk == 17 and model.name == "wrapped"
    x = model.preprocess(Image.new("RGB", (10, 10), (255, 255, 255)))
    assert x.shape == (1, 3, 64, 64) and torch.allclose(x, torch.full_like(x, 2.0))
