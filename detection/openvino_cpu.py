"""How every OpenVINO engine compiles for the CPU, in one place (MTCNN's networks, uploaded
Ultralytics exports). The module imports nothing of OpenVINO: the engines do, when they load."""

from typing import Any

from .base import DetectorUnavailable
from .precision import precision_of


def cpu_compile_config(*, spec_id: str, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    """The compile configuration of a version: LATENCY (one photo at a time per process) on
    ``threads`` cores (0: OpenVINO's choice, all), at the version's precision, with no cache of
    shape-specialised kernels."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        # No CPU pinning: OpenVINO would pin each process's threads to the same first cores, so
        # two single-threaded pool processes would share one core (measured: 2 x 1 no faster
        # than 1 x 1).
        "ENABLE_CPU_PINNING": False,
        # The version's precision, never the CPU's: without it OpenVINO infers in bfloat16 on
        # any CPU with AVX512_BF16 or AMX, and the detections change (detection/precision.py).
        "INFERENCE_PRECISION_HINT": precision_of(spec_id, settings),
        # No cache of shape-specialised kernels: MTCNN's pyramid brings about ten new input
        # shapes with every new photo size, and the default cache grew a process by ~6 MB a
        # size without bound (1.15 GB after 120 sizes). Measured: no slower without it.
        "CPU_RUNTIME_CACHE_CAPACITY": 0,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def compiled_precision_check(compiled, config: dict[str, Any], *, spec_id: str, what: str) -> None:
    """What the plugin will really do, read back from a compiled model: a runtime that ignored
    the precision hint would give other detections under the same version id, so it is refused."""
    running = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if running != config["INFERENCE_PRECISION_HINT"]:
        raise DetectorUnavailable(f"{spec_id}: OpenVINO compiled {what} at {running}, not {config['INFERENCE_PRECISION_HINT']}")
