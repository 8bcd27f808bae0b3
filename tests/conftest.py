"""Test environment: offline, every Ultralytics/clipce folder in a temp dir, tiny data and models.

Environment variables are set at import time, before anything imports ultralytics (it reads
YOLO_CONFIG_DIR and YOLO_OFFLINE at import).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="clipce-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["YOLO_CONFIG_DIR"] = str(_TMP / "ultralytics-config")
os.environ["CLIPCE_HOME"] = str(_TMP / "clipce-home")
os.environ["MPLBACKEND"] = "Agg"

import pytest  # noqa: E402
from ultralytics.utils import SETTINGS  # noqa: E402

import clipce_rtdetr  # noqa: E402,F401  (applies offline settings)

SETTINGS.update(
    {"datasets_dir": str(_TMP / "datasets"), "runs_dir": str(_TMP / "runs"), "weights_dir": str(_TMP / "weights")}
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = str(REPO / "cfg" / "models" / "rtdetr-tiny.yaml")


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def tiny_hazy_shapes(tmp_root) -> Path:
    """A small hazy-shapes dataset (24 train, 8 val images at 128 px), generated once per session."""
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate

    return generate(
        tmp_root / "hazy-shapes-tiny", Recipe(seed=0, n_train=24, n_val=8, size=128, max_objects=3), progress=False
    )
