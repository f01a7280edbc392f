"""MTCNN on OpenVINO: the same three networks and weights as detection/mtcnn.py, faster on the
CPU, and without torch in the process.

At load, the registered (checksummed) pnet.pt, rnet.pt and onet.pt of facenet-pytorch's wheel are
read with detection.torchfile (no torch), built into three ONNX graphs with onnx.helper, layer for
layer as facenet_pytorch.models.mtcnn defines them, and compiled by OpenVINO for this CPU. Nothing
is exported ahead of time or stored beside the registry's files: the registered checksums are the
whole provenance.

The steps around the networks follow facenet_pytorch.models.utils.detect_face (2.5.3) step by
step, so that the faces match the torch engine's (tests/detection/test_mtcnn_openvino.py holds
the tolerances: same count, boxes within 1 px, confidence within 0.001). Where the time went in
facenet-pytorch's loop, and what is done here instead (docs/benchmarks.md has the figures):
  - the networks: OpenVINO's CPU kernels run PNet about twice as fast as torch's (and ONNX
    Runtime's, measured here before choosing);
  - "area" resizing (torch's adaptive average pooling) of each pyramid level and of each candidate
    box: read from one summed-area table of the photo, instead of one interpolate call per box;
  - the refinement stages run all candidates through RNet and ONet as one batch;
  - the arrays stay float32 numpy end to end: no copies between numpy and torch.
The torch engine stays the one for GPUs: this engine runs on the CPU only.
"""

import logging
import threading
from typing import Any

import cv2
import numpy as np

from .boxes import nms_arrays
from .mtcnn import MTCNNDetector
from .openvino_cpu import compiled_precision_check, cpu_compile_config
from .torchfile import load_state_dict
from .weights import WeightsMismatch, verify_weights

logger = logging.getLogger(__name__)

OPSET = 17

# (kind, torch module name, arguments) as facenet_pytorch.models.mtcnn's forward() runs them.
_TRUNK = {
    "pnet": [
        ("conv", "conv1"),
        ("prelu", "prelu1"),
        ("pool", (2, 2)),
        ("conv", "conv2"),
        ("prelu", "prelu2"),
        ("conv", "conv3"),
        ("prelu", "prelu3"),
    ],
    "rnet": [
        ("conv", "conv1"),
        ("prelu", "prelu1"),
        ("pool", (3, 2)),
        ("conv", "conv2"),
        ("prelu", "prelu2"),
        ("pool", (3, 2)),
        ("conv", "conv3"),
        ("prelu", "prelu3"),
        ("flatten", None),
        ("dense", "dense4"),
        ("prelu", "prelu4"),
    ],
    "onet": [
        ("conv", "conv1"),
        ("prelu", "prelu1"),
        ("pool", (3, 2)),
        ("conv", "conv2"),
        ("prelu", "prelu2"),
        ("pool", (3, 2)),
        ("conv", "conv3"),
        ("prelu", "prelu3"),
        ("pool", (2, 2)),
        ("conv", "conv4"),
        ("prelu", "prelu4"),
        ("flatten", None),
        ("dense", "dense5"),
        ("prelu", "prelu5"),
    ],
}
# Output name -> (layer, softmax?): the order each net's forward() returns them in.
_HEADS = {
    "pnet": {"reg": ("conv4_2", False), "prob": ("conv4_1", True)},
    "rnet": {"reg": ("dense5_2", False), "prob": ("dense5_1", True)},
    "onet": {"reg": ("dense6_2", False), "points": ("dense6_3", False), "prob": ("dense6_1", True)},
}


