"""Bring-your-own per-object weights (`clipce=table|table_fame weights=CSV`, issue 23): the table's checks, the
all-ones parity with `clipce=none` on real training (RT-DETR and YOLO), the checkpoint record and torchrun."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clipce_rtdetr.errors import ClipCEError
from clipce_rtdetr.method.weight_table import check_weights_key, read_table, table_weights, uses_fame
from tests import test_distributed
from tests.conftest import FAST, TINY_MODEL


def _write(path: Path, rows: list[list], header=("im_file", "index", "cls", "w")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _labels(tmp_path: Path) -> list[dict]:
    """Two images with 2 and 1 objects, as Ultralytics' dataset labels name them (absolute im_file)."""
    return [
        {"im_file": str(tmp_path / "images" / "a.png"), "cls": np.zeros((2, 1))},
        {"im_file": str(tmp_path / "images" / "b.png"), "cls": np.zeros((1, 1))},
    ]


def _train_labels(data_yaml: Path) -> list[dict]:
    from clipce_rtdetr.eval.ame_inspect import load_split_labels

    return load_split_labels(str(data_yaml), "train")[1]


def _ones_table(data_yaml: Path, path: Path, value=1.0) -> Path:
    rows = [[lb["im_file"], j, 0, value] for lb in _train_labels(data_yaml) for j in range(len(lb["cls"]))]
    return _write(path, rows)


# ------------------------------------------------------------------------------------------- the file's checks
def test_table_in_dataset_order_with_relative_paths_and_extra_columns(tmp_path):
    rows = [["images/b.png", 0, 4, 3.0], [str(tmp_path / "images" / "a.png"), 1, 0, 2.0], ["images/a.png", 0, 1, 1.5]]
    table = read_table(_write(tmp_path / "w.csv", rows))
    assert table_weights(table, _labels(tmp_path)).tolist() == [1.5, 2.0, 3.0]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("nan", "w='nan' is not allowed"),
        ("inf", "w='inf' is not allowed"),
        ("0", "w='0' is not allowed"),
        ("-1.5", "w='-1.5' is not allowed"),
        ("heavy", "w='heavy' is not allowed"),
        ("", "w='' is not allowed"),
    ],
)
def test_bad_weight_names_its_line(tmp_path, bad, message):
    path = _write(tmp_path / "w.csv", [["images/a.png", 0, 0, 1.0], ["images/a.png", 1, 0, bad]])
    with pytest.raises(ClipCEError, match=f"w.csv:3: {message}"):
        read_table(path)


def test_duplicate_row_names_both_lines(tmp_path):
    rows = [["images/a.png", 0, 0, 1.0], ["images/b.png", 0, 0, 1.0], [str(tmp_path / "images/a.png"), 0, 0, 2.0]]
    with pytest.raises(ClipCEError, match=r"w.csv:4: duplicate row: .*a.png index 0 is already given on line 2"):
        read_table(_write(tmp_path / "w.csv", rows))


def test_missing_column_bad_index_and_missing_file(tmp_path):
    with pytest.raises(ClipCEError, match=r"w.csv:1: the header has no column w"):
        read_table(_write(tmp_path / "w.csv", [["images/a.png", 0, 0]], header=("im_file", "index", "cls")))
    with pytest.raises(ClipCEError, match=r"w2.csv:2: index='-1' must be an integer >= 0"):
        read_table(_write(tmp_path / "w2.csv", [["images/a.png", -1, 0, 1.0]]))
    with pytest.raises(ClipCEError, match=r"weights=.*nowhere.csv: cannot read the weight table"):
        read_table(tmp_path / "nowhere.csv")


def test_object_without_row_and_row_without_object(tmp_path):
    labels = _labels(tmp_path)
    missing = read_table(_write(tmp_path / "w.csv", [["images/a.png", 0, 0, 1.0], ["images/b.png", 0, 0, 1.0]]))
    with pytest.raises(ClipCEError, match=r"no row for object 1 of .*a.png \(train split\)"):
        table_weights(missing, labels)
    rows = [["images/a.png", 0, 0, 1.0], ["images/a.png", 1, 0, 1], ["images/c.png", 0, 0, 1]]
    rows.append(["images/b.png", 0, 0, 1])
    extra = read_table(_write(tmp_path / "x.csv", rows))
    with pytest.raises(ClipCEError, match=r"x.csv:4: the row \(.*c.png, index 0\) matches no object"):
        table_weights(extra, labels)


def test_weights_key_goes_with_the_table_modes(tmp_path):
    with pytest.raises(ClipCEError, match="clipce=table needs weights=path.csv"):
        check_weights_key("table", None)
    with pytest.raises(ClipCEError, match="weights=w.csv is only read with clipce=table"):
        check_weights_key("fame", "w.csv")
    assert check_weights_key("table_fame", "w.csv") == Path("w.csv") and check_weights_key("none", None) is None
    assert uses_fame("table_fame") and uses_fame("fame") and not uses_fame("table")


def test_bad_table_refused_before_a_run_folder(tiny_hazy_shapes, tmp_path):
    """The file's own errors stop `train` before anything is written (no run folder, no data scan)."""
    from clipce_rtdetr.models import load_detector

    path = _write(tmp_path / "w.csv", [["images/a.png", 0, 0, "nan"]])
    with pytest.raises(ClipCEError, match="w.csv:2: w='nan' is not allowed"):
        load_detector(TINY_MODEL).train(
            data=str(tiny_hazy_shapes), clipce="table", weights=str(path), project=str(tmp_path / "runs"), **FAST
        )
    assert not (tmp_path / "runs").exists()


