"""Face detectors behind one interface, a registry keyed by ``name@version``, a per-process cache."""

from .base import Detection, Detector, LANDMARK_NAMES
from .registry import UnknownDetector, get_detector, registered_versions

__all__ = ["Detection", "Detector", "LANDMARK_NAMES", "UnknownDetector", "get_detector", "registered_versions"]
