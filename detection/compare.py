"""How much two detectors agree on one photo: boxes matched one to one at IoU >= 0.5, as an F1.

Plain Python, used for rollouts' agreement guardrail (candidate against baseline on the same
photo) and for scoring a version against labelled boxes (detector_evaluate). Given the boxes'
labels, a box matches only a box of the same label (a "cat" is never a "dog", however well they
overlap); without them every box is of one kind, as for face models.
"""

from collections.abc import Sequence

from .labels import FACE

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


def match(
    found: Sequence[Box],
    expected: Sequence[Box],
    threshold: float = MATCH_IOU,
    *,
    found_labels: Sequence[str] | None = None,
    expected_labels: Sequence[str] | None = None,
) -> int:
    """How many boxes pair up one to one at IoU >= threshold (greedy, best overlaps first: the
    usual rule of detection benchmarks). With both label lists (one label per box), only boxes
    of the same label pair up."""
    labelled = found_labels is not None and expected_labels is not None
    if labelled and (len(found_labels) != len(found) or len(expected_labels) != len(expected)):
        raise ValueError("one label per box")
    pairs = sorted(
        (
            (iou(f, e), i, j)
            for i, f in enumerate(found)
            for j, e in enumerate(expected)
            if not labelled or found_labels[i] == expected_labels[j]
        ),
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


def agreement(
    candidate: Sequence[Box],
    baseline: Sequence[Box],
    threshold: float = MATCH_IOU,
    *,
    candidate_labels: Sequence[str] | None = None,
    baseline_labels: Sequence[str] | None = None,
) -> float:
    """F1 of the candidate's boxes against the baseline's, from 0 (nothing shared) to 1 (the same
    detections). Symmetric. With both label lists, a box matches only one of its own label (all
    "face": the same figure as without labels)."""
    matched = match(candidate, baseline, threshold, found_labels=candidate_labels, expected_labels=baseline_labels)
    return f1(matched, len(candidate), len(baseline))


def boxes_of(faces: Sequence[dict]) -> list[Box]:
    """Boxes from detections as the API shows them ({"box": {"x", "y", "width", "height"}, ...})."""
    return [(f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]) for f in faces]


def labels_of(faces: Sequence[dict], default: str = FACE) -> list[str]:
    """Labels from detections as the API shows them ({"label": ..., "box": ...}); ``default``
    for those stored without one (faces, before detections had labels)."""
    return [f.get("label", default) for f in faces]