def build_graph(net: str, weights: dict[str, np.ndarray]) -> bytes:
    """The ONNX model (serialized) of one MTCNN network with these weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers = [], []
    conv_input = net == "pnet"  # PNet is fully convolutional: its heads are 1x1 convolutions

    def const(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    x = "input"
    spatial = True
    for i, (kind, arg) in enumerate(_TRUNK[net]):
        out = f"t{i}"
        if kind == "conv":
            w = weights[f"{arg}.weight"]
            nodes.append(
                helper.make_node(
                    "Conv", [x, const(f"{arg}.w", w), const(f"{arg}.b", weights[f"{arg}.bias"])], [out], kernel_shape=list(w.shape[2:])
                )
            )
        elif kind == "prelu":
            slope = weights[f"{arg}.weight"]
            # torch's PReLU slope is per channel: axis 1, broadcast over H and W when spatial.
            nodes.append(helper.make_node("PRelu", [x, const(f"{arg}.s", slope.reshape(-1, 1, 1) if spatial else slope)], [out]))
        elif kind == "pool":
            kernel, stride = arg
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[kernel, kernel], strides=[stride, stride], ceil_mode=1))
        elif kind == "flatten":
            # facenet permutes (N, C, H, W) -> (N, W, H, C) before flattening: the dense weights expect it.
            nodes.append(helper.make_node("Transpose", [x], [f"{out}p"], perm=[0, 3, 2, 1]))
            nodes.append(helper.make_node("Flatten", [f"{out}p"], [out], axis=1))
            spatial = False
        elif kind == "dense":
            nodes.append(
                helper.make_node(
                    "Gemm", [x, const(f"{arg}.w", weights[f"{arg}.weight"]), const(f"{arg}.b", weights[f"{arg}.bias"])], [out], transB=1
                )
            )
        x = out
    outputs = []
    for name, (layer, softmax) in _HEADS[net].items():
        w, b = weights[f"{layer}.weight"], weights[f"{layer}.bias"]
        head = name if not softmax else f"{name}_logits"
        if conv_input:
            nodes.append(helper.make_node("Conv", [x, const(f"{layer}.w", w), const(f"{layer}.b", b)], [head], kernel_shape=[1, 1]))
        else:
            nodes.append(helper.make_node("Gemm", [x, const(f"{layer}.w", w), const(f"{layer}.b", b)], [head], transB=1))
        if softmax:
            nodes.append(helper.make_node("Softmax", [head], [name], axis=1))
        dims = ["n", w.shape[0], "oh", "ow"] if conv_input else ["n", w.shape[0]]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    side = {"pnet": None, "rnet": 24, "onet": 48}[net]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, side or "h", side or "w"])]
    graph = helper.make_graph(nodes, f"mtcnn_{net}", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="face_detect_api")
    onnx.checker.check_model(model)
    return model.SerializeToString()


# --- resizing: torch.nn.functional.interpolate(mode="area"), i.e. adaptive average pooling ----
# Every resize in MTCNN averages rectangles of the one input image: each pyramid level, and each
# candidate box cut out and brought to 24 or 48 px. One summed-area table (integral image) of the
# photo gives any rectangle's sum from four reads, so the photo is summed once, not once per
# level and per box. Sums of 8-bit pixels are exact in float64.


def _pool_bins(size_in, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each output cell's input range, as adaptive_avg_pool computes
    them: start = floor(i * in / out), end = ceil((i + 1) * in / out). ``size_in`` may be an array
    of sizes (one per box): the result is then (len(size_in), size_out)."""
    i = np.arange(size_out, dtype=np.int64)
    size_in = np.atleast_1d(np.asarray(size_in, dtype=np.int64))[:, None]
    return (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)


