"""Box arithmetic shared by the engines that find boxes themselves (OpenCV's cascades and HOG)."""


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
