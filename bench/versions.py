"""Every registered detector version side by side on tests/data/photos: found, missed, extra, and
milliseconds per photo.

    python bench/versions.py                          # every file in detector_versions/
    python bench/versions.py mtcnn@1.1.0 blazeface@1.0.0

The truth is what a person counted (tests/data/photos/manifest.json): `faces` for the label
"face", and `objects` ({"cat": 1, ...}) for other labels, where counted. Counts, not boxes: per
photo and label, found = min(detections, truth), missed = truth - found, extra = detections -
found. Besides the photos: a 3x3 canvas of the one-face photos (9 small faces among busy
backgrounds) and a grayscale JPEG. One process, one thread per detection, each version warmed up
first; ms is the median over the photos of the median of --repeat runs. Prints figures; asserts
nothing; no database needed.
"""

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cases():
    """(name, RGB image, {label: count}) for each photo and derived image."""
    from PIL import Image, ImageOps

    photos = ROOT / "tests" / "data" / "photos"
    manifest = json.loads((photos / "manifest.json").read_text())
    out = []
    for entry in manifest:
        with Image.open(photos / entry["file"]) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
        out.append((entry["file"], rgb, {"face": entry["faces"], **entry.get("objects", {})}))
    singles = [c for c in out if c[2]["face"] == 1 and c[1].width <= 600 and len(c[2]) == 1]
    canvas = Image.new("RGB", (600 * 3, 600 * 3), (255, 255, 255))
    for i in range(9):
        canvas.paste(singles[i % len(singles)][1], (600 * (i % 3), 600 * (i // 3)))
    out.append(("canvas 3x3 of one-face photos", canvas, {"face": 9}))
    gray = io.BytesIO()
    out[0][1].convert("L").save(gray, "JPEG")
    out.append((f"{out[0][0]} as grayscale JPEG", Image.open(gray).convert("RGB"), dict(out[0][2])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", help="name@version of files in detector_versions/ (default: all)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from detection import engines
    from detection.base import spec_from_file

    files = [ROOT / "detector_versions" / f"{v}.json" for v in args.versions] or sorted((ROOT / "detector_versions").glob("*.json"))
    engines.threads = 1
    data = cases()
    from bench.cpu import cpu_model

    print(f"# bench/versions.py, {time.strftime('%Y-%m-%d')}: {cpu_model()}, {len(data)} images, 1 thread, median of {args.repeat} runs\n")
    rows = []
    per_photo = {}
    for path in files:
        spec = spec_from_file(path)
        labels = json.loads(path.read_text()).get("labels", ["face"])
        detector = engines.IMPLEMENTATIONS[spec.implementation](spec, "cpu")
        detector.detect(data[0][1])  # warm-up
        found = missed = extra = 0
        times = []
        for name, image, truth in data:
            runs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                detections = detector.detect(image)
                runs.append((time.perf_counter() - t) * 1000)
            times.append(statistics.median(runs))
            counted = {}
            for d in detections:
                counted[d.label] = counted.get(d.label, 0) + 1
            cells = []
            for label in labels:
                n, want = counted.get(label, 0), truth.get(label)
                if want is None:  # nobody counted this label here: no truth to score against
                    cells.append(f"{label} {n}")
                    continue
                hit = min(n, want)
                found, missed, extra = found + hit, missed + want - hit, extra + n - hit
                cells.append(f"{label} {n}/{want}")
            per_photo.setdefault(name, {})[spec.id] = ", ".join(cells)
        rows.append((spec.id, ", ".join(labels), found, missed, extra, statistics.median(times), spec.implementation))

    print("| version | labels | found | missed | extra | ms per photo | engine |")
    print("|---|---|---|---|---|---|---|")
    for version, labels, found, missed, extra, ms, engine in rows:
        print(f"| {version} | {labels} | {found} | {missed} | {extra} | {ms:.0f} | {engine} |")
    ids = [r[0] for r in rows]
    print("\nPer image, detections/counted by a person:\n")
    print("| image | " + " | ".join(ids) + " |")
    print("|---|" + "---|" * len(ids))
    for name, cells in per_photo.items():
        print(f"| {name} | " + " | ".join(cells.get(v, "") for v in ids) + " |")


if __name__ == "__main__":
    main()
