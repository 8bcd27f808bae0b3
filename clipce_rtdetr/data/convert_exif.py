"""An annotation's declared image size against the image as Ultralytics reads it (EXIF orientation applied).

VOC tools often draw boxes on the stored pixels and write the stored size into <size>, while Ultralytics (and
OpenCV) turn a JPEG by its EXIF orientation before training. A <size> equal to the stored size of an image whose
orientation swaps width and height tells which frame the boxes are in: they are turned with the image. A <size>
that matches neither the stored nor the displayed size cannot be placed, so the image is left out and named.
"""

from __future__ import annotations

from pathlib import Path

from clipce_rtdetr.data.convert_readers import Record, Report

EXIF_ORIENTATION = 0x0112
SWAPS_AXES = (5, 6, 7, 8)


def stored_size_and_orientation(path: Path) -> tuple[tuple[int, int], int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size, int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)


def turn_point(x: float, y: float, w: int, h: int, orientation: int) -> tuple[float, float]:
    """A point of the stored image (w x h) in the displayed one (checked against PIL's exif_transpose and cv2)."""
    return {
        1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
        5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x),
    }.get(orientation, (x, y))  # fmt: skip


def turn_box(box, w: int, h: int, orientation: int) -> tuple[float, float, float, float]:
    (ax, ay), (bx, by) = (turn_point(box[0], box[1], w, h, orientation), turn_point(box[2], box[3], w, h, orientation))
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def reconcile_declared_size(r: Record, report: Report) -> bool:
    """Check r.declared_size against r.size (as read); turn the boxes when they were drawn on the stored pixels of
    an EXIF-rotated image. False: the image cannot be used (reported with its file and what to do)."""
    if r.declared_size is None or r.size is None or tuple(r.declared_size) == tuple(r.size):
        return True
    stored, orientation = stored_size_and_orientation(r.src)
    dw, dh = r.declared_size
    if orientation in SWAPS_AXES and tuple(r.declared_size) == tuple(stored):
        for o in r.objects:
            o.box = turn_box(o.box, dw, dh, orientation)
        report.add(
            "boxes turned with the image's EXIF orientation (<size> is the stored size)",
            r.where,
            f"{r.src.name}: orientation {orientation}, stored {dw}x{dh}, read as {r.size[0]}x{r.size[1]}",
        )
        return True
    report.add(
        "image skipped: annotation <size> disagrees with the image",
        r.where,
        f"<size> {dw}x{dh}, but {r.src} is {r.size[0]}x{r.size[1]} as read (stored {stored[0]}x{stored[1]}, EXIF "
        f"orientation {orientation}); fix <size> (and the boxes) to the image, or replace the image with the one "
        "that was annotated",
    )
    return False
