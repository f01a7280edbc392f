"""Read a torch state dict saved in torch's legacy (pre-1.6, non-zip) format into numpy arrays,
without torch.

facenet-pytorch's pnet.pt, rnet.pt and onet.pt are in that format. Reading them here lets the
OpenVINO engine (detection/mtcnn_openvino.py) build its networks from the very files the registry
checksums while the worker never imports torch (about 400 MB of resident memory and 3 s of start).

The unpickler is restricted: it resolves only the few names a state dict of float tensors
needs, so a file cannot make it run anything else (unlike a plain pickle.load). The layout it
reads is torch.serialization._legacy_load's: magic number, protocol version, system info, the
pickled object (tensors refer to storages by key), the list of storage keys, then each
storage's raw little-endian data behind its int64 element count.
"""

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """Not a legacy torch file of plain tensors."""


class _StorageType:
    def __init__(self, dtype) -> None:
        self.dtype = np.dtype(dtype)


class _TensorRef:
    """A tensor as pickled: its storage is filled in after the pickle is read."""

    def __init__(self, storage_key: str, offset: int, size: tuple, stride: tuple) -> None:
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, storages: dict) -> None:
        super().__init__(fh)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}:
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchFileError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, _numel, *_view = saved_id
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unexpected persistent id {kind!r}")
        self._storages.setdefault(key, storage_type.dtype)
        return key


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of a legacy-format torch state dict file."""
    data = Path(path).read_bytes()
    fh = io.BytesIO(data)
    safe = lambda: _Unpickler(fh, {}).load()  # noqa: E731 - header values are plain ints/dicts
    try:
        if safe() != MAGIC_NUMBER:
            raise TorchFileError(f"{path.name} is not a legacy torch file (new zip files are not read here)")
        if safe() != PROTOCOL_VERSION:
            raise TorchFileError(f"{path.name}: unknown torch file protocol")
        safe()  # system info: endianness and type sizes
        storages: dict[str, np.dtype] = {}
        result = _Unpickler(fh, storages).load()
        keys = _Unpickler(fh, {}).load()
        arrays = {}
        for key in keys:
            dtype = storages[key]
            (count,) = struct.unpack("<q", fh.read(8))
            nbytes = count * dtype.itemsize
            buffer = fh.read(nbytes)
            if len(buffer) != nbytes:
                raise TorchFileError(f"{path.name}: truncated storage {key}")
            arrays[key] = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"))
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError) as exc:
        raise TorchFileError(f"{path.name}: {exc}") from exc
    if not isinstance(result, dict):
        raise TorchFileError(f"{path.name} does not hold a state dict")
    tensors = {}
    for name, ref in result.items():
        if not isinstance(ref, _TensorRef):
            raise TorchFileError(f"{path.name}: {name} is not a tensor")
        flat = arrays[ref.storage_key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[ref.offset :], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride))
        tensors[name] = np.ascontiguousarray(view)
    return tensors
