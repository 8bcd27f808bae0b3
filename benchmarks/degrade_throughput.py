"""Throughput of `degrade` against a bare decode+encode loop with the same number of processes.

Goal (issues 4 and 24): degrade >= 80% of the bare loop's images/s, for every kind (rain, snow and mixed
conditions since issue 24). Images are generated (JPEG, 640x480 scenes with texture), never part of the tests.
The machine's load average is recorded before and after (the ratios share the load: the loops take turns). Usage:

    python benchmarks/degrade_throughput.py [--n 240] [--processes 2] [--size 640x480] [--kinds haze,rain,...]

The weather results (issue 24): --n 240 --processes 2 --repeats 5 --breakdown 60 --kinds
haze,underwater,lowlight,rain,snow,rain+haze,snow+haze,lowlight+haze --name degrade_throughput_weather.

Writes benchmarks/results/<name>.json and .md (default name degrade_throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import yaml


def make_dataset(root: Path, n: int, w: int, h: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    base = cv2.resize((rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for i in range(n):
        img = np.roll(base, i * 7, axis=1)
        img = cv2.add(img, (rng.random((h, w, 3)) * 30).astype(np.uint8))
        cv2.imwrite(str(root / "images" / "val" / f"{i:06d}.jpg"), img)
        (root / "labels" / "val" / f"{i:06d}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    y = root / "bench.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/val", "val": "images/val", "names": {0: "obj"}}))
    return y


def _bare(job):
    src, dst, *label = job
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    ok, enc = cv2.imencode(Path(dst).suffix, img)
    enc.tofile(dst)
    if label:  # the second reference: also copy the label file, as degrade must
        shutil.copyfile(*label)


def _init():
    from clipce_rtdetr.data.degrade import _init_worker

    _init_worker()  # the same process set-up as degrade's workers (threads, malloc), so only the work differs


def bare_loop(files: list[Path], out: Path, processes: int, labels: Path | None = None) -> float:
    """Seconds to decode and re-encode `files` (and copy their labels from `labels`, when given)."""
    out.mkdir(parents=True)
    jobs = [
        (str(f), str(out / f.name)) + ((str(labels / f"{f.stem}.txt"), str(out / f"{f.stem}.txt")) if labels else ())
        for f in files
    ]
    t = time.perf_counter()
    with get_context("fork").Pool(processes, initializer=_init) as pool:
        for _ in pool.imap_unordered(_bare, jobs, chunksize=max(1, min(16, len(jobs) // (processes * 8)))):
            pass
    return time.perf_counter() - t


def stage_breakdown(
    root: Path, files: list[Path], out: Path, kinds: list[str], rounds: int = 2
) -> dict[str, dict[str, float]]:
    """Milliseconds per image of each stage of degrade's worker, in this one process, alternating with the bare
    loop image by image (so slow drifts of the machine hit both alike): wall clock, and this process's CPU time
    (`cpu_*`: time.process_time, user + system), which other jobs' load on a shared machine changes far less."""
    from clipce_rtdetr.data import degrade as D

    out.mkdir(parents=True)
    D._init_worker()
    h, w = D.read_image(files[0]).shape[:2]
    table = {}
    for kind in kinds:
        p = D.sample_params(kind, "medium", D.ranges_for(kind, "medium", {}), 0, "x")
        stages = ("bare", "read", "physics", "label", "write")
        ms = dict.fromkeys(stages + tuple(f"cpu_{k}" for k in stages), 0.0)
        for r in range(rounds):
            for i, f in enumerate(files):
                c0, t0 = time.process_time(), time.perf_counter()
                _bare((str(f), str(out / f"bare{r}_{i}.jpg")))
                c1, t1 = time.process_time(), time.perf_counter()
                img = D.read_image(f)
                c2, t2 = time.process_time(), time.perf_counter()
                d = D.load_depth("horizon", None, h, w, 1.0) if kind != "lowlight" else None
                res = D.degrade_array(
                    img,
                    kind,
                    p,
                    d,
                    depth_max=D._prior_max("horizon", h, w) if kind == "underwater" else None,
                    metres_per_unit=D.metres_per_unit("horizon"),
                )
                c3, t3 = time.process_time(), time.perf_counter()
                shutil.copyfile(root / "labels" / "val" / f"{f.stem}.txt", out / f"{kind}{r}_{i}.txt")
                c4, t4 = time.process_time(), time.perf_counter()
                D.write_image(res, out / f"{kind}{r}_{i}.jpg")
                c5, t5 = time.process_time(), time.perf_counter()
                wall, cpu = (t0, t1, t2, t3, t4, t5), (c0, c1, c2, c3, c4, c5)
                for j, k in enumerate(stages):
                    ms[k] += (wall[j + 1] - wall[j]) * 1e3 / (rounds * len(files))
                    ms[f"cpu_{k}"] += (cpu[j + 1] - cpu[j]) * 1e3 / (rounds * len(files))
        table[kind] = ms
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--kinds", default="haze,lowlight,underwater,rain,snow,rain+haze,lowlight+haze")
    ap.add_argument("--name", default="degrade_throughput", help="file name of the results (<name>.json, .md)")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results"), help="folder for degrade_throughput.{json,md}"
    )
    ap.add_argument(
        "--breakdown", type=int, default=60, help="images for the per-stage timing in one process (0: skip)"
    )
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    w, h = map(int, a.size.split("x"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from clipce_rtdetr.data.degrade import degrade

    tmp = Path(tempfile.mkdtemp(prefix="degrade-bench-"))
    try:
        y = make_dataset(tmp / "src", a.n, w, h)
        files = sorted((tmp / "src" / "images" / "val").glob("*.jpg"))
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
            "images": a.n,
            "size": a.size,
            "processes": a.processes,
            "load_avg_start": os.getloadavg(),
            "bare_s": [],
            "bare_label_s": [],
            "degrade_s": {},
            "paired_ratio": {},
        }
        for r in range(a.repeats):
            os.sync()  # each timed run starts without the previous run's files still being written back
            results["bare_s"].append(bare_loop(files, tmp / f"bare{r}", a.processes))
            os.sync()
            results["bare_label_s"].append(
                bare_loop(files, tmp / f"barel{r}", a.processes, tmp / "src" / "labels" / "val")
            )
            for kind in kinds:
                os.sync()  # a bare run right before each kind: the pair shares the machine's state of the moment
                bare_now = bare_loop(files, tmp / f"bare{r}-{kind}", a.processes)
                os.sync()
                t = time.perf_counter()
                degrade(y, tmp / f"{kind}{r}", kind=kind, processes=a.processes, progress=False)
                results["degrade_s"].setdefault(kind, []).append(time.perf_counter() - t)
                results["paired_ratio"].setdefault(kind, []).append(bare_now / results["degrade_s"][kind][-1])
        bare = min(results["bare_s"])
        results["bare_img_s"] = a.n / bare
        results["bare_label_img_s"] = a.n / min(results["bare_label_s"])
        results["ratio"] = {k: bare / min(v) for k, v in results["degrade_s"].items()}
        results["ratio_vs_bare_label"] = {
            k: min(results["bare_label_s"]) / min(v) for k, v in results["degrade_s"].items()
        }
        results["degrade_img_s"] = {k: a.n / min(v) for k, v in results["degrade_s"].items()}
        results["load_avg_end"] = os.getloadavg()
        results["max_rss_mb_main"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        if a.breakdown:
            results["stages_ms"] = stage_breakdown(tmp / "src", files[: a.breakdown], tmp / "stages", kinds)
        lines = [
            f"# degrade throughput ({results['machine']}, {a.n} JPEG images {a.size}, {a.processes} processes, "
            f"best of {a.repeats})",
            "",
            "Load average (1, 5, 15 min) at the start: "
            + ", ".join(f"{x:.1f}" for x in results["load_avg_start"])
            + "; at the end: "
            + ", ".join(f"{x:.1f}" for x in results["load_avg_end"])
            + ".",
            "",
            "Paired: each degrade run follows its own bare run; the median of the per-pair ratios (the machine's",
            "speed drifts between runs on a shared host; a pair sees one state). Best of each: each loop's best run.",
            "",
            "| loop | images/s | vs bare (paired, median) | paired ratios | vs bare (best of each) "
            "| vs decode+encode+label copy |",
            "|---|---|---|---|---|---|",
            f"| bare decode+encode | {results['bare_img_s']:.1f} | | | 100% | |",
            f"| decode+encode+label copy | {results['bare_label_img_s']:.1f} | | | "
            f"{100 * results['bare_label_img_s'] / results['bare_img_s']:.0f}% | 100% |",
        ]
        results["paired_median"] = {k: float(np.median(v)) for k, v in results["paired_ratio"].items()}
        lines += [
            f"| degrade kind={k} (whole command: listing, records, labels) | {results['degrade_img_s'][k]:.1f} | "
            f"**{100 * results['paired_median'][k]:.0f}%** | "
            + ", ".join(f"{100 * x:.0f}" for x in results["paired_ratio"][k])
            + f" | {100 * results['ratio'][k]:.0f}% | {100 * results['ratio_vs_bare_label'][k]:.0f}% |"
            for k in results["ratio"]
        ]
        if a.breakdown:
            st = results["stages_ms"]
            lines += [
                "",
                f"Per image, one process, {a.breakdown} images alternating with the bare loop (ms):",
                "",
                "| kind | bare decode+encode | read | physics | label copy | encode+write | degrade total |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {k} | {v['bare']:.2f} | {v['read']:.2f} | {v['physics']:.2f} | {v['label']:.2f} | "
                f"{v['write']:.2f} | "
                f"{v['read'] + v['physics'] + v['label'] + v['write']:.2f} |"
                for k, v in st.items()
            ]
            lines += [
                "",
                "The same images, this process's CPU time per image (ms; user + system, time.process_time), and the",
                "throughput it implies: bare CPU / degrade CPU (other jobs' load moves this far less than wall time):",
                "",
                "| kind | bare decode+encode | read | physics | label copy | encode+write | degrade total | implied "
                "ratio |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for k, v in st.items():
                total = v["cpu_read"] + v["cpu_physics"] + v["cpu_label"] + v["cpu_write"]
                v["cpu_ratio"] = v["cpu_bare"] / total if total > 0 else float("nan")
                lines.append(
                    f"| {k} | {v['cpu_bare']:.2f} | {v['cpu_read']:.2f} | {v['cpu_physics']:.2f} | "
                    f"{v['cpu_label']:.2f} | {v['cpu_write']:.2f} | {total:.2f} | {100 * v['cpu_ratio']:.0f}% |"
                )
        (out / f"{a.name}.json").write_text(json.dumps(results, indent=2))
        (out / f"{a.name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
