"""Make Ultralytics and open_clip behave on a machine with no network.

Why: Ultralytics probes DNS at import, pip-installs missing packages on demand, downloads fonts,
checks for updates and sends telemetry; open_clip waits ~46 s on the hub before failing. Each of
those is turned off here unless the user has set the variable explicitly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_DONE = False


def configure() -> None:
    """Set offline-safe defaults. Idempotent; must run before `import ultralytics`."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    # Respect a user's explicit choice; only fill in what is unset.
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # never pip-install at run time
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no DNS probe at import, no online checks
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    # No telemetry from this tool, also when the user sets YOLO_OFFLINE=0 to fetch weights: in this process
    # only (dict.__setitem__, not SETTINGS' own saving setter), so the user's settings file is left as it is.
    # Logging integrations (W&B, MLflow, TensorBoard, ...) stay as the user configured them.
    dict.__setitem__(SETTINGS, "sync", False)
    _install_font(Path(USER_CONFIG_DIR))


def _install_font(config_dir: Path) -> None:
    """Put a TTF where Ultralytics' `check_font("Arial.ttf")` looks, so plotting never downloads.

    Why: `check_font` ignores YOLO_OFFLINE and tries to download Arial.ttf when a dataset is
    checked or a plot is drawn. Matplotlib ships DejaVuSans, which is a fine stand-in.
    """
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if target.exists():
            continue
        try:
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            if src.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
        except Exception:
            pass
