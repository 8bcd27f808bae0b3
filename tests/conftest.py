"""Test environment: offline, every Ultralytics/clipce folder in a temp dir, tiny data and models.

Environment variables are set at import time, before anything imports ultralytics (it reads
YOLO_CONFIG_DIR and YOLO_OFFLINE at import).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Test files import this module both as `conftest` (pytest puts tests/ on sys.path) and as `tests.conftest`. One
# module under both names: a second import would run this body again (a second temp folder, SETTINGS re-pointed).
sys.modules.setdefault("conftest", sys.modules[__name__])
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

# Under pytest-xdist every worker is its own process and imports this file itself: its own temp folder, so workers
# never share run folders, caches or generated data (the controller's folder holds only its settings file).
_TMP = Path(tempfile.mkdtemp(prefix=f"clipce-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"))
if not os.environ.get("CLIPCE_KEEP_TEST_TMP"):  # set it to look at a run's files afterwards
    atexit.register(shutil.rmtree, _TMP, ignore_errors=True)  # generated datasets and runs: ~100 MB a session
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["YOLO_CONFIG_DIR"] = str(_TMP / "ultralytics-config")
os.environ["CLIPCE_HOME"] = str(_TMP / "clipce-home")
os.environ["MPLBACKEND"] = "Agg"

import pytest  # noqa: E402
from ultralytics.utils import SETTINGS  # noqa: E402

import clipce_rtdetr  # noqa: E402,F401  (applies offline settings)

if not Path(SETTINGS.file).resolve().is_relative_to(_TMP.resolve()):  # ultralytics was imported before this file
    raise RuntimeError(
        f"ultralytics was imported before tests/conftest.py set YOLO_CONFIG_DIR, so its settings are your own "
        f"({SETTINGS.file}), which the tests would rewrite (runs_dir, datasets_dir into a temporary folder). Run "
        "pytest in a process that has not imported ultralytics (e.g. `pytest -q`, not from a script that imports it)."
    )
SETTINGS.update(
    {"datasets_dir": str(_TMP / "datasets"), "runs_dir": str(_TMP / "runs"), "weights_dir": str(_TMP / "weights")}
)

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = str(REPO / "cfg" / "models" / "rtdetr-tiny.yaml")
FAST = dict(epochs=1, imgsz=64, batch=8, device="cpu", workers=0, plots=False, val=True, verbose=False)
_BLOCK_CLIPCE = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'clipce_rtdetr':
            raise ImportError('clipce_rtdetr is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def run_without_clipce(code: str, cwd: Path) -> str:
    """Runs `code` in a fresh Python where clipce_rtdetr cannot be imported at all; returns its stdout."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False"}
    out = subprocess.run([sys.executable, "-c", _BLOCK_CLIPCE + code], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def tiny_clip(tmp_root) -> str:
    """A small open_clip model with random weights, saved to a weights file that loads through the real path."""
    from clipce_rtdetr.clip.loader import make_random_clip

    return make_random_clip(tmp_root / "clip" / "tiny-clip.safetensors")


@pytest.fixture(scope="session")
def tiny_hazy_shapes(tmp_root) -> Path:
    """A small hazy-shapes dataset (24 train, 8 val images at 128 px), generated once per session."""
    from clipce_rtdetr.data.hazy_shapes import Recipe, generate

    return generate(
        tmp_root / "hazy-shapes-tiny", Recipe(seed=0, n_train=24, n_val=8, size=128, max_objects=3), progress=False
    )


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): one worker per usable CPU core, at most 8; PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides. Ultralytics sets OMP_NUM_THREADS=1 at import, so each worker's torch runs on one thread."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

