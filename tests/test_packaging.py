"""The wheel: built from what a clean clone holds, it ships cfg/ and datasets/ in the package and the console script.

The build uses only files git knows about (tracked, or untracked and not ignored), like a fresh clone, so a
package folder that exists only on the developer's disk (e.g. an empty datasets/) fails here, not on a user's machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import clipce_rtdetr

REPO = Path(__file__).resolve().parents[1]
SKIP_PARTS = {".git", ".venv", "venv", "build", "dist", "runs", "__pycache__", ".pytest_cache"}


def source_files() -> list[Path]:
    if (REPO / ".git").exists() and shutil.which("git"):
        r = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        return [Path(p) for p in r.stdout.decode().split("\0") if p and (REPO / p).is_file()]
    return [
        p.relative_to(REPO)
        for p in REPO.rglob("*")
        if p.is_file() and not SKIP_PARTS & set(p.relative_to(REPO).parts) and not p.name.endswith(".egg-info")
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for rel in source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (
        f"wheel build failed from a clean copy of the repository:\n{(r.stdout + r.stderr)[-3000:]}"
    )
    wheels = list(out.glob("clipce_rtdetr-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def dist_info(wheel: Path, file: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        [name] = [n for n in z.namelist() if n.endswith(f".dist-info/{file}")]
        return z.read(name).decode()


def test_wheel_ships_cfg_and_datasets_inside_package(wheel):
    inside = names(wheel)
    for required in ("clipce_rtdetr/cfg/default.yaml", "clipce_rtdetr/cfg/models/rtdetr-tiny.yaml"):
        assert required in inside, required
    shipped = [
        *(REPO / "cfg").glob("*.yaml"),
        *(REPO / "cfg" / "models").glob("*.yaml"),
        *(REPO / "cfg" / "prompts").glob("*.yaml"),
        *(REPO / "cfg" / "clip").glob("*.json"),
        *(REPO / "datasets").glob("*.yaml"),
    ]
    tracked = {str(p) for p in source_files()}
    missing = []
    for f in shipped:
        rel = f.relative_to(REPO)
        if str(rel) not in tracked:
            continue  # ignored or local-only: not part of the project
        if f"clipce_rtdetr/{rel.as_posix()}" not in inside:
            missing.append(str(rel))
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in inside if n.startswith(("cfg/", "datasets/", "tests/"))], "top-level data folders leaked"


def test_wheel_ships_every_module(wheel):
    inside = names(wheel)
    modules = [p for p in source_files() if p.parts[0] == "clipce_rtdetr" and p.suffix == ".py"]
    assert modules
    missing = [str(p) for p in modules if p.as_posix() not in inside]
    assert not missing, f"modules not in the wheel (a subpackage missing from pyproject's packages?): {missing}"


def test_wheel_metadata(wheel):
    eps = dist_info(wheel, "entry_points.txt")
    assert "[console_scripts]" in eps and "clipce-rtdetr = clipce_rtdetr.cli:main" in eps
    meta = dist_info(wheel, "METADATA")
    assert f"Version: {clipce_rtdetr.__version__}" in meta
    assert "Requires-Dist: ultralytics==8.4.190" in meta
    assert "Requires-Python: >=3.10" in meta
    assert 'extra == "dev"' in meta and 'extra == "export"' in meta


def test_installed_wheel_finds_its_cfg(wheel, tmp_path):
    """Non-editable install: paths resolve inside site-packages, not to a checkout."""
    target = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    code = (
        "import clipce_rtdetr, clipce_rtdetr.paths as p\n"
        "from clipce_rtdetr.config import project_defaults\n"
        "from clipce_rtdetr.models.rtdetr.model import resolve_model\n"
        "print(clipce_rtdetr.__file__); print(p.DEFAULT_CFG_PATH); print(resolve_model('rtdetr-tiny.yaml'))\n"
        "print(p.DATASETS_DIR); print(p.PROMPTS_DIR)\n"
        "assert project_defaults()['clipce']\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    pkg, cfg, tiny, datasets, prompts = (Path(x) for x in r.stdout.strip().splitlines()[-5:])
    for p in (pkg, cfg, tiny, datasets, prompts):
        assert p.is_relative_to(target), f"{p} is outside the installed package"
    assert cfg.is_file() and tiny.is_file() and prompts.is_dir()


def test_import_leaves_the_users_ultralytics_settings_alone(tmp_path):
    """Importing the package turns telemetry off in its own process only: the user's settings file (integrations
    such as MLflow/W&B switched on) is not rewritten, and W&B is not disabled by an environment variable."""
    import json
    import os
    import subprocess
    import sys

    cfg = tmp_path / "ycfg"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(cfg)}
    env.pop("WANDB_DISABLED", None)
    code = "from ultralytics.utils import SETTINGS; SETTINGS.update({'mlflow': True, 'wandb': True, 'sync': True})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    settings_file = next(cfg.rglob("settings.json"))
    before = settings_file.read_text()
    probe = (
        "import os, clipce_rtdetr; from ultralytics.utils import SETTINGS; "
        "print(SETTINGS['sync'], SETTINGS['mlflow'], SETTINGS['wandb'], os.environ.get('WANDB_DISABLED'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True, timeout=120
    ).stdout.split()
    assert out[-4:] == ["False", "True", "True", "None"]
    assert settings_file.read_text() == before and json.loads(before)["mlflow"] is True


def test_offline_font_stand_in_is_removed_when_online(tmp_path):
    """Offline, DejaVuSans stands in for Ultralytics' Arial (no download); online, that stand-in is removed so the
    real font is fetched, while a font the user put there is kept."""
    from clipce_rtdetr.offline import _install_font

    _install_font(tmp_path, offline=True)
    stand_in = (tmp_path / "Arial.ttf").read_bytes()
    assert stand_in and (tmp_path / "Arial.Unicode.ttf").is_file()
    (tmp_path / "Arial.Unicode.ttf").write_bytes(b"the user's own font")
    _install_font(tmp_path, offline=False)
    assert (
        not (tmp_path / "Arial.ttf").exists()
        and (tmp_path / "Arial.Unicode.ttf").read_bytes() == b"the user's own font"
    )
    _install_font(tmp_path, offline=True)
    assert (tmp_path / "Arial.ttf").read_bytes() == stand_in and (
        tmp_path / "Arial.Unicode.ttf"
    ).read_bytes() == b"the user's own font"
