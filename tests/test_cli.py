"""CLI parsing and error messages: `clipce-rtdetr MODE key=value ...` (in-process and as a console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

import clipce_rtdetr
from clipce_rtdetr.cli import entrypoint, parse_args
from clipce_rtdetr.config import all_defaults, check_overrides, project_defaults, ultralytics_defaults
from clipce_rtdetr.errors import ClipCEError, ConfigError

SCRIPT = Path(sys.executable).parent / "clipce-rtdetr"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = entrypoint(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    assert "error:" in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


# ------------------------------------------------------------------------------------------ parsing
def test_parse_ultralytics_and_project_keys_with_types():
    mode, o = parse_args(
        [
            "train",
            "epochs=3",
            "imgsz=64",
            "batch=8",
            "device=cpu",
            "lr0=0.002",
            "resume=False",
            "clipce=ame",
            "ame_alpha=0.5",
            "ame_form=linear",
            "coco=True",
            "beta_range=[0.05,0.14]",
        ]
    )
    assert mode == "train"
    assert o["epochs"] == 3 and isinstance(o["epochs"], int)
    assert o["imgsz"] == 64 and o["batch"] == 8 and o["device"] == "cpu"
    assert o["lr0"] == pytest.approx(0.002) and o["resume"] is False
    assert o["clipce"] == "ame" and o["ame_alpha"] == pytest.approx(0.5) and o["coco"] is True
    assert o["beta_range"] == [0.05, 0.14]
    ultra, proj = check_overrides(o)
    assert set(ultra) == {"epochs", "imgsz", "batch", "device", "lr0", "resume"}
    assert proj["clipce"] == "ame" and proj["ame_form"] == "linear"
    assert proj["fame_gamma"] == project_defaults()["fame_gamma"]  # defaults filled in


@pytest.mark.parametrize(
    "argv",
    [
        ["val", "--epochs=3"],
        ["val", "epochs", "=", "3"],
        ["val", "epochs=", "3"],
        ["val", "epochs", "=3"],
        ["val", "epochs=3,"],
    ],
)
def test_parse_equals_variants(argv):
    assert parse_args(argv) == ("val", {"epochs": 3})


def test_bare_bool_key_sets_true_and_bare_other_key_is_an_error():
    assert parse_args(["val", "coco", "plots"]) == ("val", {"coco": True, "plots": True})
    with pytest.raises(ClipCEError, match=r"missing '='.*epochs=100"):
        parse_args(["train", "epochs"])


@pytest.mark.parametrize("arg", ["clipce=none", "clipce=None", "clipce=NONE"])
def test_clipce_none_stays_the_choice_none(arg):
    """Ultralytics' parser turns 'none' into None; the project key must still mean the choice "none"."""
    from clipce_rtdetr.config import check_project_values

    _, o = parse_args(["train", arg])
    _, proj = check_overrides(o)
    assert proj["clipce"] == "none"
    assert check_project_values({**project_defaults(), "clipce": None})["clipce"] == "none"


def test_int_is_coerced_to_float_for_float_project_keys():
    _, proj = check_overrides({"ame_alpha": 2, "ame_temperature": 1})
    assert isinstance(proj["ame_alpha"], float) and proj["ame_alpha"] == 2.0


def test_project_keys_do_not_shadow_ultralytics_keys():
    clash = set(project_defaults()) & set(ultralytics_defaults())
    assert not clash, f"project keys also defined by Ultralytics: {clash}"


# ---------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    "arg, nearest",
    [
        ("epoch=3", "epochs=100"),
        ("imgsize=64", "imgsz=640"),
        ("ame_alpah=1", "ame_alpha=1.0"),
        ("fame_gama=2", "fame_gamma=1.0"),
    ],
)
def test_unknown_key_exit_2_with_nearest(capsys, arg, nearest):
    rc, out, err = run_cli(capsys, "train", arg)
    assert_clear_error(rc, err, f"'{arg.split('=')[0]}' is not a valid", f"Did you mean {nearest}", "clipce-rtdetr cfg")


def test_misspelt_mode_suggests_mode(capsys):
    rc, _, err = run_cli(capsys, "trian", "epochs=1")
    assert_clear_error(rc, err, "'trian' is not a valid mode", "'train'")


def test_no_mode_is_an_error(capsys):
    rc, _, err = run_cli(capsys, "epochs=3")
    assert_clear_error(rc, err, "No mode given", "train")


def test_unparsable_value(capsys):
    rc, _, err = run_cli(capsys, "train", "beta_range=[0.1,")
    assert_clear_error(rc, err, "beta_range")


