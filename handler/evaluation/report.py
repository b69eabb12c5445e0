"""Reports of an evaluation run: a markdown table, CSVs and PNG plots.

``write_report(results, out_dir)`` writes

* ``results.md`` — the main table (BoxAcc, MaxBoxAccV2 with its per-delta best tau, mean IoU, pointing accuracy,
  runtime and masked passes per explanation: the paper's Table 4 columns) and the per-group tables (Fig. 2);
* ``results.csv`` (one row per method setting), ``groups.csv`` (one row per setting x group);
* ``boxacc_vs_k.png`` (gScoreCAM's k sweep, Table 1's ablation), ``iou_by_objects.png``, ``iou_by_size.png``,
  ``runtime_vs_accuracy.png``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from handler.evaluation.metrics import DELTAS, OBJECT_GROUPS, group_summary, summarize

SIZE_ORDER = ("small", "medium", "large")
OBJECT_ORDER = tuple(g[0] for g in OBJECT_GROUPS)
MAIN_COLUMNS = ("setting", "method", "topk", "n", "box_acc", "max_box_acc_v2", "boxacc_d0.3", "boxacc_d0.5",
                "boxacc_d0.7", "tau_d0.3", "tau_d0.5", "tau_d0.7", "mean_iou", "pointing_acc", "ms_per_explanation",
                "passes_per_explanation", "passes_per_call", "forward_passes_per_explanation",
                "backward_passes_per_explanation")


def summary_rows(results: dict[str, list[dict]]) -> list[dict]:
    """One row per method setting (in ``results``' order) with the dataset-level metrics."""
    rows = []
    for key, records in results.items():
        s = summarize(records)
        topks = [r.get("topk", 0) for r in records]
        row = {"setting": key, "method": records[0]["method"] if records else key.split("_k")[0],
               "topk": int(np.median(topks)) if topks else 0, "n": s["n"], "box_acc": s["box_acc"],
               "max_box_acc_v2": s["max_box_acc_v2"], "mean_iou": s["mean_iou"], "pointing_acc": s["pointing_acc"],
               "ms_per_explanation": s["ms_per_explanation"], "passes_per_explanation": s["passes_per_explanation"],
               "passes_per_call": s["passes_per_call"],
               "forward_passes_per_explanation": s["forward_passes_per_explanation"],
               "backward_passes_per_explanation": s["backward_passes_per_explanation"]}
        for d in DELTAS:
            row[f"boxacc_d{d}"] = s["max_box_acc_v2_per_delta"].get(d, float("nan"))
            row[f"tau_d{d}"] = s["best_tau"].get(d, float("nan"))
        row["objects"] = group_summary(records, "object_group")
        row["sizes"] = group_summary(records, "size_group")
        rows.append(row)
    return rows


def _pct(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: float, fmt: str = "{:.1f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _tau(row: dict, delta: float) -> str:
    """The best tau, or "–" when no tau gives a hit (the argmax of an all-zero curve means nothing)."""
    if not row[f"boxacc_d{delta}"]:
        return "–"
    return _num(row[f"tau_d{delta}"], "{:.2f}")


def markdown(rows: Sequence[dict], meta: dict | None = None) -> str:
    """The markdown report (metrics in %, times in ms)."""
    lines = []
    meta = meta or {}
    if meta:
        lines.append("Run: " + ", ".join(f"{k}={v}" for k, v in meta.items() if k != "command"))
        if meta.get("command"):
            lines += ["", "```", str(meta["command"]), "```"]
        lines.append("")
    lines += [
        "| method | k | explanations | BoxAcc (δ=0.5, Otsu) | MaxBoxAccV2 | BoxAcc δ=0.3 / 0.5 / 0.7 (best τ) "
        "| mean IoU | pointing acc | ms / explanation | masked passes / explanation | forward / backward passes "
        "per explanation |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = " / ".join(f"{_pct(r[f'boxacc_d{d}'])} ({_tau(r, d)})" for d in DELTAS)
        lines.append(
            f"| {r['method']} | {r['topk'] if r['method'] in ('gscorecam', 'scorecam') else '–'} | {r['n']} "
            f"| {_pct(r['box_acc'])} | {_pct(r['max_box_acc_v2'])} | {per} | {_pct(r['mean_iou'])} "
            f"| {_pct(r['pointing_acc'])} | {_num(r['ms_per_explanation'])} | {_num(r['passes_per_explanation'])} "
            f"| {_num(r['forward_passes_per_explanation'])} / {_num(r['backward_passes_per_explanation'], '{:.0f}')} |")
    lines += ["", "Mean IoU (%) of the Otsu box by number of objects per image and by object size "
              "(largest box of the class / image area: small < 0.33 ≤ medium < 0.67 ≤ large); n in brackets.", "",
              "| method | k | " + " | ".join(f"{g} objects" for g in OBJECT_ORDER) + " | "
              + " | ".join(SIZE_ORDER) + " |",
              "|---|---:|" + "---:|" * (len(OBJECT_ORDER) + len(SIZE_ORDER))]
    for r in rows:
        cells = [f"{_pct(r['objects'][g]['mean_iou'])} ({r['objects'][g]['n']})" for g in OBJECT_ORDER]
        cells += [f"{_pct(r['sizes'][g]['mean_iou'])} ({r['sizes'][g]['n']})" for g in SIZE_ORDER]
        k = r["topk"] if r["method"] in ("gscorecam", "scorecam") else "–"
        lines.append(f"| {r['method']} | {k} | " + " | ".join(cells) + " |")
    lines += ["", "BoxAcc and MaxBoxAccV2 as defined by Choe et al. (CVPR 2020): the box at τ is the tight box of the "
              "largest 8-connected component of the min-max normalized heatmap ≥ τ, τ ∈ {0, 0.05, …, 0.95} chosen "
              "per δ over the whole set; a hit is IoU ≥ δ with any ground-truth box of the prompted class. Runtime "
              "is the wall time of the call that explained all categories of an image, divided by their number; masked "
              "passes likewise (prompts of one image share them); forward passes add the call's one unmasked pass; "
              "backward passes are head-only, one per prompt, for the gradient methods and gScoreCAM.", ""]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MAIN_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in MAIN_COLUMNS})


def write_groups_csv(rows: Sequence[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "method", "topk", "grouping", "group", "n", "mean_iou", "box_acc"])
        for r in rows:
            for grouping, order, key in (("objects", OBJECT_ORDER, "objects"), ("size", SIZE_ORDER, "sizes")):
                for g in order:
                    v = r[key][g]
                    w.writerow([r["setting"], r["method"], r["topk"], grouping, g, v["n"], v["mean_iou"], v["box_acc"]])


# ---------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_boxacc_vs_k(rows: Sequence[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    g = sorted((r for r in rows if r["method"] == "gscorecam"), key=lambda r: r["topk"])
    if g:
        ks = [r["topk"] for r in g]
        ax.plot(ks, [100 * r["box_acc"] for r in g], "o-", label="gScoreCAM BoxAcc (δ=0.5)")
        ax.plot(ks, [100 * r["max_box_acc_v2"] for r in g], "s--", label="gScoreCAM MaxBoxAccV2")
        if len(ks) > 1 and max(ks) / max(1, min(ks)) > 8:
            ax.set_xscale("log")
    others = [r for r in rows if r["method"] != "gscorecam" and not math.isnan(r["max_box_acc_v2"])]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(others):
        ax.axhline(100 * r["max_box_acc_v2"], ls=":", lw=1.2, color=colors[(i + 2) % len(colors)],
                   label=f"{r['setting']} MaxBoxAccV2")
    ax.set_xlabel("k (top-k channels)")
    ax.set_ylabel("%")
    ax.set_title("gScoreCAM: accuracy vs k (dotted: the other methods)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_groups(rows: Sequence[dict], key: str, order: Sequence[str], title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 3), 4))
    n = max(1, len(rows))
    width = 0.8 / n
    x = np.arange(len(order))
    for i, r in enumerate(rows):
        vals = [100 * r[key][g]["mean_iou"] if r[key][g]["n"] else 0.0 for g in order]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=r["setting"])
    labels = [f"{g}\n(n={rows[0][key][g]['n'] if rows else 0})" for g in order]
    ax.set_xticks(x, labels)
    ax.set_ylabel("mean IoU of the Otsu box (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_runtime_vs_accuracy(rows: Sequence[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ms = r["ms_per_explanation"]
        if math.isnan(ms) or math.isnan(r["max_box_acc_v2"]):
            continue
        ax.scatter([ms], [100 * r["max_box_acc_v2"]], s=30)
        ax.annotate(r["setting"], (ms, 100 * r["max_box_acc_v2"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if any(r["ms_per_explanation"] > 0 for r in rows):
        ax.set_xscale("log")
    ax.set_xlabel("ms per explanation")
    ax.set_ylabel("MaxBoxAccV2 (%)")
    ax.set_title("Runtime vs accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, list[dict]], out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Writes the markdown, the CSVs and the plots; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(results)
    paths = {
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "groups_csv": out / "groups.csv",
        "boxacc_vs_k": out / "boxacc_vs_k.png",
        "iou_by_objects": out / "iou_by_objects.png",
        "iou_by_size": out / "iou_by_size.png",
        "runtime_vs_accuracy": out / "runtime_vs_accuracy.png",
    }
    paths["markdown"].write_text(markdown(rows, meta))
    write_csv(rows, paths["csv"])
    write_groups_csv(rows, paths["groups_csv"])
    plot_boxacc_vs_k(rows, paths["boxacc_vs_k"])
    plot_groups(rows, "objects", OBJECT_ORDER, "IoU by number of objects per image", paths["iou_by_objects"])
    plot_groups(rows, "sizes", SIZE_ORDER, "IoU by object size", paths["iou_by_size"])
    plot_runtime_vs_accuracy(rows, paths["runtime_vs_accuracy"])
    return paths
