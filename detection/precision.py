"""The numeric precision a version runs at: part of the version, never the CPU's choice.

Runtimes lower precision on their own where the hardware allows it: OpenVINO's CPU plugin infers
in bfloat16 by default on CPUs with AVX512_BF16 or AMX (most rented servers today), and torch runs
cuDNN convolutions in TF32 on Ampere and later GPUs. Either changes the faces (a CMYK photo's box
moved 5.6 px, a false positive appeared on another) while the version id stays the same, which
breaks the registry's promise: the same photo on the same version gives the same faces. So every
engine that can drift pins the precision its version records in ``settings["precision"]``; a
version that names none runs at ``DEFAULT`` (f32), which is what every registered version was
measured and described at.

Only f32 is offered today. A lower precision would be a version of its own, with its own faces
measured (docs/models.md), never a silent default.
"""

from typing import Any

from .errors import DetectorUnavailable

DEFAULT = "f32"
SUPPORTED = ("f32",)


def precision_of(spec_id: str, settings: dict[str, Any]) -> str:
    """The precision a version's settings ask for (f32 when they name none); an unknown one is
    refused rather than run at some other precision."""
    precision = settings.get("precision", DEFAULT)
    if precision not in SUPPORTED:
        raise DetectorUnavailable(f"{spec_id} asks for precision {precision!r}; this service runs {', '.join(SUPPORTED)} only")
    return precision


# The implementations whose runtime could lower precision by itself (OpenVINO on bfloat16 CPUs,
# torch's cuDNN in TF32, LiteRT's XNNPACK on a file that allows fp16). The registry records their
# precision explicitly, f32 when a version file names none, so the record says what runs.
PINNED_IMPLEMENTATIONS = ("mtcnn", "mtcnn-openvino", "blazeface", "yolo-onnx")


def settings_with_precision(implementation: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as the registry records them: with ``precision`` for the pinned engines."""
    if implementation in PINNED_IMPLEMENTATIONS and "precision" not in settings:
        return {"precision": DEFAULT, **settings}
    return settings