# ----------------------------------------------------------------------------------- wrong types
@pytest.mark.parametrize(
    "arg, needles",
    [
        ("epochs=abc", ("'epochs=abc'", "must be an int")),
        ("lr0=abc", ("'lr0=abc'", "float")),
        ("iou=2.5", ("iou", "between 0.0 and 1.0")),
        ("ame_alpha=abc", ("'ame_alpha=abc'", "must be a float")),
        ("ame_alpha=-1", ("ame_alpha=-1", ">= 0")),
        ("ame_temperature=0", ("ame_temperature=0", "> 0")),
        ("ame_batch=1.5", ("ame_batch=1.5", "must be an int")),
        ("clipce=bogus", ("'clipce=bogus'", "none, prior, ame, fame")),
        ("ame_form=cubic", ("ame_form=cubic", "exp, linear")),
        ("coco=maybe", ("coco=maybe", "must be a bool")),
        ("beta_range=[0.2,0.1]", ("beta_range", "min <= max")),
        ("val_fraction=1.5", ("val_fraction=1.5", "[0, 1]")),
    ],
)
def test_wrong_type_or_range_exit_2(capsys, tmp_path, monkeypatch, arg, needles):
    monkeypatch.chdir(tmp_path)
    # A model that exists, so the error can only come from the value check (which must run first).
    rc, _, err = run_cli(capsys, "train", f"model={TINY_MODEL}", arg)
    assert_clear_error(rc, err, *needles)
    assert not (tmp_path / "runs").exists()


def test_values_are_checked_before_anything_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "predict", "model=does-not-exist.pt", "source=x.jpg", "ame_alpha=abc")
    assert_clear_error(rc, err, "ame_alpha")
    assert "does-not-exist" not in err


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        check_overrides({"clipce": "bogus"})
    with pytest.raises(ConfigError, match="epochs"):
        check_overrides({"epochs": "abc"})


# ---------------------------------------------------------------------------- special commands
def test_cfg_prints_every_default(capsys):
    rc, out, _ = run_cli(capsys, "cfg")
    assert rc == 0
    printed = yaml.safe_load(out)  # the output is one YAML document: every key once
    expected = all_defaults()
    assert set(printed) == set(expected)
    for k, v in expected.items():
        assert printed[k] == v, k
    for k in ("epochs", "imgsz", "batch", "device", "resume", "clipce", "ame_alpha", "allow_download"):
        assert k in printed


@pytest.mark.parametrize("args", [["help"], ["--help"], ["-h"], []])
def test_help(capsys, args):
    rc, out, _ = run_cli(capsys, *args)
    assert rc == 0
    assert "Usage: clipce-rtdetr MODE key=value" in out
    for mode in ("train", "val", "predict", "track", "export"):
        assert mode in out


def test_version(capsys):
    from importlib.metadata import version

    rc, out, _ = run_cli(capsys, "version")
    assert rc == 0 and out.strip() == clipce_rtdetr.__version__ == version("clipce-rtdetr")


def test_console_script_and_module():
    assert SCRIPT.exists(), f"console script missing: {SCRIPT}"
    for cmd in ([str(SCRIPT), "version"], [sys.executable, "-m", "clipce_rtdetr", "version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == clipce_rtdetr.__version__
    r = subprocess.run(
        [str(SCRIPT), "train", "epoch=3"], capture_output=True, text=True, timeout=120, env=os.environ.copy()
    )
    assert r.returncode == 2 and "Did you mean epochs=" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ missing inputs
def test_missing_weights_names_paths_tried(capsys, tmp_path, monkeypatch):
    from clipce_rtdetr.paths import weights_dirs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPCE_WEIGHTS", str(tmp_path / "my-weights"))
    if any((d / "rtdetr-l.pt").exists() for d in weights_dirs()):
        pytest.skip("rtdetr-l.pt is installed on this machine")
    rc, _, err = run_cli(capsys, "val", "model=rtdetr-l.pt", "data=hazy-shapes")
    assert_clear_error(
        rc,
        err,
        "rtdetr-l.pt",
        "not found",
        "Tried:",
        str(tmp_path / "rtdetr-l.pt"),
        str(tmp_path / "my-weights" / "rtdetr-l.pt"),
        "releases/download",
    )
    assert err.count("error:") == 1


def test_weights_found_in_clipce_weights(tmp_path, monkeypatch):
    from clipce_rtdetr.models.rtdetr.model import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.pt").write_bytes(b"x")
    monkeypatch.setenv("CLIPCE_WEIGHTS", str(tmp_path / "w"))
    assert Path(resolve_model("mine.pt")) == tmp_path / "w" / "mine.pt"
    assert Path(resolve_model("rtdetr-tiny.yaml")).is_file()  # found in cfg/models from any folder
    assert Path(resolve_model("rtdetr-tiny")).is_file()


def test_missing_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "train", f"model={TINY_MODEL}", "data=nonexistent.yaml", "epochs=1")
    assert_clear_error(rc, err, "nonexistent.yaml", "not found", str(tmp_path / "nonexistent.yaml"))
    assert not (tmp_path / "runs").exists()


def _yaml(path: Path, **extra) -> Path:
    data = {
        "path": str(path.parent / "absent"),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "a"},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_with_missing_paths(capsys, tmp_path):
    y = _yaml(tmp_path / "d.yaml")
    rc, _, err = run_cli(capsys, "val", f"model={TINY_MODEL}", f"data={y}")
    assert_clear_error(rc, err, str(y), str(tmp_path / "absent" / "images" / "val"), "do not exist")


def test_download_script_not_run_without_allow_download(capsys, tmp_path):
    marker = tmp_path / "download-ran"
    y = _yaml(tmp_path / "d.yaml", download=f"open({str(marker)!r}, 'w').write('x')\n")
    rc, _, err = run_cli(capsys, "val", f"model={TINY_MODEL}", f"data={y}", "imgsz=64", "device=cpu")
    assert_clear_error(rc, err, "download:", "allow_download=True")
    assert not marker.exists(), "the YAML's download script ran without allow_download=True"
    # With the explicit key the script runs (data stays missing: still a clear error, no traceback).
    rc, _, err = run_cli(
        capsys, "val", f"model={TINY_MODEL}", f"data={y}", "imgsz=64", "device=cpu", "allow_download=True"
    )
    assert marker.exists(), "allow_download=True did not run the download script"
    assert rc == 2 and "Traceback" not in err


def test_predict_without_source(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "predict", f"model={TINY_MODEL}")
    assert_clear_error(rc, err, "source=")


def test_two_modes_is_an_error(capsys):
    rc, _, err = run_cli(capsys, "val", "predict")
    assert_clear_error(rc, err, "Two modes given ('val' and 'predict')")


def test_gpu_device_without_cuda(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = run_cli(capsys, "predict", f"model={TINY_MODEL}", "source=x.jpg", "device=0")
    assert_clear_error(rc, err, "device=0 asks for a CUDA GPU", "device=cpu")


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.pt", b""),
        ("text.pt", b"hello, not a checkpoint"),
        ("dict.pt", None),
        ("bad.yaml", b"backbone: [[-1, 1, NoSuchLayer, []]]\nhead: []\n"),
        ("empty.yaml", b""),
        ("garbled.yaml", b"backbone: [\n"),
    ],
)
def test_broken_model_files_are_named(capsys, tmp_path, name, content):
    import torch

    f = tmp_path / name
    if content is None:
        torch.save({"a": 1}, f)
    else:
        f.write_bytes(content)
    rc, _, err = run_cli(capsys, "val", f"model={f}", "data=hazy-shapes")
    assert_clear_error(rc, err, "cannot be loaded as an RT-DETR model", str(f))


