"""Small Ultralytics-layout ONNX models with known outputs, built with onnx.helper for the tests.

Each model's output is a fixed table of candidates (so the detections are known by hand) plus,
in one score cell, the mean of the input tensor (so a test sees what preprocessing fed it).
"""

from pathlib import Path

import numpy as np

OPSET = 17


def candidates_v8(rows: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """[(cx, cy, w, h, [class scores])] -> the v8 output table (1, 4 + nc, N)."""
    table = np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in rows], dtype=np.float32)
    return table.T[None]


def candidates_v5(rows: list[tuple[float, float, float, float, float, list[float]]]) -> np.ndarray:
    """[(cx, cy, w, h, objectness, [class scores])] -> the v5 output table (1, N, 5 + nc)."""
    return np.array([[cx, cy, w, h, obj, *scores] for cx, cy, w, h, obj, scores in rows], dtype=np.float32)[None]


def build(
    table: np.ndarray,
    *,
    size: tuple[int, int] = (64, 64),
    mean_cell: tuple[int, int, int] | None = None,
    names: dict[int, str] | None = None,
    metadata: dict[str, str] | None = None,
    dynamic: bool = False,
    op_domain: str = "",
) -> bytes:
    """The serialized model: input "images" (1, 3, H, W), output "output0" = table + mean(images)
    at ``mean_cell`` (an index into the table; nowhere when None). ``names`` is written as
    Ultralytics does (a Python dict literal)."""
    from onnx import TensorProto, helper, numpy_helper

    width, height = size
    mask = np.zeros_like(table)
    if mean_cell is not None:
        mask[mean_cell] = 1.0
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(mask, "mask")]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0, domain=op_domain),
        helper.make_node("Mul", ["mask", "mean"], ["masked"]),
        helper.make_node("Add", ["table", "masked"], ["output0"]),
    ]
    in_dims = [1, 3, "h", "w"] if dynamic else [1, 3, height, width]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))],
        inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if op_domain:
        opsets.append(helper.make_opsetid(op_domain, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tests")
    props = dict(metadata or {})
    if names is not None:
        props["names"] = repr(names)
        props.setdefault("imgsz", repr([height, width]))
        props.setdefault("task", "detect")
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


# A v8 model of three classes with known candidates (input 64 x 64): two overlapping "person"
# boxes (the weaker one suppressed), a "traffic light" box overlapping the first person (kept:
# another class), one below the threshold, and a "dog" whose score is the input's mean.
V8_NAMES = {0: "person", 1: "traffic light", 2: "dog"}
V8_ROWS = [
    (32.0, 32.0, 20.0, 20.0, [0.9, 0.0, 0.0]),  # person, kept
    (33.0, 33.0, 20.0, 20.0, [0.8, 0.0, 0.0]),  # person, IoU 0.82 with the first: suppressed
    (32.0, 32.0, 18.0, 18.0, [0.0, 0.7, 0.0]),  # traffic light: other class, kept
    (10.0, 10.0, 4.0, 4.0, [0.1, 0.0, 0.0]),  # below min_confidence
    (48.0, 20.0, 8.0, 8.0, [0.0, 0.0, 0.0]),  # dog: score = mean of the input (cell [0, 6, 4])
]
V8_MEAN_CELL = (0, 6, 4)

# The same detections in the v5 layout (objectness times class score).
V5_NAMES = V8_NAMES
V5_ROWS = [
    (32.0, 32.0, 20.0, 20.0, 1.0, [0.9, 0.0, 0.0]),
    (33.0, 33.0, 20.0, 20.0, 1.0, [0.8, 0.0, 0.0]),
    (32.0, 32.0, 18.0, 18.0, 0.875, [0.0, 0.8, 0.0]),  # 0.7 after the objectness
    (10.0, 10.0, 4.0, 4.0, 0.5, [0.2, 0.0, 0.0]),
    (48.0, 20.0, 8.0, 8.0, 1.0, [0.0, 0.0, 0.0]),
]
V5_MEAN_CELL = (0, 4, 7)


def tiny_v8(**kwargs) -> bytes:
    kwargs.setdefault("names", V8_NAMES)
    return build(candidates_v8(V8_ROWS), mean_cell=V8_MEAN_CELL, **kwargs)


def tiny_v5(**kwargs) -> bytes:
    kwargs.setdefault("names", V5_NAMES)
    return build(candidates_v5(V5_ROWS), mean_cell=V5_MEAN_CELL, **kwargs)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
