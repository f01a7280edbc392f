"""Checking an uploaded model file before it is accepted: in a child process with a time and a
memory limit, so that a hostile or broken file can cost at most that.

``artifact_check(path, ...)`` runs ``python -m detection.artifact_check`` on the file and returns
what it found (layout, input size, classes) or raises ArtifactRefused naming the problem. The
child reads the file with onnx's protobuf parser (nothing is ever unpickled) and checks, in order:
  - it is one complete ONNX model (not some other bytes, not cut short: onnx's checker);
  - it is self-contained: no tensor keeps its data outside the file (an external_data location
    such as ``../../etc/passwd`` would make the runtime read that path);
  - every operator is a standard ONNX one (no custom domain, no local functions);
  - one input, an image: [1, 3, H, W] with H and W fixed or dynamic, within MAX_SIDE (a dynamic
    one runs at settings.input_size, else at the size the model was exported at: its ``imgsz``);
  - one detections output: [1, 4+nc, N] (v8) or [1, N, 5+nc] (v5), sizes within bounds;
  - the labels (the manifest's, else the model's ``names``) match the class count;
then compiles it with OpenVINO and runs one inference on a blank (grey) image, whose output must
have the declared shape. Plain Python (no Django); the limits are the caller's.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The largest input side accepted (Ultralytics exports at 640; 1280 for the large models).
MAX_SIDE = 4096
# The most candidates and classes an output may declare.
MAX_CANDIDATES = 1_000_000
MAX_CLASSES = 10_000
ALLOWED_DOMAINS = ("", "ai.onnx")
FORMAT = "onnx"


class ArtifactRefused(Exception):
    """The file is not accepted; ``code`` names the problem for the API, ``message`` explains."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ArtifactFacts:
    """What the check found: what the registry records about the file."""

    format: str
    layout: str
    input_size: tuple[int, int]  # (width, height)
    num_classes: int
    names: list[str] | None  # the model's own class names (its metadata), if any
    opset: int


# --- the checks, run in the child -----------------------------------------------------------------


def _subgraphs(graph):
    """The graph and every graph nested in a node attribute (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.HasField("g"):
                yield from _subgraphs(attr.g)
            for sub in attr.graphs:
                yield from _subgraphs(sub)


def _tensors(graph):
    """Every tensor stored in a graph: initializers, sparse ones, constants in node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _dims(value_info) -> list[int | str]:
    """A value's declared shape: ints for fixed dimensions, names (or "?") for dynamic ones."""
    shape = value_info.type.tensor_type.shape
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _size_valid(size: Any) -> bool:
    return (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 32 <= v <= MAX_SIDE for v in size)
    )


def _dynamic_input_size(settings: dict[str, Any], metadata: dict[str, str]) -> tuple[int, int]:
    """(width, height) to run an export whose input height or width is dynamic at: the
    manifest's ``settings.input_size`` ([width, height]) when it gives one (the operator's
    explicit choice), else the size the model was exported at (Ultralytics' ``imgsz`` metadata,
    "[height, width]" or one side, read as a literal), else refused. Every photo is then
    letterboxed into this one size, so the engine compiles one shape."""
    import ast

    size = settings.get("input_size")
    if size is not None:
        if not _size_valid(size):
            raise ArtifactRefused("artifact_input", f"settings.input_size must be [width, height], each 32 to {MAX_SIDE} pixels.")
        return int(size[0]), int(size[1])
    raw = metadata.get("imgsz")
    if raw is None:
        raise ArtifactRefused(
            "artifact_input",
            "The input size is dynamic and the model has no imgsz metadata: settings.input_size must give [width, height].",
        )
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, list | tuple) or not _size_valid(list(value)):
        raise ArtifactRefused(
            "artifact_metadata", f"The model's imgsz metadata is not [height, width] of 32 to {MAX_SIDE} pixels: {raw[:100]!r}."
        )
    height, width = value
    return int(width), int(height)


