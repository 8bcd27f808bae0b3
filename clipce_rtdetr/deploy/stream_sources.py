"""What a predict/track `source=` is, read before anything is written.

* `read_streams_file`: a `.streams` file, one source per line; blank lines and `#` comments are skipped (Ultralytics
  reads every whitespace-separated word as a source). A still image is refused naming the line (it is not a
  stream: give it as source= itself); a video file is read to its end, never dropped.
* `live_sources`: the cameras of a run (a `.streams` file, an rtsp/rtmp/tcp/live-http address, a webcam index), or
  None for a file/folder/image source, which Ultralytics' own loader reads.
* `fetch_http_file`: an http(s) address of an image or video file is downloaded into a temporary folder (never the
  current folder, where a file of the same name would be taken for it) and checked: a page of HTML is refused
  naming the address, and nothing is left behind.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from clipce_rtdetr.errors import ClipCEError

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "tcp://")
LIVE_HTTP_SUFFIXES = (".ts", ".m3u8", ".mjpg", ".mjpeg")  # http(s) addresses of these are live streams
HTTP_TIMEOUT = 30.0


def _suffixes() -> tuple[set[str], set[str]]:
    from ultralytics.data.utils import IMG_FORMATS, VID_FORMATS

    return set(IMG_FORMATS), set(VID_FORMATS)


def is_http(source: Any) -> bool:
    return isinstance(source, (str, Path)) and str(source).lower().startswith(("http://", "https://"))


def is_live_http(source: Any) -> bool:
    """An http(s) address of a live stream (MPEG-TS, HLS, MJPEG), or one with no file suffix (a camera's endpoint)."""
    if not is_http(source):
        return False
    suffix = Path(urllib.parse.urlsplit(str(source)).path).suffix.lower().lstrip(".")
    images, videos = _suffixes()
    return f".{suffix}" in LIVE_HTTP_SUFFIXES or (suffix not in images and suffix not in videos)


def is_live(source: str) -> bool:
    s = str(source)
    return s.isnumeric() or s.lower().startswith(LIVE_SCHEMES) or is_live_http(s)


def read_streams_file(path: Path) -> list[str]:
    """The sources listed in a `.streams` file (ClipCEError naming the line for an entry that cannot be one)."""
    images, _ = _suffixes()
    sources = []
    lines = Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if len(entry.split()) > 1:
            raise ClipCEError(f"{path}, line {n}: '{entry}' holds more than one source; list one source per line.")
        if Path(entry).suffix.lower().lstrip(".") in images and not is_live(entry):
            raise ClipCEError(
                f"{path}, line {n}: '{entry}' is an image, not a stream (it would be reopened for ever). "
                "Give images as source= themselves (a file, folder or glob), and list only cameras, stream "
                "addresses and video files in a .streams file."
            )
        if not is_live(entry) and not Path(entry).exists():
            raise ClipCEError(f"{path}, line {n}: '{entry}' is neither a stream address nor an existing file.")
        sources.append(entry)
    if not sources:
        raise ClipCEError(f"{path} lists no source (blank and # comment lines are skipped); add one per line.")
    return sources


def live_sources(source: Any) -> list[str] | None:
    """The camera sources of a live run, or None when the source is files for Ultralytics' own loader."""
    if isinstance(source, int):
        return [str(source)]
    if not isinstance(source, (str, Path)):
        return None
    s = str(source)
    if s.lower().endswith(".streams") and Path(s).is_file():
        return read_streams_file(Path(s))
    return [s] if is_live(s) else None


def fetch_http_file(url: str, folder: Path) -> Path:
    """Download an http(s) image/video address into `folder` (a temporary folder of the run) and check what came."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    target = Path(folder) / name
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response, open(target, "wb") as f:
            kind = response.headers.get_content_type()
            head = response.read(512)
            if kind == "text/html" or head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
                raise ClipCEError(
                    f"source={url} served a web page (Content-Type {kind}), not an image or video: check the "
                    "address (a login or player page?). Nothing was downloaded or saved."
                )
            f.write(head)
            shutil.copyfileobj(response, f)
    except OSError as e:
        target.unlink(missing_ok=True)
        raise ClipCEError(f"source={url} could not be downloaded ({e}). Nothing was saved.") from None
    except ClipCEError:
        target.unlink(missing_ok=True)
        raise
    return target


def local_copy(source: Any, keep: list) -> Any:
    """`source` with an http(s) image/video address replaced by a checked download in a temporary folder (kept
    alive by appending it to `keep`); any other source as given."""
    if not is_http(source) or is_live_http(source):
        return source
    folder = tempfile.TemporaryDirectory(prefix="clipce-source-")
    keep.append(folder)
    return str(fetch_http_file(str(source), Path(folder.name)))
