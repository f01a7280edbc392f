"""Agreement between two detectors' boxes: one to one at IoU >= 0.5, and, given labels, only
within a label."""

import pytest

from detection.compare import agreement, boxes_of, labels_of, match

A, B, C = (0, 0, 10, 10), (20, 0, 10, 10), (40, 0, 10, 10)


def test_without_labels_boxes_match_by_overlap_alone():
    assert match([A, B], [B, A]) == 2 and agreement([A, B], [A]) == pytest.approx(2 / 3)


def test_all_faces_agree_as_without_labels():
    """Every label "face": the figures of face models are what they were."""
    for candidate, baseline in (([A, B], [A]), ([A], [C]), ([], []), ([A, B, C], [C, B, A])):
        labelled = agreement(candidate, baseline, candidate_labels=["face"] * len(candidate), baseline_labels=["face"] * len(baseline))
        assert labelled == agreement(candidate, baseline)


def test_a_box_matches_only_one_of_its_own_label():
    """The same boxes with swapped labels share nothing; one relabelled box of two halves it."""
    assert match([A, B], [A, B], found_labels=["cat", "dog"], expected_labels=["dog", "cat"]) == 0
    assert agreement([A, B], [A, B], candidate_labels=["cat", "dog"], baseline_labels=["dog", "cat"]) == 0.0
    assert agreement([A, B], [A, B], candidate_labels=["cat", "dog"], baseline_labels=["cat", "person"]) == 0.5


def test_the_best_overlap_of_the_same_label_wins():
    """Greedy by IoU within a label: a cat overlapping a dog better than another cat still pairs
    with the cat."""
    cat, dog = (0, 0, 10, 10), (1, 0, 10, 10)
    found = [(0, 0, 10, 10)]
    assert match(found, [dog, cat], found_labels=["cat"], expected_labels=["dog", "cat"]) == 1


def test_one_label_per_box():
    with pytest.raises(ValueError):
        match([A, B], [A], found_labels=["cat"], expected_labels=["cat"])


def test_labels_of_reads_stored_detections_and_old_faces():
    """Detections as the API shows them; shadow runs stored before labels are faces."""
    stored = [{"label": "cat", "box": {"x": 1, "y": 2, "width": 3, "height": 4}}, {"box": {"x": 0, "y": 0, "width": 1, "height": 1}}]
    assert labels_of(stored) == ["cat", "face"] and boxes_of(stored) == [(1, 2, 3, 4), (0, 0, 1, 1)]