class SummedArea:
    """The summed-area table of an (H, W, 3) uint8 image, and area resizes read from it."""

    def __init__(self, image: np.ndarray) -> None:
        self.height, self.width = image.shape[:2]
        # (H + 1, W + 1, 3), channels last so that each read fetches a pixel's three sums at once.
        # Integer sums are exact; int32 holds 255 * H * W up to 8.4 megapixels, float64 beyond.
        depth = cv2.CV_32S if self.height * self.width <= 8_000_000 else cv2.CV_64F
        self.table = cv2.integral(np.ascontiguousarray(image), sdepth=depth)

    def resize(self, height: int, width: int) -> np.ndarray:
        """The whole image area-resized to (3, height, width), float32."""
        r0, r1 = (b[0] for b in _pool_bins(self.height, height))
        c0, c1 = (b[0] for b in _pool_bins(self.width, width))
        # Rows first (whole-row copies), then columns of the much smaller result.
        rows = np.take(self.table, r1, axis=0) - np.take(self.table, r0, axis=0)
        sums = np.take(rows, c1, axis=1) - np.take(rows, c0, axis=1)
        inverse = (1.0 / ((r1 - r0)[:, None] * (c1 - c0)[None, :])).astype(np.float32)
        out = sums.astype(np.float32)
        out *= inverse[:, :, None]
        return out.transpose(2, 0, 1)

    def crops(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, side: int) -> np.ndarray:
        """Each rectangle [y0:y1, x0:x1] area-resized to side x side: (N, 3, side, side) float32."""
        r0, r1 = _pool_bins(y1 - y0, side)
        c0, c1 = _pool_bins(x1 - x0, side)
        r0, r1 = ((r + y0[:, None])[:, :, None] for r in (r0, r1))
        c0, c1 = ((c + x0[:, None])[:, None, :] for c in (c0, c1))
        # The four corners of every cell of every box, read in one take from the flat table.
        stride = self.table.shape[1]
        corners = np.stack([r1 * stride + c1, r0 * stride + c1, r1 * stride + c0, r0 * stride + c0])
        t = np.take(self.table.reshape(-1, 3), corners, axis=0)  # (4, N, side, side, 3)
        sums = t[0] - t[1] - t[2] + t[3]
        out = sums.astype(np.float32)
        out /= ((r1 - r0) * (c1 - c0)).astype(np.float32)[..., None]
        return out.transpose(0, 3, 1, 2)


# --- the steps of detect_face around the networks, in numpy ----------------------------------


