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


def _install_font(config_dir: Path, offline: bool | None = None) -> None:
    """Put a TTF where Ultralytics' `check_font("Arial.ttf")` looks, so plotting never downloads.

    Why: `check_font` ignores YOLO_OFFLINE and tries to download Arial.ttf when a dataset is
    checked or a plot is drawn. Matplotlib ships DejaVuSans, which is a fine stand-in. The stand-in is
    a file in Ultralytics' config folder, so when the user goes online (YOLO_OFFLINE=0) a stand-in left
    by an earlier offline run is removed again and Ultralytics fetches the real font; any other font
    file there is never touched.
    """
    import filecmp

    if offline is None:
        from ultralytics.utils import env_bool

        offline = env_bool("YOLO_OFFLINE")  # read the way Ultralytics reads it
    try:
        import matplotlib

        src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    except Exception:
        return
    if not src.exists():
        return
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        try:
            if not offline:
                if target.is_file() and filecmp.cmp(src, target, shallow=False):
                    target.unlink()
            elif not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
        except OSError:
            pass
