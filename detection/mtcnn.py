"""MTCNN (facenet-pytorch) behind the Detector interface.

The weights are the three small files facenet-pytorch ships in its wheel: nothing is downloaded.
They are checked against the version's registered sha256 before loading; a mismatch refuses.
"""

import logging
import math
from typing import Any

import numpy as np
from PIL import Image

from .base import LANDMARK_NAMES, Detection, Detector, DetectorSpec, DetectorUnavailable
from .weights import WeightsMismatch, verify_weights

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = {
    # facenet-pytorch's own defaults.
    "min_face_size": 20,
    "thresholds": [0.6, 0.7, 0.7],
    "factor": 0.709,
    # Faces below this confidence are dropped after detection (0: keep all MTCNN returns).
    "min_confidence": 0.0,
    # Images whose longest side is larger are downscaled to it before detection (boxes are scaled
    # back): bounds CPU time and memory on large photos. 0 disables it.
    "max_side": 2048,
}


class MTCNNDetector(Detector):
    name = "mtcnn"

    def __init__(self, *, spec: DetectorSpec, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(spec=spec, device=device)
        self.settings = {**DEFAULT_SETTINGS, **spec.settings}
        self.threads = threads  # CPU threads per detection; 0: the engine's default (all cores)
        self._load()

    def _load(self) -> None:
        # torch is imported here, not at module level: the web process never pays for it.
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise DetectorUnavailable(f"DETECTOR_DEVICE={self.device} but CUDA is not available")
        self._torch = torch
        self._torch_device = torch.device(self.device)
        if self.threads:
            torch.set_num_threads(self.threads)  # process-wide: torch has no per-model setting
        # f32 means f32 on a GPU too: torch runs cuDNN convolutions (all of MTCNN) in TF32 by
        # default on Ampere and later, a 10-bit mantissa that moves boxes under the same version.
        # Process-wide flags; every version here asks for f32, so no other model needs them on.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

        # The files are checked against the registered checksums before torch reads them.
        paths = verify_weights("mtcnn", self.spec.weights)
        nets = {}
        for net_name, net_cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
            path = paths.get(f"{net_name}.pt")
            if path is None:
                raise WeightsMismatch(f"{self.spec.id} does not register {net_name}.pt")
            net = net_cls(pretrained=False)
            net.load_state_dict(torch.load(path, map_location=self._torch_device, weights_only=True))
            nets[net_name] = net.to(self._torch_device).eval()
        self._pnet, self._rnet, self._onet = nets["pnet"], nets["rnet"], nets["onet"]
        logger.info("loaded detector %s on %s", self.model_version, self.device)

    @property
    def min_input_side(self) -> int:
        """The shortest side MTCNN can search: facenet-pytorch's pyramid starts at the scale
        m = 12 / min_face_size and has a first level only if min(h, w) * m >= 12; below that it
        raises on an empty pyramid. Computed the way detect_face does it, in floats."""
        m = 12.0 / self.settings["min_face_size"]
        side = max(1, math.floor(self.settings["min_face_size"]) - 1)
        while side * m < 12:
            side += 1
        return side

    def input_size(self, inputs: dict[str, Any]) -> tuple[int, int]:
        return super().input_size(inputs["array"])

    def preprocess(self, image: Image.Image) -> dict[str, Any]:
        scale = 1.0
        max_side = int(self.settings["max_side"] or 0)
        if max_side and max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        return {"array": np.asarray(image, dtype=np.uint8), "scale": scale}

    def predict(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        s = self.settings
        with self._torch.inference_mode():
            batch_boxes, batch_points = detect_face(
                inputs["array"],
                s["min_face_size"],
                self._pnet,
                self._rnet,
                self._onet,
                s["thresholds"],
                s["factor"],
                self._torch_device,
            )
        # One image in, one entry out: boxes (n, 5) with the score last, points (n, 5, 2).
        boxes = np.asarray(batch_boxes[0], dtype=np.float64).reshape(-1, 5)
        points = np.asarray(batch_points[0], dtype=np.float64).reshape(-1, 5, 2)
        return boxes, points

    def postprocess(self, raw: tuple[np.ndarray, np.ndarray], inputs: dict[str, Any]) -> list[Detection]:
        boxes, points = raw
        scale = inputs["scale"]
        height, width = inputs["array"].shape[:2]
        # Clamp to the image in the network's coordinates, then scale back to the original's.
        limit_x, limit_y = width / scale, height / scale
        min_confidence = float(self.settings["min_confidence"])
        detections = []
        for box, pts in zip(boxes, points):
            confidence = float(box[4])
            if confidence < min_confidence:
                continue
            x1, y1, x2, y2 = (float(v) / scale for v in box[:4])
            detections.append(
                Detection(
                    x1=min(max(x1, 0.0), limit_x),
                    y1=min(max(y1, 0.0), limit_y),
                    x2=min(max(x2, 0.0), limit_x),
                    y2=min(max(y2, 0.0), limit_y),
                    confidence=min(max(confidence, 0.0), 1.0),
                    landmarks={name: (float(pt[0]) / scale, float(pt[1]) / scale) for name, pt in zip(LANDMARK_NAMES, pts)},
                )
            )
        detections.sort(key=lambda d: (-d.confidence, d.x1, d.y1))
        return detections
