"""How much two detectors agree on one photo: boxes matched one to one at IoU >= 0.5, as an F1.

Plain Python, used for rollouts' agreement guardrail (candidate against baseline on the same
photo) and for scoring a version against labelled boxes (detector_evaluate).
"""

from collections.abc import Sequence

Box = tuple[float, float, float, float]  # x, y, width, height

MATCH_IOU = 0.5


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes given as (x, y, width, height)."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    width = min(ax2, bx2) - max(a[0], b[0])
    height = min(ay2, by2) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match(found: Sequence[Box], expected: Sequence[Box], threshold: float = MATCH_IOU) -> int:
    """How many boxes pair up one to one at IoU >= threshold (greedy, best overlaps first: the
    usual rule of detection benchmarks)."""
    pairs = sorted(
        ((iou(f, e), i, j) for i, f in enumerate(found) for j, e in enumerate(expected)),
        reverse=True,
    )
    used_found, used_expected, matched = set(), set(), 0
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i in used_found or j in used_expected:
            continue
        used_found.add(i)
        used_expected.add(j)
        matched += 1
    return matched


def f1(matched: int, found: int, expected: int) -> float:
    """F1 from counts; two empty answers agree perfectly."""
    if found == 0 and expected == 0:
        return 1.0
    return 2 * matched / (found + expected)


def agreement(candidate: Sequence[Box], baseline: Sequence[Box], threshold: float = MATCH_IOU) -> float:
    """F1 of the candidate's boxes against the baseline's, from 0 (nothing shared) to 1 (the same
    faces). Symmetric."""
    return f1(match(candidate, baseline, threshold), len(candidate), len(baseline))


def boxes_of(faces: Sequence[dict]) -> list[Box]:
    """Boxes from faces as the API shows them ({"box": {"x", "y", "width", "height"}, ...})."""
    return [(f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]) for f in faces]
