"""Detector versions keyed by ``name@version``, and a per-process cache of loaded ones.

A version is an implementation plus fixed settings: changing a setting makes a new version.
Each worker process loads a version once (at process start for the configured one, lazily for
others) and keeps at most ``CACHE_SIZE`` loaded; the web process never loads any.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.conf import settings

from .base import Detector

logger = logging.getLogger(__name__)

CACHE_SIZE = 2


def _mtcnn(version: str, config: dict[str, Any], device: str) -> Detector:
    from .mtcnn import MTCNNDetector

    return MTCNNDetector(version=version, settings=config, device=device)


def _stub(version: str, config: dict[str, Any], device: str) -> Detector:
    from .stub import StubDetector

    return StubDetector(version=version, settings=config, device=device)


# id -> (factory, settings). mtcnn@1.0.0 is facenet-pytorch's defaults (see mtcnn.DEFAULT_SETTINGS).
VERSIONS: dict[str, tuple[Callable[[str, dict[str, Any], str], Detector], dict[str, Any]]] = {
    "mtcnn@1.0.0": (_mtcnn, {}),
    # For unit tests only: it finds a "face" in any image that is not a flat colour.
    "stub@0.0.0": (_stub, {}),
}


class UnknownDetector(LookupError):
    """No detector version is registered under that id."""


_cache: "OrderedDict[tuple[str, str], Detector]" = OrderedDict()
_lock = threading.Lock()
# How many times this process loaded a detector: the "loaded once per process" tests read it.
load_count = 0


def registered_versions() -> list[str]:
    return sorted(VERSIONS)


def get_detector(version_id: str | None = None) -> Detector:
    """The loaded detector for ``version_id`` (default: settings.DETECTOR_MODEL), loading it on
    first use in this process."""
    global load_count
    version_id = version_id or settings.DETECTOR_MODEL
    device = settings.DETECTOR_DEVICE
    key = (version_id, device)
    with _lock:
        detector = _cache.get(key)
        if detector is not None:
            _cache.move_to_end(key)
            return detector
        try:
            factory, config = VERSIONS[version_id]
        except KeyError:
            raise UnknownDetector(version_id) from None
        _, version = version_id.split("@", 1)
        detector = factory(version, config, device)
        load_count += 1
        _cache[key] = detector
        while len(_cache) > CACHE_SIZE:
            evicted, _ = _cache.popitem(last=False)
            logger.info("evicted detector %s from the cache", evicted[0])
        return detector


def clear_cache() -> None:
    with _lock:
        _cache.clear()
