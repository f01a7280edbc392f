"""The engines by implementation name, and a per-process cache of loaded detectors keyed by
version label and device.

The versions themselves live in the database (the registry app); a worker is given a
DetectorSpec and loads it here once, keeping at most CACHE_SIZE loaded. The web process never
loads any. Plain Python: the caller says which device (Django's DETECTOR_DEVICE in the workers).
"""

import importlib.util
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from .base import Detector, DetectorSpec, DetectorUnavailable
from .weights import WeightsMismatch

logger = logging.getLogger(__name__)

CACHE_SIZE = 3
# CPU threads for one detection, for engines that take a count (OpenVINO, LiteRT); 0 lets each
# runtime choose (all cores). The worker sets it from DETECTOR_THREADS before loading any.
threads = 0


def _mtcnn(spec: DetectorSpec, device: str) -> Detector:
    from .mtcnn import MTCNNDetector

    return MTCNNDetector(spec=spec, device=device, threads=threads)


def _mtcnn_openvino(spec: DetectorSpec, device: str) -> Detector:
    from .mtcnn_openvino import MTCNNOpenVINODetector

    return MTCNNOpenVINODetector(spec=spec, device=device, threads=threads)


def _blazeface(spec: DetectorSpec, device: str) -> Detector:
    from .blazeface import BlazeFaceDetector

    return BlazeFaceDetector(spec=spec, device=device, threads=threads)


def _cascade(spec: DetectorSpec, device: str) -> Detector:
    from .cascade import CascadeDetector

    return CascadeDetector(spec=spec, device=device, threads=threads)


def _hog(spec: DetectorSpec, device: str) -> Detector:
    from .hog import HogDetector

    return HogDetector(spec=spec, device=device, threads=threads)


# Where a version's model file is on this machine: a function of its sha256 that returns a
# local, checked copy (fetching it on first use). Django's registry app sets it
# (registry.artifacts.artifact_local_path); plain-Python callers may set their own.
artifact_source: Callable[[str], Path] | None = None


def _yolo_onnx(spec: DetectorSpec, device: str) -> Detector:
    from .yolo_onnx import YoloOnnxDetector

    if artifact_source is None:
        raise DetectorUnavailable(f"{spec.id} needs its model file, and nothing here can fetch one")
    digests = list(spec.weights.values())
    if len(digests) != 1:
        raise WeightsMismatch(f"{spec.id} must register exactly one weight (its model file), not {len(digests)}")
    return YoloOnnxDetector(spec=spec, device=device, threads=threads, model_path=artifact_source(digests[0]))


def _stub(spec: DetectorSpec, device: str) -> Detector:
    from .stub import StubDetector

    return StubDetector(spec=spec, device=device)


IMPLEMENTATIONS: dict[str, Callable[[DetectorSpec, str], Detector]] = {
    "mtcnn": _mtcnn,
    "mtcnn-openvino": _mtcnn_openvino,
    "stub": _stub,
    "blazeface": _blazeface,
    "cascade": _cascade,
    "yolo-onnx": _yolo_onnx,
    "hog": _hog,
}


# The modules each implementation runs on, for a worker to import in its parent process before
# forking its pool: the children then start with them in memory (shared, copy-on-write) instead
# of each importing them. Imports only: no model is loaded and no thread started.
PRELOAD: dict[str, tuple[str, ...]] = {
    "mtcnn": ("torch", "facenet_pytorch.models.mtcnn"),
    "mtcnn-openvino": ("openvino", "onnx", "cv2"),
    "blazeface": ("ai_edge_litert.interpreter",),
    "cascade": ("cv2",),
    "hog": ("cv2",),
    "yolo-onnx": ("openvino", "onnx", "cv2"),
}

# The implementations that can run on a GPU (DETECTOR_DEVICE=cuda; the stub ignores the device);
# every other one refuses any device but the CPU when it loads (Detector.require_cpu).
CUDA_IMPLEMENTATIONS = frozenset({"mtcnn", "stub"})

# The implementations whose one weight is an uploaded model file in the bucket (an artifact),
# not a file some installed package ships.
ARTIFACT_IMPLEMENTATIONS = ("yolo-onnx",)


def preload(implementation: str) -> None:
    import importlib

    for module in PRELOAD.get(implementation, ()):
        importlib.import_module(module)


def loadable(implementation: str, *, device: str = "cpu") -> bool:
    """Whether this machine could load the implementation on ``device``, as far as can be told
    without importing or loading anything (the web process calls it): a known implementation,
    on a device it runs on, with its runtime's packages installed. Whether CUDA itself answers
    is left to the worker, which fails jobs with detector_unavailable when it does not."""
    if implementation not in IMPLEMENTATIONS:
        return False
    if device != "cpu" and implementation not in CUDA_IMPLEMENTATIONS:
        return False
    # Top-level packages only: finding "facenet_pytorch.models.mtcnn" would import torch.
    return all(importlib.util.find_spec(module.split(".")[0]) is not None for module in PRELOAD.get(implementation, ()))


class UnknownDetector(LookupError):
    """No implementation has that name."""


_cache: "OrderedDict[tuple[str, str], Detector]" = OrderedDict()
_lock = threading.Lock()
# How many times this process loaded a detector: the "loaded once per process" tests read it.
load_count = 0


def get_detector(spec: DetectorSpec, *, device: str = "cpu") -> Detector:
    """The loaded detector for ``spec`` on ``device``, loading it on first use here."""
    return acquire(spec, device=device)[0]


def acquire(spec: DetectorSpec, *, device: str = "cpu") -> tuple[Detector, bool]:
    """(detector, loaded): as get_detector, and whether this very call loaded it (a cold start).
    Told by the call itself, not by a counter another thread (the pre-warm) may move meanwhile."""
    global load_count
    key = (spec.label, device)
    with _lock:
        detector = _cache.get(key)
        if detector is not None:
            _cache.move_to_end(key)
            return detector, False
        try:
            factory = IMPLEMENTATIONS[spec.implementation]
        except KeyError:
            raise UnknownDetector(spec.implementation) from None
        detector = factory(spec, device)
        load_count += 1
        _cache[key] = detector
        while len(_cache) > CACHE_SIZE:
            evicted, _ = _cache.popitem(last=False)
            logger.info("evicted detector %s from the cache", evicted[0])
        return detector, True


def clear_cache() -> None:
    with _lock:
        _cache.clear()
