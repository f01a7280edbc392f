"""Compare detector versions on tests/data/photos: detections against the faces a person counted.

    python bench/versions.py mtcnn@1.0.0 mtcnn@1.1.0

Per photo (and per odd encoding and tiled canvas derived from them), the number of detections,
and from the manifest's human counts the false positives (detections beyond the count) and
misses (count beyond detections). Prints figures; asserts nothing. No database needed.
"""

import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "face_detect_api.settings")


def main() -> None:
    import json

    import django

    django.setup()
    from PIL import Image

    from jobs.imaging import image_decode_rgb
    from detection.base import spec_from_file
    from detection.mtcnn import MTCNNDetector

    versions = sys.argv[1:] or ["mtcnn@1.0.0", "mtcnn@1.1.0"]
    testdata = ROOT / "tests" / "data" / "photos"
    manifest = json.loads((testdata / "manifest.json").read_text())
    cases = [(e["file"], image_decode_rgb((testdata / e["file"]).read_bytes()), e["faces"]) for e in manifest]
    # A 3x3 canvas of the photos with one face each: 9 faces among busy backgrounds.
    singles = [c for c in cases if c[2] == 1 and c[1].size[0] <= 600]
    canvas = Image.new("RGB", (600 * 3, 600 * 3), (255, 255, 255))
    for i in range(9):
        canvas.paste(singles[i % len(singles)][1], (600 * (i % 3), 600 * (i // 3)))
    cases.append(("canvas-3x3 (tiled singles)", canvas, 9))
    gray = io.BytesIO()
    cases[0][1].convert("L").save(gray, "JPEG")
    cases.append((f"{cases[0][0]} as grayscale JPEG", image_decode_rgb(gray.getvalue()), cases[0][2]))

    detectors = {v: MTCNNDetector(spec=spec_from_file(ROOT / "detector_versions" / f"{v}.json")) for v in versions}
    header = f"{'photo':40} {'faces':>5} " + " ".join(f"{v:>14}" for v in versions)
    print(header)
    totals = {v: [0, 0, 0] for v in versions}  # detections, false positives, misses
    for name, image, faces in cases:
        row = f"{name[:40]:40} {faces:>5} "
        for v, detector in detectors.items():
            found = len(detector.detect(image))
            fp, miss = max(0, found - faces), max(0, faces - found)
            totals[v][0] += found
            totals[v][1] += fp
            totals[v][2] += miss
            row += f"{found:>5} (+{fp} -{miss})".rjust(15)
        print(row)
    truth = sum(c[2] for c in cases)
    for v, (found, fp, miss) in totals.items():
        precision = (found - fp) / found if found else 1.0
        recall = (truth - miss) / truth if truth else 1.0
        print(f"{v}: {found} detections for {truth} faces; false positives {fp}, misses {miss}; "
              f"precision {precision:.3f}, recall {recall:.3f}")


if __name__ == "__main__":
    main()
