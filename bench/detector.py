"""Detector figures: each engine against facenet-pytorch's own `MTCNN.detect` loop, on the same
photos with the same threads; start time and memory of a process serving each; and throughput of
N processes x T threads on this machine's cores.

    python bench/detector.py                      # CPU: facenet loop, mtcnn@1.1.0 (torch), mtcnn@1.2.0 (OpenVINO)
    python bench/detector.py --device cuda        # the torch engine on a GPU, next to the CPU loop
    python bench/detector.py --engines mtcnn@1.2.0 blazeface@1.0.0 --repeat 3

Every figure comes from fresh processes (spawned, so none inherits another's threads or loaded
modules). Prints figures; asserts nothing. docs/benchmarks.md shows its output.
"""

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FACENET = "facenet-loop"  # facenet_pytorch.MTCNN(...).detect(image, landmarks=True), its defaults


def _images(testdata: str, distinct: bool):
    """The photos as RGB images. ``distinct``: each also at two other sizes, so that no size
    repeats (engines that specialise per input shape pay for each new one)."""
    from PIL import Image

    images = []
    for path in sorted(Path(testdata).glob("*.[pj][np]g")):
        image = Image.open(path)
        image.load()
        image = image.convert("RGB")
        images.append((path.name, image))
        if distinct:
            for factor in (0.83, 1.21):
                size = (round(image.width * factor), round(image.height * factor))
                images.append((f"{path.name}@{factor}", image.resize(size, Image.Resampling.BILINEAR)))
    return images


def _load(engine: str, device: str, threads: int):
    """(detect function, what it is) in this process, with ``threads`` CPU threads."""
    if engine == FACENET:
        import torch
        from facenet_pytorch import MTCNN

        if threads:
            torch.set_num_threads(threads)
        mtcnn = MTCNN(device=device)
        return (lambda image: mtcnn.detect(image, landmarks=True)), f"facenet-pytorch MTCNN.detect, torch {torch.__version__}"
    from detection import engines
    from detection.base import spec_from_file

    spec = spec_from_file(ROOT / "detector_versions" / f"{engine}.json")
    if spec.implementation == "mtcnn" and threads:
        import torch

        torch.set_num_threads(threads)
    engines.threads = threads
    detector = engines.get_detector(spec, device=device)
    return detector.detect, spec.implementation


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker(engine, device, threads, testdata, distinct, repeat, start_barrier, results):
    """One process: load, warm up (unless distinct), then detect every photo ``repeat`` times."""
    started = time.perf_counter()
    detect, what = _load(engine, device, threads)
    ready_s = time.perf_counter() - started
    images = _images(testdata, distinct)
    if not distinct:
        for _, image in images:
            detect(image)  # warm-up: first calls allocate, and per-shape engines specialise
    if start_barrier is not None:
        start_barrier.wait()
    per_photo = {name: [] for name, _ in images}
    faces = {}
    began = time.perf_counter()
    for _ in range(repeat):
        for name, image in images:
            t = time.perf_counter()
            out = detect(image)
            per_photo[name].append((time.perf_counter() - t) * 1000)
            faces[name] = len(out[0]) if engine == FACENET and out[0] is not None else (0 if engine == FACENET else len(out))
    elapsed = time.perf_counter() - began
    results.put(
        {
            "what": what,
            "ready_s": ready_s,
            "rss_mb": _rss_mb(),
            "per_photo": per_photo,
            "faces": faces,
            "elapsed": elapsed,
            "count": repeat * len(images),
        }
    )


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return _rss_mb()


def _sizes_worker(engine, threads, testdata, count, marks, results):
    """One process: one photo at ``count`` distinct random sizes; its RSS after each mark."""
    import random

    from PIL import Image

    detect, _ = _load(engine, "cpu", threads)
    photo = Image.open(Path(testdata) / "grace_hopper_1face.jpg").convert("RGB")
    rng, sizes = random.Random(7), []
    while len(sizes) < count:
        size = (rng.randrange(300, 1600), rng.randrange(300, 1600))
        if size not in sizes:
            sizes.append(size)
    rss, began = [], time.perf_counter()
    for n, size in enumerate(sizes, 1):
        detect(photo.resize(size))
        if n in marks:
            rss.append(_current_rss_mb())
    results.put({"rss": rss, "photos_per_s": count / (time.perf_counter() - began)})