def test_table_of_another_dataset_refused_before_training(tiny_hazy_shapes, tmp_path):
    """An object of the train split without a row: stopped before the first batch, the object named."""
    from clipce_rtdetr.models import load_detector

    path = _ones_table(tiny_hazy_shapes, tmp_path / "w.csv")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")  # drop line 4 (the third object)
    det = load_detector(TINY_MODEL)
    with pytest.raises(ClipCEError, match=r"no row for object \d of .*train_000\d+.png \(train split\)"):
        det.train(data=str(tiny_hazy_shapes), clipce="table", weights=str(path), project=str(tmp_path / "r"), **FAST)
    assert not list((tmp_path / "r").glob("*/weights/*.pt")) and not list((tmp_path / "r").glob("*/results.csv"))


# ------------------------------------------------------------------------------------------- training
def _train(model: str, data: Path, tmp_path: Path, name: str, **kw):
    from clipce_rtdetr.models import load_detector

    det = load_detector(model)
    losses = []
    def record(tr):  # the batch's total loss and each loss item
        losses.append(torch.stack([tr.loss.detach(), *(torch.as_tensor(v).detach() for v in tr.loss_items.values())]))

    det.add_callback("on_train_batch_end", record)
    args = {**FAST, "epochs": 1, "val": False}
    det.train(data=str(data), seed=3, deterministic=True, project=str(tmp_path), name=name, **args, **kw)
    ckpt = torch.load(Path(det.trainer.save_dir) / "weights" / "last.pt", map_location="cpu", weights_only=False)
    return det.trainer, torch.stack(losses), ckpt


@pytest.mark.parametrize("model", [TINY_MODEL, "yolo11n.yaml"], ids=["rtdetr", "yolo"])
def test_all_ones_table_trains_exactly_like_none(model, tiny_hazy_shapes, tmp_path):
    """Same seed, deterministic: a table of ones gives the same losses, batch by batch, and the same final weights as
    clipce=none; a table of twos does not (the weights reach the loss)."""
    ones = _ones_table(tiny_hazy_shapes, tmp_path / "ones.csv")
    twos = _ones_table(tiny_hazy_shapes, tmp_path / "twos.csv", value=2.0)
    _, loss_none, ck_none = _train(model, tiny_hazy_shapes, tmp_path, "none", clipce="none")
    tr, loss_ones, ck_ones = _train(model, tiny_hazy_shapes, tmp_path, "ones", clipce="table", weights=str(ones))
    _, loss_twos, _ = _train(model, tiny_hazy_shapes, tmp_path, "twos", clipce="table", weights=str(twos))
    assert tr.weight_source == "table" and torch.equal(tr.weight_table, torch.ones_like(tr.weight_table))
    assert torch.equal(loss_ones, loss_none)
    sd_none, sd_ones = ck_none["model"].state_dict(), ck_ones["model"].state_dict()  # the final (EMA) weights
    assert sd_none.keys() == sd_ones.keys() and all(torch.equal(sd_none[k], sd_ones[k]) for k in sd_none)
    assert not torch.equal(loss_twos, loss_none)
    # recorded in the checkpoint like every CLIP-CE key
    assert ck_ones["model"].clipce_args["clipce"] == "table" and ck_ones["model"].clipce_args["weights"] == str(ones)


def test_table_fame_applies_confidence_adaptation(tiny_hazy_shapes, tmp_path):
    """table_fame: the applied weight is FAME's w' (below the table's w), table: w itself."""
    twos = _ones_table(tiny_hazy_shapes, tmp_path / "twos.csv", value=2.0)
    tr, _, _ = _train(TINY_MODEL, tiny_hazy_shapes, tmp_path, "tf", clipce="table_fame", weights=str(twos))
    crit = tr.model.criterion
    assert crit.fame is True
    rows = list(csv.DictReader(open(tr.csv)))
    assert math.isclose(float(rows[-1]["clipce/ame_w"]), 2.0) and 1.0 < float(rows[-1]["clipce/fame_w"]) < 2.0


# ------------------------------------------------------------------------------------------- torchrun
own_dataset = test_distributed.own_dataset  # fixture: a private copy of the tiny dataset


@pytest.mark.distributed
def test_torchrun_broadcasts_the_table_and_stops_every_process_on_a_bad_one(own_dataset, tmp_path):
    """Two real torchrun processes (gloo): rank 0 reads the table, rank 1 receives the identical one; a table with
    an object missing stops both processes with rank 0's message (none waits for a broadcast that never comes)."""
    labels = _train_labels(own_dataset)
    rows = [[lb["im_file"], j, 0, 1.0 + 0.01 * k] for k, (lb, j) in
            enumerate((lb, j) for lb in labels for j in range(len(lb["cls"])))]  # fmt: skip
    table = _write(tmp_path / "w.csv", rows)
    script = tmp_path / "recorder.py"
    script.write_text(test_distributed.RECORDER)
    args = [*test_distributed.TRAIN, f"data={own_dataset}", "clipce=table", f"weights={table}", "epochs=1"]
    launch = ["--standalone", "--nproc_per_node", "2"]
    td, env = test_distributed, test_distributed._env(tmp_path)
    td._finish(td._torchrun(launch, [str(script)], [*args, f"project={tmp_path / 'runs'}"], env, tmp_path))
    r0, r1 = td._records(tmp_path, 0)[0], td._records(tmp_path, 1)[0]
    assert r0["source"] == "table" and r1["source"] == "received from rank 0"
    assert r0["table"] == r1["table"] == pytest.approx([r[3] for r in rows])
    _write(table, rows[:2] + rows[3:])  # the third object has no row now
    proc = td._torchrun(launch, ["-m", "clipce_rtdetr"], [*args, f"project={tmp_path / 'bad'}"], env, tmp_path)
    out = td._finish(proc, ok=False)
    assert proc.returncode != 0 and "no row for object" in out