def test_resume_true_skips_finished_runs(capsys, tmp_path, monkeypatch):
    """resume=True takes the newest unfinished run; with only finished runs it says so (Ultralytics' own choice
    would be the newest last.pt, then a new run on its defaults)."""
    import shutil

    import torch

    from clipce_rtdetr.cli import latest_unfinished_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a" / "weights").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "weights").mkdir(parents=True)
    torch.save({"epoch": 3, "optimizer": {"state": {}}}, tmp_path / "runs" / "a" / "weights" / "last.pt")
    shutil.copy(
        Path(clipce_rtdetr.__file__).parents[1] / "weights" / "rtdetr-tiny-shapes.pt",
        tmp_path / "runs" / "b" / "weights" / "last.pt",
    )
    newest, finished = latest_unfinished_run()
    assert Path(newest).parts[-3] == "a" and [Path(f).parts[-3] for f in finished] == ["b"]
    (tmp_path / "runs" / "a" / "weights" / "last.pt").unlink()
    rc, _, err = run_cli(capsys, "train", "resume=True")
    assert_clear_error(rc, err, "no unfinished run", "runs/b/weights/last.pt")
    # Naming the finished run: our advice (a new run from its weights, CLIP-CE settings given again), not
    # Ultralytics' 'yolo train model=last.pt', which would train without CLIP-CE.
    for args in (["resume=runs/b/weights/last.pt"], ["model=runs/b/weights/last.pt", "resume=True"]):
        rc, _, err = run_cli(capsys, "train", *args)
        assert_clear_error(rc, err, "finished all its epochs", "clipce-rtdetr train model=runs/b/weights/last.pt")
        assert "yolo train" not in err and "clipce.yaml" not in err  # that run folder has none
    (tmp_path / "runs" / "b" / "clipce.yaml").write_text("clipce: fame\n")
    rc, _, err = run_cli(capsys, "train", "resume=runs/b/weights/last.pt")
    assert_clear_error(rc, err, str(tmp_path / "runs" / "b" / "clipce.yaml"))


def test_unquoted_lists_and_stream_true_from_the_docs(capsys):
    """Commands as the docs write them: ablation_methods=[none,fame] unquoted; predict ... stream=True."""
    _, cfg = check_overrides({"ablation_methods": "[none,fame]", "ablation_seeds": "[0, 1,2]"})
    assert cfg["ablation_methods"] == ["none", "fame"] and cfg["ablation_seeds"] == [0, 1, 2]
    mode, over = parse_args(["ablation", "ablation_methods=[none,fame]"])
    assert check_overrides(over)[1]["ablation_methods"] == ["none", "fame"]
    rc, _, err = run_cli(capsys, "predict", f"model={TINY_MODEL}", "source=/nonexistent/video.mp4", "stream=True")
    assert rc == 2 and "'stream' is not a valid" not in err and "video.mp4" in err  # fails on the source only
