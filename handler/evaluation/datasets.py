"""Detection datasets for the zero-shot evaluation, as lists of :class:`Sample`.

One sample is one image with the categories present in it (:class:`Target`: prompt + ground-truth boxes of that
category). Boxes are converted to ``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive.

* COCO instances JSON (:func:`load_coco`): COCO val2017, LVIS (``kind="lvis"``: images given by ``coco_url``,
  names with underscores), the demo scenes' export, and PartImageNet's COCO-style annotations
  (:func:`load_partimagenet`: prompt ``"{class} {part}"`` from the category's supercategory and name).
* Choe et al.'s WSOL metadata layout (:func:`load_wsol`), e.g. ImageNet-v2: ``image_ids.txt``,
  ``class_labels.txt`` (``path,label``), ``localization.txt`` (``path,x0,y0,x1,y1``, one line per box) and
  optionally ``image_sizes.txt`` (``path,w,h``); prompts from the ImageNet class names.

Prompt templates are ``str.format`` strings over ``name`` (== ``part``), ``supercategory`` (== ``class``) and
``id``, e.g. ``"a photo of a {name}."``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

KINDS = ("coco", "partimagenet", "lvis", "wsol")
DEFAULT_TEMPLATES = {"coco": "{name}", "lvis": "{name}", "partimagenet": "{class} {part}", "wsol": "{name}"}


@dataclass
class Target:
    """One category present in an image: its prompt and all its ground-truth boxes there."""

    category_id: int
    name: str
    prompt: str
    boxes: list[tuple[float, float, float, float]]


@dataclass
class Sample:
    image_id: str
    path: Path
    width: int
    height: int
    targets: list[Target] = field(default_factory=list)
    n_objects: int = 0  # objects in the image, all categories (paper Fig. 2's grouping)

    def load_image(self) -> Image.Image:
        with Image.open(self.path) as im:
            return im.convert("RGB")


def format_prompt(template: str, name: str, supercategory: str = "", category_id: int = 0) -> str:
    fields = {"name": name, "part": name, "supercategory": supercategory, "class": supercategory, "id": category_id}
    try:
        return " ".join(template.format(**fields).split())
    except (KeyError, IndexError) as e:
        raise ValueError(f"bad prompt template {template!r}: unknown field {e}") from None


def _clean_name(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split())


def _resolve_image(images_dir: Path, entry: dict) -> Path:
    names = []
    if entry.get("file_name"):
        names.append(str(entry["file_name"]))
    if entry.get("coco_url"):
        names.append(str(entry["coco_url"]).rsplit("/", 1)[-1])
    for n in names:
        for cand in (images_dir / n, images_dir / Path(n).name):
            if cand.exists():
                return cand
    return images_dir / (names[0] if names else f"{entry['id']}.jpg")


def load_coco(annotations: str | Path, images: str | Path | None = None, template: str | None = None,
              kind: str = "coco", include_crowd: bool = False, categories: Sequence[str] | None = None,
              limit: int | None = None) -> list[Sample]:
    """Loads a COCO-style instances JSON (COCO, LVIS, PartImageNet, the demo scenes' export).

    ``images`` defaults to ``<annotations dir>/images`` if it exists, else the annotations' directory. Crowd
    annotations are dropped unless ``include_crowd``. ``categories`` restricts to those category names. Images
    without (kept) annotations are skipped; samples are sorted by image id; ``limit`` keeps the first N."""
    ann_path = Path(annotations)
    data = json.loads(ann_path.read_text())
    if images is None:
        images = ann_path.parent / "images" if (ann_path.parent / "images").is_dir() else ann_path.parent
    images_dir = Path(images)
    template = template or DEFAULT_TEMPLATES.get(kind, "{name}")
    cats = {}
    for c in data.get("categories", []):
        name = _clean_name(c["name"])
        sup = _clean_name(c.get("supercategory", ""))
        cats[c["id"]] = (name, sup)
    wanted = None if categories is None else {_clean_name(n) for n in categories}
    by_image: dict = defaultdict(lambda: defaultdict(list))
    n_objects: dict = defaultdict(int)
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0) and not include_crowd:
            continue
        if a["category_id"] not in cats:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 0 or h <= 0:
            continue
        n_objects[a["image_id"]] += 1
        if wanted is not None and cats[a["category_id"]][0] not in wanted:
            continue
        by_image[a["image_id"]][a["category_id"]].append((x, y, x + w, y + h))
    samples = []
    for entry in sorted(data.get("images", []), key=lambda e: (str(type(e["id"])), e["id"])):
        per_cat = by_image.get(entry["id"])
        if not per_cat:
            continue
        targets = []
        for cid in sorted(per_cat):
            name, sup = cats[cid]
            targets.append(Target(cid, name, format_prompt(template, name, sup, cid), per_cat[cid]))
        path = _resolve_image(images_dir, entry)
        width, height = entry.get("width"), entry.get("height")
        if not width or not height:
            with Image.open(path) as im:
                width, height = im.size
        samples.append(Sample(str(entry["id"]), path, int(width), int(height), targets, n_objects[entry["id"]]))
        if limit is not None and len(samples) >= limit:
            break
    return samples


def load_partimagenet(annotations: str | Path, images: str | Path | None = None, template: str | None = None,
                      **kw) -> list[Sample]:
    """PartImageNet's COCO-style annotations; prompt ``"{class} {part}"`` (supercategory + part name)."""
    return load_coco(annotations, images, template or DEFAULT_TEMPLATES["partimagenet"], kind="partimagenet", **kw)


def load_lvis(annotations: str | Path, images: str | Path | None = None, template: str | None = None,
              **kw) -> list[Sample]:
    """LVIS v1 annotations (COCO layout; images found by the basename of ``coco_url``)."""
    return load_coco(annotations, images, template, kind="lvis", **kw)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (open_clip's zero-shot list, as used for CLIP's ImageNet prompts)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _read_csv_lines(path: Path) -> list[list[str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            out.append([p.strip() for p in line.split(",")])
    return out


def load_wsol(metadata: str | Path, images: str | Path, template: str | None = None,
              class_names: Sequence[str] | None = None, inclusive_boxes: bool = True,
              limit: int | None = None) -> list[Sample]:
    """Choe et al.'s WSOL metadata (e.g. ``metadata/ILSVRC/test`` for ImageNet-v2 images under ``images``).

    ``localization.txt`` boxes are ImageNet's inclusive pixel boxes; ``inclusive_boxes`` adds 1 to x1/y1 to make
    them exclusive like ours. ``class_names`` defaults to the ImageNet class names."""
    meta = Path(metadata)
    root = Path(images)
    names = list(class_names) if class_names is not None else imagenet_class_names()
    template = template or DEFAULT_TEMPLATES["wsol"]
    ids = [line.strip() for line in (meta / "image_ids.txt").read_text().splitlines() if line.strip()]
    labels = {p[0]: int(p[1]) for p in _read_csv_lines(meta / "class_labels.txt")}
    boxes: dict[str, list] = defaultdict(list)
    add = 1.0 if inclusive_boxes else 0.0
    for p in _read_csv_lines(meta / "localization.txt"):
        x0, y0, x1, y1 = (float(v) for v in p[1:5])
        boxes[p[0]].append((x0, y0, x1 + add, y1 + add))
    sizes = {}
    if (meta / "image_sizes.txt").exists():
        sizes = {p[0]: (int(p[1]), int(p[2])) for p in _read_csv_lines(meta / "image_sizes.txt")}
    samples = []
    for image_id in ids:
        if image_id not in labels or not boxes.get(image_id):
            continue
        label = labels[image_id]
        if not 0 <= label < len(names):
            raise ValueError(f"{image_id}: class label {label} outside the {len(names)} class names")
        path = root / image_id
        if image_id in sizes:
            w, h = sizes[image_id]
        else:
            with Image.open(path) as im:
                w, h = im.size
        name = _clean_name(names[label])
        target = Target(label, name, format_prompt(template, name, "", label), boxes[image_id])
        samples.append(Sample(image_id, path, w, h, [target], len(boxes[image_id])))
        if limit is not None and len(samples) >= limit:
            break
    return samples


def load_dataset(kind: str, annotations: str | Path, images: str | Path | None = None,
                 template: str | None = None, limit: int | None = None, **kw) -> list[Sample]:
    """Dispatch on ``kind`` (one of :data:`KINDS`); for ``wsol``, ``annotations`` is the metadata directory."""
    if kind == "wsol":
        if images is None:
            raise ValueError("the wsol layout needs the images root")
        return load_wsol(annotations, images, template, limit=limit, **kw)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; one of {KINDS}")
    return load_coco(annotations, images, template, kind=kind, limit=limit, **kw)
