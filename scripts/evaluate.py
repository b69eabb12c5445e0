#!/usr/bin/env python
"""Zero-shot detection evaluation: the paper's metrics and tables (see docs/EVALUATION.md).

  scripts/evaluate.py --annotations SCENES/annotations.json --limit 20           # demo scenes, demo model
  scripts/evaluate.py --dataset coco --annotations instances_val2017.json --images val2017 \
      --arch RN50x16 --checkpoint RN50x16.pt --device cuda --resume                # the paper's COCO numbers

Thin wrapper over handler.evaluation.cli (run with --help for all options).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handler.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
