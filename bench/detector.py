"""Detector figures: load time, memory, and per-photo latency on tests/data/photos.

Prints figures; asserts nothing. Run with `make bench` (or `python bench/detector.py --device cuda`).
"""

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "face_detect_api.settings")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--version", default="mtcnn@1.0.0", help="a file in detector_versions/")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--testdata", default=str(ROOT / "tests" / "data" / "photos"))
    args = parser.parse_args()

    import django

    django.setup()
    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from jobs.imaging import image_decode_rgb
    from detection.base import spec_from_file
    from detection.mtcnn import MTCNNDetector

    imported = time.perf_counter()
    detector = MTCNNDetector(spec=spec_from_file(ROOT / "detector_versions" / f"{args.version}.json"), device=args.device)
    loaded = time.perf_counter()
    print(f"version={args.version} device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    print(f"import torch+facenet: {imported - started:.2f} s; load MTCNN: {(loaded - imported) * 1000:.0f} ms; "
          f"peak RSS after load: {rss_mb():.0f} MB")

    photos = sorted(Path(args.testdata).glob("*.[pj][np]g"))
    images = [(p.name, image_decode_rgb(p.read_bytes())) for p in photos]
    detector.detect(images[0][1])  # warm-up
    all_ms = []
    print(f"{'photo':32} {'size':>10} {'faces':>5} {'median ms':>10} {'min ms':>8}")
    for name, image in images:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            faces = detector.detect(image)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
        all_ms.extend(times)
        print(f"{name:32} {image.width:>4}x{image.height:<5} {len(faces):>5} {statistics.median(times):>10.1f} {min(times):>8.1f}")
    total_s = sum(all_ms) / 1000
    print(f"overall: {len(all_ms)} detections, median {statistics.median(all_ms):.1f} ms, "
          f"{len(all_ms) / total_s:.1f} photos/s in one process; peak RSS {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
