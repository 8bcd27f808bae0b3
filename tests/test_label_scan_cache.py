"""The label/image pre-scan runs once per set of unchanged files, re-reports its findings, and catches a layout
where no image has a label file."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from clipce_rtdetr.data import dataset as data
from clipce_rtdetr.errors import ClipCEError


def _dataset(root, with_labels=True):
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / "a.png"), np.zeros((32, 32, 3), np.uint8))
        if with_labels:
            (root / "labels" / split / "a.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 2: a problem
    y = root / "d.yaml"
    y.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return y


def test_scan_once_then_cached_report(tmp_path, monkeypatch, caplog):
    y = _dataset(tmp_path)
    calls = []
    real = data.scan_labels
    monkeypatch.setattr(data, "scan_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    reports = []
    monkeypatch.setattr(data, "report_label_problems", lambda r, strict=False: reports.append(r))
    data.resolve_data(str(y))
    data.resolve_data(str(y))
    assert len(calls) == 1 and len(reports) == 2  # scanned once, reported both times
    assert reports[0]["errors"] == reports[1]["errors"] and "class id 7" in reports[1]["errors"][0]
    lb = tmp_path / "labels" / "train" / "a.txt"
    lb.write_text("1 0.5 0.5 0.2 0.2\n")
    os.utime(lb, (time.time() + 5, time.time() + 5))
    data.resolve_data(str(y))
    assert len(calls) == 2  # a changed label file is scanned again


def test_no_labels_at_all_is_an_error(tmp_path):
    y = _dataset(tmp_path, with_labels=False)
    with pytest.raises(ClipCEError, match="No label files found"):
        data.resolve_data(str(y))


def test_a_new_scan_version_scans_again(tmp_path, monkeypatch):
    """Reports cached by an older scan (e.g. one that called a byte-order mark a bad field) are not reused."""
    y = _dataset(tmp_path)
    calls = []
    real = data.scan_labels
    monkeypatch.setattr(data, "scan_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(data, "report_label_problems", lambda r, strict=False: None)
    data.resolve_data(str(y))
    monkeypatch.setattr(data, "SCAN_VERSION", data.SCAN_VERSION + 1)
    data.resolve_data(str(y))
    assert len(calls) == 2
