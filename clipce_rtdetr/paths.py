"""Where the project's files are: cfg/, datasets/ and weights/, in a checkout or an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# In a checkout (or editable install) cfg/ and datasets/ sit beside the package; a wheel ships them
# inside it (see pyproject.toml's package-dir mapping).
REPO_ROOT = PACKAGE_DIR.parent
CFG_DIR = PACKAGE_DIR / "cfg" if (PACKAGE_DIR / "cfg").is_dir() else REPO_ROOT / "cfg"
DATASETS_DIR = PACKAGE_DIR / "datasets" if (PACKAGE_DIR / "datasets").is_dir() else REPO_ROOT / "datasets"
DEFAULT_CFG_PATH = CFG_DIR / "default.yaml"
MODELS_DIR = CFG_DIR / "models"
PROMPTS_DIR = CFG_DIR / "prompts"


def home() -> Path:
    """User data root: $CLIPCE_HOME, default ~/.cache/clipce-rtdetr (generated data, caches)."""
    return Path(os.environ.get("CLIPCE_HOME") or Path.home() / ".cache" / "clipce-rtdetr")


def weights_dirs() -> list[Path]:
    """Folders searched for weights files, in order: $CLIPCE_WEIGHTS, the checkout's weights/, $CLIPCE_HOME/weights."""
    dirs = []
    if os.environ.get("CLIPCE_WEIGHTS"):
        dirs.append(Path(os.environ["CLIPCE_WEIGHTS"]))
    if (REPO_ROOT / "weights").is_dir() and (REPO_ROOT / "pyproject.toml").exists():
        dirs.append(REPO_ROOT / "weights")
    dirs.append(home() / "weights")
    return dirs
