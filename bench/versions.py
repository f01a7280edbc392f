"""Every registered detector version side by side on tests/data/photos: found, missed, extra, and
milliseconds per photo.

    python bench/versions.py                          # every file in detector_versions/
    python bench/versions.py mtcnn@1.1.0 blazeface@1.0.0
    python bench/versions.py --upload best.onnx[,manifest.json] ...   # uploaded models too

An uploaded model (``--upload``, repeatable: an ONNX file and optionally its upload manifest) goes
the way an upload and a worker's first job go, timed step by step, a cold start: "fetch" (hash it
and copy it into an empty cache folder, as a worker does with the bucket's bytes: a local copy
here, so no network), "check" (detection.artifact_check in its child process, as registration
does), "compile" (the engine built: OpenVINO reads and compiles it), "first" (the first
detection); then the photos warm, as for every version.

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


# The uploaded models' local copies by sha256: the engines' artifact_source here.
UPLOADED: dict[str, Path] = {}


def uploaded(argument: str, cache: Path) -> tuple[object, list[str], dict[str, float]]:
    """(spec, labels, cold-start timings in ms) for ``MODEL.onnx[,MANIFEST.json]``, registered
    in memory the way registry.artifacts registers an upload (no database, no bucket)."""
    import hashlib
    import shutil

    from detection import engines
    from detection.artifact_check import artifact_check
    from detection.base import DetectorSpec
    from detection.precision import settings_with_precision
    from detection.yolo_onnx import labels_from_names

    model, _, manifest_path = argument.partition(",")
    model = Path(model)
    manifest = (
        json.loads(Path(manifest_path).read_text())
        if manifest_path
        else {"name": model.stem.lower().replace(".", "-"), "version": "0.0.0", "implementation": "yolo-onnx", "settings": {}}
    )
    timings = {}
    t = time.perf_counter()
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    local = cache / f"{digest}.onnx"
    shutil.copyfile(model, local)
    timings["fetch"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    facts = artifact_check(model, labels=manifest.get("labels"), settings=manifest["settings"], timeout=300, memory_bytes=4 << 30)
    timings["check"] = (time.perf_counter() - t) * 1000
    classes, _ = labels_from_names(manifest.get("labels") or facts.names)
    settings = settings_with_precision(
        "yolo-onnx", {**manifest["settings"], "layout": facts.layout, "input_size": list(facts.input_size), "classes": classes}
    )
    version_id = f"{manifest['name']}@{manifest['version']}"
    spec = DetectorSpec(
        id=version_id, label=f"{version_id} (uploaded)", implementation="yolo-onnx", settings=settings, weights={"model.onnx": digest}
    )
    UPLOADED[digest] = local
    engines.artifact_source = UPLOADED.__getitem__  # what registry.artifacts does from the bucket
    return spec, classes, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", help="name@version of files in detector_versions/ (default: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--upload",
        action="append",
        default=[],
        metavar="MODEL.onnx[,MANIFEST.json]",
        help="an uploaded model to add (repeatable); its cold start is timed",
    )
    args = parser.parse_args()

    from detection import engines
    from detection.base import spec_from_file

    files = [ROOT / "detector_versions" / f"{v}.json" for v in args.versions] or (
        [] if args.upload else sorted((ROOT / "detector_versions").glob("*.json"))
    )
    engines.threads = 1
    data = cases()
    from bench.cpu import cpu_model

    print(f"# bench/versions.py, {time.strftime('%Y-%m-%d')}: {cpu_model()}, {len(data)} images, 1 thread, median of {args.repeat} runs\n")
    rows = []
    per_photo = {}
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="bench-model-cache-"))
    colds = []
    todo = [("file", path) for path in files] + [("upload", upload) for upload in args.upload]
    for kind, path in todo:
        if kind == "upload":
            spec, labels, cold = uploaded(path, cache)
            t = time.perf_counter()
            detector = engines.IMPLEMENTATIONS[spec.implementation](spec, "cpu")
            cold["compile"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            detector.detect(data[0][1])
            cold["first"] = (time.perf_counter() - t) * 1000
            runs = []
            for _ in range(max(args.repeat, 3)):
                t = time.perf_counter()
                detector.detect(data[0][1])
                runs.append((time.perf_counter() - t) * 1000)
            cold["warm"] = statistics.median(runs)
            colds.append((spec.id, cold))
        else:
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
                    if n or len(labels) <= 3:  # a model of many labels: only those it found
                        cells.append(f"{label} {n}")
                    continue
                hit = min(n, want)
                found, missed, extra = found + hit, missed + want - hit, extra + n - hit
                cells.append(f"{label} {n}/{want}")
            per_photo.setdefault(name, {})[spec.id] = ", ".join(cells) or "nothing"
        shown = ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} labels ({', '.join(labels[:2])}, ...)"
        rows.append((spec.id, shown, found, missed, extra, statistics.median(times), spec.implementation))

    print("| version | labels | found | missed | extra | ms per photo | engine |")
    print("|---|---|---|---|---|---|---|")
    for version, labels, found, missed, extra, ms, engine in rows:
        print(f"| {version} | {labels} | {found} | {missed} | {extra} | {ms:.0f} | {engine} |")
    if colds:
        print(f"\nCold start of the uploaded versions, ms ({data[0][0]} for the detections):\n")
        print("| version | fetch (local copy) | check | compile | first detection | cold total | warm detection |")
        print("|---|---|---|---|---|---|---|")
        for version, c in colds:
            total = c["fetch"] + c["check"] + c["compile"] + c["first"]
            print(
                f"| {version} | {c['fetch']:.0f} | {c['check']:.0f} | {c['compile']:.0f} | {c['first']:.0f} "
                f"| {total:.0f} | {c['warm']:.0f} |"
            )
    ids = [r[0] for r in rows]
    print("\nPer image, detections/counted by a person:\n")
    print("| image | " + " | ".join(ids) + " |")
    print("|---|" + "---|" * len(ids))
    for name, cells in per_photo.items():
        print(f"| {name} | " + " | ".join(cells.get(v, "") for v in ids) + " |")


if __name__ == "__main__":
    main()
