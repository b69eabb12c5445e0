#!/usr/bin/env python
"""Train the embedded demo CLIP on generated scenes (handler/scenes.py), on CPU.

The model is an open_clip CLIP: a ModifiedResNet vision tower (width 16, one block per stage) at 224 px, so the
CAM layer (layer4) is 7x7 with 512 channels like CLIP RN50's, and a 2-layer text tower with context length 16.

Training data: a pool of generated scenes (seed --seed, indices 0..pool-1), each resized as a whole to 224x224
(bicubic, aspect ratio not kept: exactly the serving preprocessing), re-used with the 8 flips/rotations of the square.
The captions are the 30 ``a {colour} {shape}`` pairs; each image is scored against all 30 at every step, and every
object present in the image is a positive (so identical captions in a batch are never false negatives):

* a sigmoid (multi-label) loss on ``logit_scale * cos + bias`` for every (image, caption) pair;
* a multi-positive softmax loss image -> 30 captions (probability mass on the present objects);
* a multi-positive softmax loss caption -> images of the batch (images that contain it are positives).

30% of the images (--p-mask) are multiplied by a random smooth mask (in normalised space, or on the raw pixels) like the
masked inputs of ScoreCAM; an object stays a positive if it is mostly visible, becomes a negative if it is mostly
hidden, and is ignored in between. This teaches the scores of masked images to follow the visible objects, which is
what the score-based CAMs measure.

Training-only terms (nothing of them is saved): auxiliary linear heads on the image embedding for the 30 pairs and for
the 5 shapes regardless of colour (colour is learned in a few hundred steps, shape takes thousands: the heads keep a
direct shape signal on the image features while the text tower catches up), and a penalty on caption-embedding
cosines above 0.3 (the text tower starts with every caption at cosine ~0.99). The first 75% of the schedule trains on
128x128 crops of the 224x224 images, 80% of them centred near an object (three times cheaper per image; the attention
pool's positional embedding is resized to the 4x4 grid), the rest on whole images at the serving resolution.

Deterministic for a given --seed and thread count. Writes <out>/demo_clip.json (open_clip local-dir layout with a
"gscorecam" section) and <out>/demo_clip.safetensors (fp16 state dict).

    python scripts/train_demo_clip.py --out model_store/demo --probe-every 200   # the committed weights (~43 min)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from handler import scenes as S  # noqa: E402

IMAGE_SIZE = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CAM_CHANNELS = MODEL_CFG["vision_cfg"]["width"] * 32  # ModifiedResNet layer4 output channels
DEFAULT_TOPK = round(CAM_CHANNELS * 0.1)  # 51


def full_config(topk: int = DEFAULT_TOPK) -> dict:
    return {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {
            "size": IMAGE_SIZE,
            "mode": "RGB",
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bicubic",
            "resize_mode": "squash",
        },
        "gscorecam": {"topk": topk},
    }


def build_model(seed: int = 0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**json.loads(json.dumps(MODEL_CFG)))


def attnpool_any_size(pool, x):
    """open_clip AttentionPool2d.forward with the positional embedding resized to the actual grid (crops)."""
    h, w = x.shape[-2:]
    pe = pool.positional_embedding
    n = round((pe.shape[0] - 1) ** 0.5)
    if (h, w) != (n, n):
        grid = pe[1:].reshape(n, n, -1).permute(2, 0, 1)[None]
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(h * w, -1)
        pe = torch.cat([pe[:1], grid])
    x = x.reshape(x.shape[0], x.shape[1], h * w).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pe[:, None, :].to(x.dtype)
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False,
    )
    return x[0]


def tokenize(texts):
    import open_clip

    return open_clip.tokenize(list(texts), context_length=MODEL_CFG["text_cfg"]["context_length"])


# ---------------------------------------------------------------------------------------------------------------------
# data


def _render(args):
    seed, start, n = args
    imgs = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    objs = np.full((n, 5), -1, np.int16)  # pair index of mask value k+1
    for j in range(n):
        sc = S.make_scene(seed, start + j)
        imgs[j] = np.asarray(sc.image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
        masks[j] = np.asarray(Image.fromarray(sc.mask).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST))
        for k, o in enumerate(sc.objects):
            objs[j, k] = o.index
    return imgs, masks, objs


def make_pool(seed: int, n: int, workers: int = 2, cache_dir: str | None = "/tmp"):
    path = os.path.join(cache_dir, f"demo_pool_s{seed}_n{n}.npz") if cache_dir else None
    if path and os.path.exists(path):
        d = np.load(path)
        return d["imgs"], d["masks"], d["objs"]
    chunk = 250
    jobs = [(seed, s, min(chunk, n - s)) for s in range(0, n, chunk)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = list(tqdm(pool.imap(_render, jobs), total=len(jobs), desc="generating scenes", unit="chunk"))
    imgs, masks, objs = (np.concatenate([p[i] for p in parts]) for i in range(3))
    if path:
        np.savez(path, imgs=imgs, masks=masks, objs=objs)
    return imgs, masks, objs


def to_tensor(imgs_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float32."""
    x = torch.as_tensor(imgs_u8).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_masks(g: torch.Generator, b: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(b, 1, S, S) smooth masks in [0, 1], blob-like like upsampled CAM channels."""
    cells = torch.randint(2, 8, (b,), generator=g)
    thr = torch.rand(b, 1, 1, 1, generator=g) * 0.6 + 0.2
    sharp = torch.rand(b, 1, 1, 1, generator=g) * 12 + 4
    u_all = torch.rand(b, 1, 7, 7, generator=g)
    out = torch.empty(b, 1, size, size)
    for c in cells.unique().tolist():
        sel = (cells == c).nonzero().flatten()
        m = torch.sigmoid((u_all[sel, :, :c, :c] - thr[sel]) * sharp[sel])
        out[sel] = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    lo = out.amin(dim=(1, 2, 3), keepdim=True)
    hi = out.amax(dim=(1, 2, 3), keepdim=True)
    return (out - lo) / (hi - lo + 1e-6)


def make_batch(pool, idx: np.ndarray, g: torch.Generator, p_mask: float, crop: int = IMAGE_SIZE, obj_crop: float = 0.0):
    """Images (B,3,c,c) normalised (channels_last), targets (B,30) float, valid (B,30) bool.

    crop < IMAGE_SIZE: random crops of the 224x224 images (objects keep their serving scale); an object's
    visibility is then the fraction of its pixels inside the crop (times the random mask, if any).
    """
    imgs, masks, objs = pool
    x_u8 = torch.from_numpy(imgs[idx]).permute(0, 3, 1, 2)  # B,3,H,W uint8
    lm = torch.from_numpy(masks[idx])  # B,H,W
    ob = torch.from_numpy(objs[idx].astype(np.int64))  # B,5
    b = len(idx)
    # dihedral augmentation (the objects are rotated at random anyway)
    t = torch.randint(0, 8, (b,), generator=g)
    for tt in t.unique().tolist():
        sel = (t == tt).nonzero().flatten()
        xi, mi = x_u8[sel], lm[sel]
        if tt & 1:
            xi, mi = xi.flip(-1), mi.flip(-1)
        if tt & 2:
            xi, mi = xi.flip(-2), mi.flip(-2)
        if tt & 4:
            xi, mi = xi.transpose(-1, -2), mi.transpose(-1, -2)
        x_u8[sel], lm[sel] = xi.contiguous(), mi.contiguous()
    oh_full = F.one_hot(lm[:, ::2, ::2].long(), 6)[..., 1:].float()  # B,h,w,5 (2x subsampled)
    areas = oh_full.sum((1, 2))  # B,5
    if crop < IMAGE_SIZE:
        offs = torch.randint(0, IMAGE_SIZE - crop + 1, (b, 2), generator=g)
        if obj_crop > 0:  # centre most crops near a random object of the image (shapes need examples)
            coords = torch.arange(0, IMAGE_SIZE, 2, dtype=torch.float32)
            cy = (oh_full.sum(2) * coords[None, :, None]).sum(1) / areas.clamp(min=1)  # B,5
            cx = (oh_full.sum(1) * coords[None, :, None]).sum(1) / areas.clamp(min=1)
            present = (ob >= 0).float()
            k = torch.multinomial(present + 1e-6, 1, generator=g)[:, 0]
            centre = torch.stack([cy[torch.arange(b), k], cx[torch.arange(b), k]], 1)
            jitter = (torch.rand(b, 2, generator=g) - 0.5) * (crop / 2)
            centred = (centre - crop / 2 + jitter).round().long().clamp(0, IMAGE_SIZE - crop)
            use = torch.rand(b, generator=g) < obj_crop
            offs = torch.where(use[:, None], centred, offs)
        x_u8 = torch.stack([x_u8[i, :, oy : oy + crop, ox : ox + crop] for i, (oy, ox) in enumerate(offs.tolist())])
        lm = torch.stack([lm[i, oy : oy + crop, ox : ox + crop] for i, (oy, ox) in enumerate(offs.tolist())])
        # crop offsets are random: align the 2x subsampling of the crop with the full image's
        lm_sub = torch.stack([lm[i, oy % 2 :: 2, ox % 2 :: 2] for i, (oy, ox) in enumerate(offs.tolist())])
    else:
        lm_sub = lm[:, ::2, ::2]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = (x_u8.float() / 255.0 - mean) / std
    n_cls = len(S.PAIRS)
    use_mask = torch.rand(b, generator=g) < p_mask
    inside = F.one_hot(lm_sub.long(), 6)[..., 1:].sum((1, 2)).float()  # B,5
    vis = inside / areas.clamp(min=1)
    sel = use_mask.nonzero().flatten()
    if len(sel):
        m = random_masks(g, len(sel), crop)
        raw = torch.rand(len(sel), generator=g) < 0.5  # mask raw pixels (black) or normalised values (mean colour)
        black = -mean / std
        xs = x[sel]
        x[sel] = torch.where(raw.view(-1, 1, 1, 1), xs * m + black * (1 - m), xs * m)
        # visibility of each object under its mask (2x subsampled grid, aligned with the crop's)
        oh = F.one_hot(lm_sub[sel].long(), 6)[..., 1:].float()  # B',h,w,5
        ms = torch.stack([m[j, 0, oy % 2 :: 2, ox % 2 :: 2] for j, (oy, ox) in
                          enumerate(offs[sel].tolist() if crop < IMAGE_SIZE else [(0, 0)] * len(sel))])
        vis[sel] = (oh * ms[..., None]).sum((1, 2)) / areas[sel].clamp(min=1)
    present = ob >= 0
    target = torch.zeros(b, n_cls)
    valid = torch.ones(b, n_cls, dtype=torch.bool)
    cls = ob.clamp(min=0)
    pos = present & (vis > 0.6)
    amb = present & (vis > 0.25) & (vis <= 0.6)
    rows = torch.arange(b)[:, None].expand_as(cls)
    target[rows[pos], cls[pos]] = 1.0
    valid[rows[amb], cls[amb]] = False
    return x.contiguous(memory_format=torch.channels_last), target, valid


def loss_fn(img_f, txt_f, scale, bias, target, valid):
    logits = scale * img_f @ txt_f.t()  # B, 30
    # sigmoid multi-label loss on every valid pair
    bce = F.binary_cross_entropy_with_logits(logits + bias, target, reduction="none")
    l_sig = (bce * valid).sum() / valid.sum().clamp(min=1) * 4.0
    # multi-positive softmax, image -> captions
    neg_inf = torch.finfo(logits.dtype).min
    lv = logits.masked_fill(~valid, neg_inf)
    pos = (target > 0) & valid
    has = pos.any(1)
    l_i2t = (lv.logsumexp(1) - lv.masked_fill(~pos, neg_inf).logsumexp(1))[has].mean() if has.any() else logits.sum() * 0
    # multi-positive softmax, caption -> images of the batch
    colhas = pos.any(0)
    lt = lv.t()
    l_t2i = (lt.logsumexp(1) - lt.masked_fill(~pos.t(), neg_inf).logsumexp(1))[colhas].mean()
    return l_sig + 0.5 * (l_i2t + l_t2i), logits


# ---------------------------------------------------------------------------------------------------------------------
# evaluation (retrieval here; localization is measured with the core by scripts/demo_quality.py)


@torch.no_grad()
def eval_retrieval(model, seed: int, n: int, batch: int = 100) -> dict:
    model.eval()
    txt = F.normalize(model.encode_text(tokenize(S.CAPTIONS)), dim=-1)
    hits, hits1, n1 = 0, 0, 0
    for s in range(0, n, batch):
        imgs, _, objs = _render((seed, s, min(batch, n - s)))
        f = F.normalize(model.encode_image(to_tensor(imgs).contiguous(memory_format=torch.channels_last)), dim=-1)
        best = (f @ txt.t()).argmax(1).numpy()
        for b, o in zip(best, objs, strict=True):
            present = set(int(v) for v in o if v >= 0)
            ok = int(b) in present
            hits += ok
            if len(present) == 1:
                n1 += 1
                hits1 += ok
    return {"top1_present": hits / n, "top1_single": hits1 / max(1, n1), "n": n, "n_single": n1}


def render_probe(seed: int, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """n one-object scenes (seed), preprocessed once: the probe of --probe-every."""
    scenes = S.make_scenes(n, seed, n_objects=1)
    imgs = np.stack([np.asarray(sc.image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)) for sc in scenes])
    pairs = np.array([sc.objects[0].index for sc in scenes])
    return to_tensor(imgs).contiguous(memory_format=torch.channels_last), pairs


@torch.no_grad()
def probe_single(model, probe: tuple[torch.Tensor, np.ndarray]) -> dict:
    """Top-1 on one-object scenes, and how often the colour and the shape of the best caption are right."""
    was_training = model.training
    model.eval()
    x, pairs = probe
    txt = F.normalize(model.encode_text(tokenize(S.CAPTIONS)), dim=-1)
    best = (F.normalize(model.encode_image(x), dim=-1) @ txt.t()).argmax(1).numpy()
    n_shapes = len(S.SHAPES)
    model.train(was_training)
    return {"top1": float((best == pairs).mean()), "colour": float((best // n_shapes == pairs // n_shapes).mean()),
            "shape": float((best % n_shapes == pairs % n_shapes).mean())}


def save(model, out: str, topk: int = DEFAULT_TOPK) -> None:
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous().clone() for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():  # integer buffers (BatchNorm num_batches_tracked) stay as they are
        if not v.is_floating_point():
            sd[k] = v.detach().clone()
    save_file(sd, os.path.join(out, "demo_clip.safetensors"), metadata={"format": "pt", "model": "demo_clip"})
    with open(os.path.join(out, "demo_clip.json"), "w") as f:
        json.dump(full_config(topk), f, indent=2)
        f.write("\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="model_store/demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the training scenes, the init and the batch order")
    p.add_argument("--pool", type=int, default=12000, help="number of generated training scenes")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6600, help="optimizer steps (0: derive from --minutes)")
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget used to size --steps")
    p.add_argument("--max-minutes", type=float, default=43.0,
                   help="wall-time cap of the training loop; if it binds, the cosine schedule follows the clock")
    p.add_argument("--img-per-s", type=float, default=48.0, help="assumed throughput to derive --steps")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--crop", type=int, default=128, help="random crop size of the first phase (224: no crops)")
    p.add_argument("--crop-until", type=float, default=0.75, help="fraction of the schedule trained on crops")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the auxiliary 30-way image head loss")
    p.add_argument("--aux-shape-weight", type=float, default=1.0,
                   help="weight of an auxiliary 5-way multi-label shape head (shape is learned far slower than colour)")
    p.add_argument("--cam-sparsity", type=float, default=0.0,
                   help="weight of a spatial sparsity term (L1/L2 ratio per channel) on the CAM layer's maps")
    p.add_argument("--text-spread", type=float, default=10.0, help="weight of the caption-separation loss")
    p.add_argument("--obj-crop", type=float, default=0.8, help="fraction of crops centred near a random object")
    p.add_argument("--p-mask", type=float, default=0.3)
    p.add_argument("--init-from", default=None, help="a directory with demo_clip.safetensors to continue from")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-seed", type=int, default=900)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--probe-every", type=int, default=0,
                   help="every N steps, print top-1 / colour / shape accuracy on 100 one-object scenes (seed 901)")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    t_start = time.time()
    steps = a.steps or int(a.minutes * 60 * a.img_per_s / a.batch)
    print(f"config: {json.dumps(vars(a))} -> {steps} steps", flush=True)
    pool = make_pool(a.seed, a.pool, workers=a.threads)
    print(f"pool ready: {len(pool[0])} scenes ({time.time() - t_start:.0f}s)", flush=True)

    model = build_model(a.seed)
    if a.init_from:  # continue from earlier weights (fresh optimizer and schedule)
        from safetensors.torch import load_file

        state = load_file(os.path.join(a.init_from, "demo_clip.safetensors"))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        print(f"initialised from {a.init_from}", flush=True)
    model = model.to(memory_format=torch.channels_last)
    model.train()
    ap = model.visual.attnpool
    ap.forward = lambda x: attnpool_any_size(ap, x)  # same result at 224 px; resized positions on crops
    # the text tower only ever sees the 30 captions: keep the (random) token embedding fixed, so that the optimizer
    # does not touch 49k unused rows at every step
    model.token_embedding.weight.requires_grad_(False)
    bias = torch.nn.Parameter(torch.tensor(-4.0))
    # training-only auxiliary head (not saved): 30 pair logits straight from the image embedding. Its random class
    # vectors are nearly orthogonal, unlike the text tower's outputs at init (cos ~0.99), so it breaks the symmetry
    # in which the text tower ignores the shape word and the image features never separate the shapes.
    aux = torch.nn.Linear(MODEL_CFG["embed_dim"], len(S.PAIRS))
    # training-only: which shapes are present, whatever their colour (6x more positives per logit than the pairs)
    aux_shape = torch.nn.Linear(MODEL_CFG["embed_dim"], len(S.SHAPES))
    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        if not p_.requires_grad:
            continue
        (no_decay if p_.ndim < 2 or "logit_scale" in n_ or "positional" in n_ else decay).append(p_)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.wd}, {"params": no_decay + [bias] + list(aux.parameters()) + list(aux_shape.parameters()), "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    cap_s = a.max_minutes * 60 if a.max_minutes else float("inf")

    def progress(step, elapsed):
        # step-based (deterministic) unless the wall-time cap binds first: then the cosine follows the clock
        return max(step / steps, elapsed / cap_s)

    def lr_at(step, prog):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        return a.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    tokens = tokenize(S.CAPTIONS)
    cam_maps: dict[str, torch.Tensor] = {}
    if a.cam_sparsity:  # capture the CAM layer (layer4) output of each training forward
        model.visual.layer4.register_forward_hook(lambda _m, _i, out: cam_maps.__setitem__("a", out))
    g = torch.Generator().manual_seed(a.seed + 1)
    rng = np.random.default_rng(a.seed + 2)
    order = rng.permutation(len(pool[0]))
    pos = 0
    t0 = time.time()
    seen = 0
    ema = None
    bar = tqdm(range(steps), desc="train", unit="step", mininterval=5)
    capped = False
    probe = None
    for step in bar:
        prog = progress(step, time.time() - t0)
        if prog >= 1.0:
            capped = True
            break
        if pos + a.batch > len(order):
            order, pos = rng.permutation(len(pool[0])), 0
        idx = np.sort(order[pos : pos + a.batch])
        pos += a.batch
        crop = a.crop if prog < a.crop_until else IMAGE_SIZE
        x, target, valid = make_batch(pool, idx, g, a.p_mask, crop, a.obj_crop)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, prog)
        raw = model.encode_image(x)
        img_f = F.normalize(raw, dim=-1)
        txt_f = F.normalize(model.encode_text(tokens), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        loss, logits = loss_fn(img_f, txt_f, scale, bias, target, valid)
        if a.aux_weight:
            aux_bce = F.binary_cross_entropy_with_logits(aux(img_f * 10), target, reduction="none")
            loss = loss + a.aux_weight * (aux_bce * valid).sum() / valid.sum().clamp(min=1) * 4.0
        if a.aux_shape_weight:
            n_col, n_shp = len(S.COLOUR_NAMES), len(S.SHAPES)
            shape_target = target.view(-1, n_col, n_shp).amax(1)
            shape_valid = valid.view(-1, n_col, n_shp).all(1)
            shp_bce = F.binary_cross_entropy_with_logits(aux_shape(img_f * 10), shape_target, reduction="none")
            loss = loss + a.aux_shape_weight * (shp_bce * shape_valid).sum() / shape_valid.sum().clamp(min=1) * 4.0
        if a.cam_sparsity:
            # scale-free spatial sparsity of each channel's map: L1/L2 over the grid is 1 for a one-cell map and
            # sqrt(h*w) for a flat one; sharper maps give tighter CAM boxes (the grid is only 7x7 at 224 px)
            maps = cam_maps["a"].float().flatten(2)  # B, N, h*w (>= 0 after the ReLU)
            l2 = maps.pow(2).sum(-1).sqrt()
            live = l2 > 1e-3
            ratio = maps.sum(-1) / l2.clamp(min=1e-3) / math.sqrt(maps.shape[-1])
            loss = loss + a.cam_sparsity * ratio[live].mean()
        if a.text_spread:  # keep the 30 caption embeddings apart
            sim = txt_f @ txt_f.t() - torch.eye(len(txt_f))
            loss = loss + a.text_spread * sim.clamp(min=0.3).sub(0.3).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seen += len(idx)
        ema = float(loss) if ema is None else 0.98 * ema + 0.02 * float(loss)
        with torch.no_grad():
            pos_m = (target > 0) & valid
            best = logits.masked_fill(~valid, -1e9).argmax(1)
            has = pos_m.any(1)
            acc = float(pos_m[torch.arange(len(best)), best][has].float().mean()) if has.any() else 0.0
        bar.set_postfix(px=x.shape[-1], loss=f"{ema:.3f}", acc=f"{acc:.2f}", scale=f"{float(scale):.1f}",
                        img_s=f"{seen / (time.time() - t0):.1f}", refresh=False)
        if a.probe_every and (step + 1) % a.probe_every == 0:
            if probe is None:
                probe = render_probe(a.eval_seed + 1, 100)
            print(f"probe step {step + 1} elapsed {time.time() - t0:.0f}s one-object: {json.dumps(probe_single(model, probe))}",
                  flush=True)
        if a.ckpt_every and (step + 1) % a.ckpt_every == 0:
            save(model, os.path.join("/tmp", "demo_clip_ckpt"))
            print(f"step {step + 1}/{steps} px {x.shape[-1]} loss {ema:.4f} acc {acc:.2f} scale {float(scale):.1f} "
                  f"{seen / (time.time() - t0):.1f} img/s elapsed {time.time() - t_start:.0f}s", flush=True)
    bar.close()
    train_s = time.time() - t0
    model.eval()
    save(model, a.out)
    res = eval_retrieval(model, a.eval_seed, a.eval_n)
    steps_done = seen // a.batch
    if capped:
        print(f"wall-time cap of {a.max_minutes} min reached after {steps_done} of {steps} steps", flush=True)
    print(f"trained {steps_done} steps, {seen} images in {train_s:.0f}s ({seen / train_s:.1f} img/s); "
          f"total {time.time() - t_start:.0f}s", flush=True)
    print(f"retrieval on {a.eval_n} fresh scenes (seed {a.eval_seed}): {json.dumps(res)}", flush=True)
    print(f"wrote {a.out}/demo_clip.json and {a.out}/demo_clip.safetensors", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