# torchvision.ops.nms, as facenet-pytorch's detect_face calls it.
_nms = nms_arrays


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet's nms_numpy(method="Min"): overlap over the smaller box, with +1 areas."""
    x1, y1, x2, y2 = (boxes[:, k].copy() for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size > 0:
        i = order[-1]
        keep.append(i)
        rest = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = (w * h) / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Square each box around its centre (facenet's rerec)."""
    boxes = boxes.copy()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] = boxes[:, 0] + reg[:, 0] * w
    boxes[:, 1] = boxes[:, 1] + reg[:, 1] * h
    boxes[:, 2] = boxes[:, 2] + reg[:, 2] * w
    boxes[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return boxes


def _crops(area: SummedArea, boxes: np.ndarray, side: int) -> np.ndarray:
    """Each box cut from the image (clamped to it, as facenet's pad() does: not padded) and
    area-resized to side x side, normalised: (N, 3, side, side)."""
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
    ex, ey = np.minimum(b[:, 2], area.width), np.minimum(b[:, 3], area.height)
    # facenet cuts [y - 1 : ey, x - 1 : ex]. An empty cut cannot come from a box that overlaps the
    # image (facenet would fail on one); it is given one pixel here rather than a division by zero.
    x0, y0 = x - 1, y - 1
    x1, y1 = np.maximum(ex, x0 + 1), np.maximum(ey, y0 + 1)
    return (area.crops(x0, y0, x1, y1, side) - 127.5) * 0.0078125


class MTCNNOpenVINODetector(MTCNNDetector):
    """MTCNNDetector with its loading and network passes replaced: the same settings, the same
    preprocessing (max_side) and postprocessing (min_confidence, clamping, order)."""

    name = "mtcnn-openvino"

    def _load(self) -> None:
        self.require_cpu("OpenVINO engine", 'use a version with the torch engine (implementation "mtcnn", e.g. mtcnn@1.1.0)')
        import openvino

        paths = verify_weights(self.spec.implementation, self.spec.weights)
        core = openvino.Core()
        config = cpu_compile_config(spec_id=self.spec.id, settings=self.settings, threads=self.threads)
        self.compile_config = config
        self._nets = {}
        for net in ("pnet", "rnet", "onet"):
            path = paths.get(f"{net}.pt")
            if path is None:
                raise WeightsMismatch(f"{self.spec.id} does not register {net}.pt")
            compiled = core.compile_model(core.read_model(build_graph(net, load_state_dict(path)), b""), "CPU", config)
            compiled_precision_check(compiled, config, spec_id=self.spec.id, what=net)
            self._nets[net] = (compiled, compiled.create_infer_request(), [o.get_any_name() for o in compiled.outputs])
        # An infer request runs one input at a time: a detector shared by threads takes turns.
        self._lock = threading.Lock()
        logger.info("loaded detector %s on cpu (OpenVINO %s, %s threads)", self.model_version, openvino.__version__, self.threads or "all")

    def _run(self, net: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        compiled, request, names = self._nets[net]
        with self._lock:
            results = request.infer({0: batch})
            return {name: np.array(results[output]) for name, output in zip(names, compiled.outputs)}

    def predict(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        s = self.settings
        thresholds = s["thresholds"]
        area = SummedArea(inputs["array"])
        h, w = area.height, area.width
        m = 12.0 / s["min_face_size"]
        minl = min(h, w) * m
        scales = []
        scale = m
        while minl >= 12:
            scales.append(scale)
            scale *= s["factor"]
            minl *= s["factor"]

        # Stage 1: PNet over the pyramid; per level, candidates above the threshold, NMS 0.5.
        candidates = []
        for scale in scales:
            level = area.resize(int(h * scale + 1), int(w * scale + 1))
            out = self._run("pnet", ((level - 127.5) * 0.0078125)[None])
            prob, reg = out["prob"][0, 1], out["reg"][0]
            ys, xs = np.nonzero(prob >= thresholds[0])
            if len(ys) == 0:
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float32)
            scale32 = np.float32(scale)
            q1 = np.floor((2 * cells + 1) / scale32)
            q2 = np.floor((2 * cells + 12) / scale32)
            boxes = np.concatenate([q1, q2, prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1).astype(np.float32)
            candidates.append(boxes[_nms(boxes[:, :4], boxes[:, 4], 0.5)])
        if not candidates:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        boxes = np.concatenate(candidates)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        boxes = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * regw,
                boxes[:, 1] + boxes[:, 6] * regh,
                boxes[:, 2] + boxes[:, 7] * regw,
                boxes[:, 3] + boxes[:, 8] * regh,
                boxes[:, 4],
            ],
            axis=1,
        )
        boxes = _rerec(boxes)

        # Stage 2: RNet on every candidate at once.
        out = self._run("rnet", _crops(area, boxes, 24))
        score = out["prob"][:, 1]
        passed = score > thresholds[1]
        boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
        reg = out["reg"][passed]
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _rerec(_bbreg(boxes[pick], reg[pick]))
        if len(boxes) == 0:
            return np.zeros((0, 5)), np.zeros((0, 5, 2))

        # Stage 3: ONet, landmarks, final NMS over the smaller box ("Min").
        out = self._run("onet", _crops(area, boxes, 48))
        score = out["prob"][:, 1]
        passed = score > thresholds[2]
        boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
        reg, points = out["reg"][passed], out["points"][passed]
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i[:, None] * points[:, :5] + boxes[:, 0, None] - 1
        points_y = h_i[:, None] * points[:, 5:10] + boxes[:, 1, None] - 1
        points = np.stack([points_x, points_y], axis=2)
        boxes = _bbreg(boxes, reg)
        pick = _nms_min(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[pick].astype(np.float64), points[pick].astype(np.float64)
