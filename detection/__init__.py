"""Detectors behind one interface, and a per-process cache of loaded versions. Plain Python: no
Django here (a test checks it), so engines run and are tested on their own."""

from .base import LANDMARK_NAMES, Detection, Detector, DetectorSpec, DetectorUnavailable
from .engines import UnknownDetector, get_detector

__all__ = ["Detection", "Detector", "DetectorSpec", "DetectorUnavailable", "LANDMARK_NAMES", "UnknownDetector", "get_detector"]