def run(engine, device, processes, threads, args, distinct=False):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    barrier = ctx.Barrier(processes) if processes > 1 else None
    procs = [
        ctx.Process(target=_worker, args=(engine, device, threads, args.testdata, distinct, args.repeat, barrier, results))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    out = [results.get() for _ in procs]
    for p in procs:
        p.join()
    # Throughput of the layout: all photos of all processes over the slowest process's time.
    return {
        **out[0],
        "photos_per_s": sum(o["count"] for o in out) / max(o["elapsed"] for o in out),
        "rss_mb": max(o["rss_mb"] for o in out),
        "ready_s": max(o["ready_s"] for o in out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engines", nargs="*", help=f"{FACENET} and/or files in detector_versions/ (name@version)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", type=int, default=100, help="distinct photo sizes for the memory figure")
    parser.add_argument("--testdata", default=str(ROOT / "tests" / "data" / "photos"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    engines = args.engines or ([FACENET, "mtcnn@1.1.0", "mtcnn@1.2.0"] if args.device == "cpu" else [FACENET, "mtcnn@1.1.0"])
    from bench.cpu import cpu_model

    print(
        f"# bench/detector.py, {time.strftime('%Y-%m-%d')}: device={args.device}, {cores} cores of {cpu_model()}, "
        f"photos {Path(args.testdata).relative_to(ROOT) if Path(args.testdata).is_relative_to(ROOT) else args.testdata}, "
        f"{args.repeat} runs each after a warm-up\n"
    )

    # 1. Latency per photo, one process with every core, and its start and memory.
    single = {engine: run(engine, args.device, 1, cores, args) for engine in engines}
    base = single[engines[0]]
    names = list(base["per_photo"])
    print(f"## One process, {cores} threads: median ms per photo (faces found)\n")
    print("| photo | " + " | ".join(engines) + " |")
    print("|---|" + "---|" * len(engines))
    for name in names:
        cells = [f"{statistics.median(single[e]['per_photo'][name]):.0f} ({single[e]['faces'][name]})" for e in engines]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| photos/s | " + " | ".join(f"{single[e]['photos_per_s']:.2f}" for e in engines) + " |")
    print(
        "| speed vs " + engines[0] + " | " + " | ".join(f"{single[e]['photos_per_s'] / base['photos_per_s']:.2f}x" for e in engines) + " |"
    )
    print("| ready after start (import + load) | " + " | ".join(f"{single[e]['ready_s']:.1f} s" for e in engines) + " |")
    print("| peak RSS of the process | " + " | ".join(f"{single[e]['rss_mb']:.0f} MB" for e in engines) + " |")
    print("\nEngines: " + "; ".join(f"{e}: {single[e]['what']}" for e in engines) + "\n")

    if args.device != "cpu":
        return
    # 2. Layouts on these cores: N processes x T threads, throughput of all together.
    layouts = [(1, 1), (1, cores)] + ([(cores, 1)] if cores > 1 else [])
    print(f"## Throughput, photos/s, of processes x threads on {cores} cores (warm, photos repeated)\n")
    print("| engine | " + " | ".join(f"{p} x {t}" for p, t in layouts) + " |")
    print("|---|" + "---|" * len(layouts))
    for engine in engines:
        figures = [run(engine, "cpu", p, t, args)["photos_per_s"] for p, t in layouts]
        print(f"| {engine} | " + " | ".join(f"{f:.2f}" for f in figures) + " |")

    # 3. Photos of sizes never seen before (no warm-up for them): per-shape specialisation costs.
    print(f"\n## Every photo a new size (each photo at 3 sizes, 1 process x {cores} threads, no warm-up)\n")
    print("| engine | photos/s |")
    print("|---|---|")
    distinct_args = argparse.Namespace(**{**vars(args), "repeat": 1})
    for engine in engines:
        print(f"| {engine} | {run(engine, 'cpu', 1, cores, distinct_args, distinct=True)['photos_per_s']:.2f} |")

    # 4. Memory as photo sizes keep coming: an engine that caches per shape must level off.
    marks = (10, 30, args.sizes)
    print(
        f"\n## Memory after N distinct photo sizes (one photo at {args.sizes} random sizes, 300-1,600 px a side, "
        f"1 process x {cores} threads)\n"
    )
    print("| engine | " + " | ".join(f"RSS after {n}" for n in marks) + " | photos/s |")
    print("|---|" + "---|" * (len(marks) + 1))
    for engine in engines:
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        p = ctx.Process(target=_sizes_worker, args=(engine, cores, args.testdata, args.sizes, marks, results))
        p.start()
        out = results.get()
        p.join()
        print(f"| {engine} | " + " | ".join(f"{mb:.0f} MB" for mb in out["rss"]) + f" | {out['photos_per_s']:.2f} |")


if __name__ == "__main__":
    main()
