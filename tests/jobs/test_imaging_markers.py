"""The polyglot check's marker search (jobs.imaging._has_marker) finds exactly what a scan of
the lower-cased file finds, on both of its paths: a photo's few "<" and "%" looked at one by
one, and a hostile file full of them scanned whole."""

import random

import pytest

from jobs.imaging import _MARKER_CANDIDATES_MAX, _POLYGLOT_MARKERS, _has_marker
from tests.conftest import photo_bytes


def plain(data: bytes) -> bool:
    lowered = data.lower()
    return any(marker in lowered for marker in _POLYGLOT_MARKERS)


@pytest.mark.parametrize("marker", [b"<ScRiPt", b"<HTML", b"<?PHP", b"<!DocType", b"<svg", b"%PDF-", b"<IFRAME"])
@pytest.mark.parametrize("many", [False, True])
def test_every_marker_is_found_in_any_case_on_both_paths(marker, many):
    photo = photo_bytes("grace_hopper_1face.jpg")
    filler = b"<%" * (_MARKER_CANDIDATES_MAX if many else 10)
    for data in (photo + filler + marker, marker + photo, photo[:1000] + marker[:-1] + filler + photo[1000:]):
        assert _has_marker(data) is plain(data)
    assert _has_marker(photo + filler + marker) is True
    assert _has_marker(photo + marker[:-1]) is False  # cut short: not the marker


def test_random_bytes_give_the_same_answer_as_the_plain_scan():
    rng = random.Random(7)
    alphabet = b"<%!?-abcdehiflmnoprstvyzABCDEHIPST"
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        assert _has_marker(data) is plain(data), data
