"""`robustness` (issue 24): the grid on a tiny model and a few val images; mPC / rPC recomputed here from the
per-cell APs; the clean row is `val coco=True` on the same split; a rerun reuses degraded copies and cells."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from clipce_rtdetr.cli import entrypoint
from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.eval.robustness import check_conditions, run_grid

MODEL = str(Path(__file__).resolve().parents[1] / "weights" / "rtdetr-tiny-shapes.pt")
CONDITIONS = ["rain", "snow+haze"]


def _copies(cache: Path) -> dict[Path, int]:
    """Every degraded image under the cache folder with its modification time."""
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}


@pytest.fixture(scope="module")
def first_run(tiny_hazy_shapes, tmp_path_factory):
    work = tmp_path_factory.mktemp("robustness")
    result = run_grid([MODEL], str(tiny_hazy_shapes), "val", CONDITIONS, processes=1,
                      val_kwargs={"imgsz": 64, "batch": 8, "device": "cpu", "workers": 0}, workdir=work,
                      progress=False)  # fmt: skip
    return result


def test_grid_and_michaelis_metrics(first_run, tmp_path):
    rec = first_run["models"][0]
    assert rec["evaluated_cells"] == 11 and rec["reused_cells"] == 0
    cells = rec["cells"]
    assert set(cells) == {"clean"} | {f"{c}-s{s}" for c in CONDITIONS for s in range(1, 6)}
    # the CLI writes the report from the recorded cells (all reused: nothing is evaluated again)
    out = tmp_path / "report"
    rc = entrypoint(["robustness", f"model={MODEL}", f"data={first_run['data']}", "conditions=[rain,snow+haze]",
                     "imgsz=64", "batch=8", "device=cpu", "workers=0", f"out={out}", "processes=1"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "robustness.json").read_text())
    again = report["models"][0]
    assert again["reused_cells"] == 11 and again["evaluated_cells"] == 0 and again["cells"] == cells
    # mPC and rPC recomputed from the per-cell APs (Michaelis et al. 2019), for both metrics
    rows = list(csv.DictReader(open(out / "robustness.csv", encoding="utf-8")))
    for m in ("AP50", "AP50-95"):
        grid = [float(r[m]) for r in rows if r["condition"] in CONDITIONS]
        assert len(grid) == 10
        clean = next(float(r[m]) for r in rows if r["condition"] == "clean")
        mpc = sum(grid) / len(grid)
        got = {r["condition"]: float(r[m]) for r in rows if r["condition"] in ("P_clean", "mPC", "rPC")}
        assert got["P_clean"] == pytest.approx(clean, abs=1e-6)
        assert got["mPC"] == pytest.approx(mpc, abs=1e-5)
        assert got["rPC"] == pytest.approx(mpc / clean, abs=1e-5)
        assert cells["clean"][m] > 0
    md = (out / "robustness.md").read_text()
    assert "mPC (AP50-95)" in md and "rPC (AP50)" in md and "| snow+haze |" in md
    assert (out / "robustness.png").stat().st_size > 0


def test_clean_row_is_val_coco(first_run):
    from clipce_rtdetr.models import load_detector

    m = load_detector(MODEL).val(data=first_run["data"], split="val", coco=True, imgsz=64, batch=8, device="cpu",
                                 workers=0, plots=False, verbose=False)  # fmt: skip
    clean = first_run["models"][0]["cells"]["clean"]
    assert clean["AP50"] == m.coco["stats"]["AP50"] and clean["AP50-95"] == m.coco["stats"]["AP"]


def test_rerun_reuses_degraded_copies(first_run, tmp_path):
    cache = Path(first_run["cache"])
    before = _copies(cache)
    assert len(before) == 10 * 8  # 10 cells x the 8 val images (the train split is not copied)
    # other evaluation settings: every cell is evaluated again, on the same degraded copies
    result = run_grid([MODEL], first_run["data"], "val", ["rain"], processes=1,
                      val_kwargs={"imgsz": 64, "batch": 4, "device": "cpu", "workers": 0}, workdir=tmp_path,
                      progress=False)  # fmt: skip
    assert result["cache"] == first_run["cache"]
    assert result["models"][0]["evaluated_cells"] == 6
    assert set(result["models"][0]["cells"]) == {"clean"} | {f"rain-s{s}" for s in range(1, 6)}
    assert _copies(cache) == before


def test_bad_conditions_refused():
    assert check_conditions(None) == ["haze", "lowlight", "underwater", "rain", "snow"]
    with pytest.raises(ClipCEError, match="hail"):
        check_conditions(["rain", "hail"])
    with pytest.raises(ClipCEError, match="twice"):
        check_conditions(["rain", "rain"])
    with pytest.raises(ClipCEError, match="Write 'haze\\+rain' as 'rain\\+haze'"):
        check_conditions(["haze+rain"])  # a known mix in another order: the spelling degrade uses is named
    assert entrypoint(["robustness", "data=hazy-shapes"]) != 0  # no model: a clear error, exit code not 0


def test_compare_with_the_same_weights_refused(tiny_hazy_shapes, tmp_path):
    """compare= naming the model's own weights (another path to the same bytes) would only repeat its rows."""
    from clipce_rtdetr.eval.robustness import run_robustness

    model = Path(__file__).resolve().parents[1] / "weights" / "rtdetr-tiny-shapes.pt"
    copy = tmp_path / "copy.pt"
    copy.write_bytes(model.read_bytes())
    with pytest.raises(ClipCEError, match="same weights file"):
        run_robustness({"model": str(model), "compare": str(copy), "data": str(tiny_hazy_shapes),
                        "out": str(tmp_path / "r")})  # fmt: skip
    assert not (tmp_path / "r").exists()  # refused before anything is written
    assert os.environ["CLIPCE_HOME"]  # the cache lives under the test session's own home


def test_a_kind_revision_redoes_only_its_cells_and_copies(tiny_hazy_shapes, tmp_path, monkeypatch):
    """After one kind's synthesis changes (data/degrade_image.py KIND_REVISIONS), a rerun redoes the degraded copies
    and cells of the conditions containing it, and reuses the rest (in a cache of its own)."""
    from clipce_rtdetr.data import degrade_image

    monkeypatch.setenv("CLIPCE_HOME", str(tmp_path / "home"))
    kw = {"processes": 1, "val_kwargs": {"imgsz": 64, "batch": 8, "device": "cpu", "workers": 0},
          "workdir": tmp_path / "work", "progress": False}  # fmt: skip
    first = run_grid([MODEL], str(tiny_hazy_shapes), "val", CONDITIONS, **kw)
    before = _copies(Path(first["cache"]))
    monkeypatch.setitem(degrade_image.KIND_REVISIONS, "snow", degrade_image.KIND_REVISIONS.get("snow", 0) + 1)
    result = run_grid([MODEL], str(tiny_hazy_shapes), "val", CONDITIONS, **kw)
    rec = result["models"][0]
    assert result["cache"] == first["cache"]
    assert rec["evaluated_cells"] == 5 and rec["reused_cells"] == 6
    snow_cells = {f"snow+haze-s{s}" for s in range(1, 6)}
    version = degrade_image.synthesis_version("snow+haze")
    assert {k for k, c in rec["cells"].items() if c.get("synthesis") == version} == snow_cells
    after = _copies(Path(result["cache"]))
    assert {p.relative_to(result["cache"]).parts[0] for p in after if after[p] != before[p]} == snow_cells
