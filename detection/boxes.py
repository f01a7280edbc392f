"""Box and score arithmetic the engines share: greedy non-maximum suppression in two forms (over
Python lists, for OpenCV's cascades and HOG; over numpy arrays with torchvision's rule, for MTCNN's
OpenVINO engine and the Ultralytics family) and a logistic that cannot overflow."""

import math

import numpy as np


def nms(boxes: list[tuple[float, float, float, float]], scores: list[float], iou: float) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, best first. Ties are broken
    by position so that the result does not depend on the order OpenCV's threads found them."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], boxes[i]))
    kept: list[int] = []
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        for j in kept:
            a1, b1, a2, b2 = boxes[j]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            union = area + max(0.0, a2 - a1) * max(0.0, b2 - b1) - inter
            if union > 0 and inter / union > iou:
                break
        else:
            kept.append(i)
    return kept


def nms_arrays(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS, best first: torchvision.ops.nms's rule (IoU without the +1; a
    box is dropped when its IoU with a kept, better one is above ``iou``; ties keep the earlier
    candidate, by a stable sort). mtcnn@1.2.0's equality with 1.1.0 rests on this exact order."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2) - np.maximum(x1[i], x1), 0)
        h = np.maximum(np.minimum(y2[i], y2) - np.maximum(y1[i], y1), 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: nan, never above iou
            overlap = inter / (area[i] + area - inter)
        suppressed |= overlap > iou
    return np.asarray(keep, dtype=np.int64)


def logistic(z: float) -> float:
    """1 / (1 + e^-z), computed without overflow for any z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