def inspect(path: Path, *, labels: list[str] | None, settings: dict[str, Any]) -> ArtifactFacts:
    """The static checks (see the module docstring); raises ArtifactRefused."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import TensorProto

    from .yolo_onnx import layout_of, num_classes_of, parse_names

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ArtifactRefused("artifact_not_onnx", f"The file is not a complete ONNX model ({type(exc).__name__}).") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ArtifactRefused("artifact_not_onnx", "The file is not an ONNX model (no graph).")
    for graph in _subgraphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
                where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
                raise ArtifactRefused(
                    "artifact_external_data",
                    f"Tensor {tensor.name!r} keeps its data outside the file ({where!r}); an artifact must be one self-contained file.",
                )
    domains = {op.domain for op in model.opset_import} | {node.domain for g in _subgraphs(model.graph) for node in g.node}
    custom = sorted(d for d in domains if d not in ALLOWED_DOMAINS)
    if custom or len(model.functions):
        raise ArtifactRefused(
            "artifact_custom_operators",
            "The model uses operators outside standard ONNX "
            f"({', '.join(custom) or 'local functions'}); only the standard domain is served.",
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ArtifactRefused("artifact_not_onnx", f"The ONNX model is not valid: {str(exc).splitlines()[0][:300]}") from None
    opset = max((op.version for op in model.opset_import if op.domain in ALLOWED_DOMAINS), default=0)

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ArtifactRefused("artifact_input", f"The model has {len(inputs)} inputs; a detector takes one image.")
    dims = _dims(inputs[0])
    if (
        inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT
        or len(dims) != 4
        or dims[1] != 3
        or not (dims[0] == 1 or isinstance(dims[0], str))
    ):
        raise ArtifactRefused("artifact_input", f"The input {inputs[0].name!r} is {dims}; a detector takes one float image [1, 3, H, W].")
    height, width = dims[2], dims[3]
    fixed = [d for d in (height, width) if isinstance(d, int)]
    if any(d < 1 or d > MAX_SIDE for d in fixed):
        raise ArtifactRefused("artifact_sizes", f"The input declares {dims}; sides must be 1 to {MAX_SIDE} pixels.")
    metadata = {p.key: p.value for p in model.metadata_props}
    if len(fixed) != 2:
        width, height = _dynamic_input_size(settings, metadata)

    if len(model.graph.output) < 1:
        raise ArtifactRefused("artifact_output", "The model has no output.")
    out_dims = _dims(model.graph.output[0])
    if len(out_dims) != 3:
        raise ArtifactRefused("artifact_output", f"The output is {out_dims}; detections are [1, 4+classes, N] or [1, N, 5+classes].")
    if any(isinstance(d, int) and (d < 1 or d > MAX_CANDIDATES) for d in out_dims):
        raise ArtifactRefused("artifact_sizes", f"The output declares {out_dims}; each side must be 1 to {MAX_CANDIDATES}.")

    names = None
    if "names" in metadata:
        try:
            names = parse_names(metadata["names"])
        except (ValueError, SyntaxError) as exc:
            raise ArtifactRefused("artifact_metadata", f"The model's names metadata is not a class list: {exc}") from None
    wanted = labels if labels else names
    if wanted is None:
        raise ArtifactRefused("artifact_labels", "The model has no names metadata: the manifest must list its labels.")
    from .base import ArtifactInvalid

    try:
        layout = settings.get("layout")
        # By the class count of the labels given, else of the model's own names, else by the
        # shape alone; a count that fits no layout is then reported as the labels' fault.
        for known in (wanted, names):
            if layout is None and known:
                try:
                    layout = layout_of(tuple(out_dims), len(known))
                except ArtifactInvalid:
                    layout = None
        if layout is None:
            layout = layout_of(tuple(out_dims), None)
        if layout not in ("v5", "v8"):
            raise ArtifactInvalid(f"layout {layout!r} is not v5 or v8")
        num_classes = num_classes_of(tuple(out_dims), layout)
    except ArtifactInvalid as exc:
        raise ArtifactRefused("artifact_output", f"The output is not detections: {exc}.") from None
    if num_classes > MAX_CLASSES:
        raise ArtifactRefused("artifact_sizes", f"The output declares {num_classes} classes; at most {MAX_CLASSES}.")
    if len(wanted) != num_classes:
        source = "labels" if labels else "the model's names"
        raise ArtifactRefused("artifact_labels", f"{len(wanted)} {source} for a model of {num_classes} classes.")
    return ArtifactFacts(
        format=FORMAT, layout=layout, input_size=(int(width), int(height)), num_classes=num_classes, names=names, opset=opset
    )


def run_once(path: Path, facts: ArtifactFacts, *, threads: int = 1) -> None:
    """Compile the model with OpenVINO and run one blank image; the output must have the shape
    the layout declares. Raises ArtifactRefused."""
    import numpy as np
    import openvino

    width, height = facts.input_size
    try:
        core = openvino.Core()
        model = core.read_model(str(path))
        if model.inputs[0].get_partial_shape().is_dynamic:
            model.reshape({model.inputs[0]: [1, 3, height, width]})
        compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "CPU_RUNTIME_CACHE_CAPACITY": 0}
        )
        blank = np.full((1, 3, height, width), 114 / 255, dtype=np.float32)
        output = np.asarray(compiled.create_infer_request().infer({0: blank})[compiled.outputs[0]])
    except Exception as exc:  # OpenVINO's own errors: the file does not run
        raise ArtifactRefused(
            "artifact_does_not_run", f"The model does not run: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"
        ) from None
    attributes = output.shape[1] if facts.layout == "v8" else (output.shape[2] if output.ndim == 3 else -1)
    extra = 4 if facts.layout == "v8" else 5
    if output.ndim != 3 or output.shape[0] != 1 or attributes != extra + facts.num_classes:
        raise ArtifactRefused(
            "artifact_output", f"On a blank image the model returned {list(output.shape)}, not detections of {facts.num_classes} classes."
        )
    if not np.isfinite(output).all():
        raise ArtifactRefused("artifact_output", "On a blank image the model returned NaN or infinite values.")


def _child(argv: list[str]) -> int:
    request = json.loads(argv[1])
    path = Path(argv[0])
    try:
        facts = inspect(path, labels=request.get("labels"), settings=request.get("settings") or {})
        run_once(path, facts)
    except ArtifactRefused as exc:
        print(json.dumps({"ok": False, "code": exc.code, "message": exc.message}))
        return 0
    print(json.dumps({"ok": True, "facts": {**facts.__dict__, "input_size": list(facts.input_size)}}))
    return 0


# --- the parent ----------------------------------------------------------------------------------


def artifact_check(path: Path, *, labels: list[str] | None, settings: dict[str, Any], timeout: float, memory_bytes: int) -> ArtifactFacts:
    """Check the model file at ``path`` in a child process limited to ``timeout`` seconds and
    ``memory_bytes`` of address space. Returns its facts; raises ArtifactRefused."""

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    request = json.dumps({"labels": labels, "settings": settings})
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "detection.artifact_check", str(path), request],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=limit,
            env=env,
            cwd=str(Path(path).parent),
        )
    except subprocess.TimeoutExpired:
        raise ArtifactRefused("artifact_check_timeout", f"Checking the model took longer than {timeout:g} s.") from None
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if done.returncode != 0 or not isinstance(result, dict):
        # Killed or out of memory: MemoryError, std::bad_alloc or a signal.
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if "MemoryError" in done.stderr or "bad_alloc" in done.stderr or done.returncode < 0:
            raise ArtifactRefused(
                "artifact_check_memory", f"Checking the model went past its memory limit or was killed ({tail[0][:200]})."
            )
        raise ArtifactRefused("artifact_does_not_run", f"Checking the model failed ({tail[0][:200]}).")
    if not result.get("ok"):
        raise ArtifactRefused(result["code"], result["message"])
    facts = result["facts"]
    return ArtifactFacts(
        format=facts["format"],
        layout=facts["layout"],
        input_size=tuple(facts["input_size"]),
        num_classes=facts["num_classes"],
        names=facts["names"],
        opset=facts["opset"],
    )


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
