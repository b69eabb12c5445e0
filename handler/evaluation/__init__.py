"""Zero-shot detection evaluation of CLIP explanations (the gScoreCAM paper's metrics and tables).

* :mod:`~handler.evaluation.metrics` — BoxAcc, MaxBoxAccV2, mean IoU, pointing accuracy, Fig. 2's groups;
* :mod:`~handler.evaluation.datasets` — COCO / PartImageNet / LVIS JSON and Choe et al.'s WSOL layout;
* :mod:`~handler.evaluation.rise` — the RISE black-box baseline;
* :mod:`~handler.evaluation.runner` — the loop (one call per image and method, cache/resume, progress);
* :mod:`~handler.evaluation.report` — markdown/CSV/PNG reports;
* :mod:`~handler.evaluation.ceiling` — what Otsu boxes can reach with ideal heatmaps at a given CAM grid;
* :mod:`~handler.evaluation.cli` — ``scripts/evaluate.py``.

See docs/EVALUATION.md.
"""
