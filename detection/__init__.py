"""Face detectors behind one interface, and a per-process cache of loaded versions."""

from .base import LANDMARK_NAMES, Detection, Detector, DetectorSpec
from .registry import UnknownDetector, get_detector

__all__ = ["Detection", "Detector", "DetectorSpec", "LANDMARK_NAMES", "UnknownDetector", "get_detector"]
