"""A restricted reader for pickled PyTorch modules (``torch.save(model)``).

``torch.load(weights_only=True)`` cannot read a whole pickled module, and a normal
``torch.load`` would import and run whatever the file names. This reader opens torch's
zip format itself (``<name>/data.pkl`` plus one ``<name>/data/<key>`` record per storage)
and unpickles ``data.pkl`` with an unpickler that:

- rebuilds tensors, storages and numpy arrays only,
- maps known model classes (the seed pipeline's, ``torch.nn`` modules, ``DataParallel``)
  to inert stand-ins that just record their state,
- refuses every other global with a :class:`CheckpointError` naming it.

Nothing from the file is ever imported or executed. Parameters and buffers are then
recovered by walking the stand-ins' ``_parameters``, ``_buffers`` and ``_modules``.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from retinadet.errors import CheckpointError

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray

# Classes of the seed pipeline (``retinanet`` package) that may appear in its pickled models.
SEED_CLASSES = frozenset(
    {
        "retinanet.model.ResNet",
        "retinanet.model.PyramidFeatures",
        "retinanet.model.RegressionModel",
        "retinanet.model.ClassificationModel",
        "retinanet.utils.BasicBlock",
        "retinanet.utils.Bottleneck",
        "retinanet.anchors.Anchors",
        "retinanet.utils.BBoxTransform",
        "retinanet.utils.ClipBoxes",
        "retinanet.losses.FocalLoss",
    }
)
WRAPPER_CLASSES = frozenset(
    {
        "torch.nn.parallel.data_parallel.DataParallel",
        "torch.nn.parallel.distributed.DistributedDataParallel",
    }
)
# Python 2 names that protocol-2 pickles use.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
        "complex64", "complex128", "double", "float", "half", "long", "int", "short",
    )
}
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class Inert:
    """Stand-in for a class named in a pickle: it accepts any state and runs nothing."""

    global_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_inert_args"] = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["_inert_state"] = state
        if isinstance(slots, dict):
            self.__dict__.update(slots)

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


_STANDINS: dict[str, type] = {}


def _standin(full_name: str) -> type:
    cls = _STANDINS.get(full_name)
    if cls is None:
        cls = type(full_name.rsplit(".", 1)[-1], (Inert,), {"global_name": full_name})
        _STANDINS[full_name] = cls
    return cls


class _StorageType:
    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    # Backward hooks and metadata are ignored: they could only name callables.
    if not isinstance(storage, torch.storage.TypedStorage):
        raise CheckpointError(f"malformed tensor record (storage is {type(storage).__name__})")
    return torch._utils._rebuild_tensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, Tensor):
        raise CheckpointError(f"malformed parameter record (data is {type(data).__name__})")
    return data


def _numpy_globals() -> dict[str, Any]:
    out = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for prefix in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{prefix}._reconstruct"] = multiarray._reconstruct
        out[f"{prefix}.scalar"] = multiarray.scalar
    return out


def _safe_globals() -> dict[str, Any]:
    safe = {
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "collections.OrderedDict": OrderedDict,
        "_codecs.encode": _codecs.encode,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
    }
    safe.update({f"torch.{name}": dtype for name, dtype in _DTYPES.items()})
    safe.update(_numpy_globals())
    return safe


def is_standin_name(full_name: str) -> bool:
    """Whether a pickled global may be read as an inert stand-in."""
    return full_name in SEED_CLASSES or full_name in WRAPPER_CLASSES or full_name.startswith("torch.nn.modules.")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip file; storages come from ``records``."""

    def __init__(self, file, path: str, records: _ZipRecords | None = None):
        super().__init__(file)
        self.path = path
        self.records = records
        self._safe = _safe_globals()
        self._storages: dict[str, torch.storage.TypedStorage] = {}
        self.standins_seen: set[str] = set()

    def find_class(self, module: str, name: str):
        module = _MODULE_ALIASES.get(module, module)
        full = f"{module}.{name}"
        if full in self._safe:
            return self._safe[full]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if is_standin_name(full):
            self.standins_seen.add(full)
            return _standin(full)
        raise CheckpointError(
            f"{self.path}: refused to load: the pickle references the global '{full}', which is not a "
            "tensor, storage or known model class (nothing from the file was imported or run)"
        )

    def persistent_load(self, pid):
        if self.records is None:
            raise CheckpointError(f"{self.path}: a tensor record outside a torch zip archive cannot be read")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path}: unsupported persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {storage_type!r:.80}")
        key = str(key)
        if key not in self._storages:
            raw = self.records.read(key)
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise CheckpointError(
                    f"{self.path}: storage record data/{key} holds {len(raw)} bytes, expected {int(numel) * itemsize}"
                )
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=data.untyped_storage(), dtype=storage_type.dtype, _internal=True
            )
        return self._storages[key]


class _ZipRecords:
    def __init__(self, zf: zipfile.ZipFile, prefix: str, path: str):
        self.zf, self.prefix, self.path = zf, prefix, path

    def read(self, key: str) -> bytes:
        name = f"{self.prefix}data/{key}"
        try:
            return self.zf.read(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: missing storage record '{name}' (truncated or corrupt file)") from None


def _data_pkl_name(zf: zipfile.ZipFile, path: str) -> str:
    names = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise CheckpointError(f"{path}: a zip file, but not in torch.save's layout (no <name>/data.pkl)")
    return names[0]


def read_torch_zip_pickle(path: str) -> bytes:
    """The raw bytes of ``data.pkl`` inside a torch zip file (for scanning, not loading)."""
    with _open_zip(path) as zf:
        return zf.read(_data_pkl_name(zf, path))


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path}: truncated or corrupt zip archive ({exc})") from exc


def restricted_load(path: str) -> Any:
    """Reads a torch.save file (zip format, or a plain pickle) without running foreign code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with _open_zip(path) as zf:
            pkl_name = _data_pkl_name(zf, path)
            prefix = pkl_name[: -len("data.pkl")]
            order = zf.read(f"{prefix}byteorder") if f"{prefix}byteorder" in zf.namelist() else b"little"
            if order.strip() != b"little":
                raise CheckpointError(
                    f"{path}: saved with byte order '{order.decode(errors='replace')}'; only little-endian files are supported"
                )
            try:
                data = zf.read(pkl_name)
            except (zipfile.BadZipFile, EOFError, OSError) as exc:
                raise CheckpointError(f"{path}: truncated or corrupt ({exc})") from exc
            unpickler = RestrictedUnpickler(io.BytesIO(data), path, _ZipRecords(zf, prefix, path))
            return _run(unpickler, path)
    with open(path, "rb") as fh:
        unpickler = RestrictedUnpickler(fh, path, None)
        obj = _run(unpickler, path)
    if isinstance(obj, int) and obj == _LEGACY_MAGIC:
        raise CheckpointError(
            f"{path}: saved in PyTorch's legacy (pre-1.6) format, which is not supported; "
            "re-save it with a current torch.save"
        )
    return obj


def _run(unpickler: RestrictedUnpickler, path: str) -> Any:
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def pickle_globals(data: bytes) -> list[str]:
    """Globals a pickle names, found by scanning its opcodes (nothing is executed).

    A best-effort listing for messages and file identification; security comes from
    :class:`RestrictedUnpickler`, which checks every global it is actually asked for.
    """
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, Any] = {}
    last: Any = None
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                strings.append(arg)
                last = arg
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = last
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(arg)
                if isinstance(last, str):
                    strings.append(last)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = last
            elif op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                found.append(f"{_MODULE_ALIASES.get(module, module)}.{name}")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                module, name = strings[-2], strings[-1]
                found.append(f"{_MODULE_ALIASES.get(module, module)}.{name}")
            else:
                last = None
    except (ValueError, EOFError) as exc:
        raise CheckpointError(f"not a readable pickle ({exc})") from exc
    return list(dict.fromkeys(found))


def is_module(obj: Any) -> bool:
    return isinstance(obj, Inert) and isinstance(obj.__dict__.get("_modules"), dict)


def module_state_dict(module: Inert, prefix: str = "") -> OrderedDict[str, Tensor]:
    """A stand-in module's state_dict: persistent parameters and buffers, recursively."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    _walk(module, prefix, out, set())
    return out


def _walk(module: Inert, prefix: str, out: dict, ancestors: set) -> None:
    # Like torch's state_dict, a shared sub-module appears under each of its names;
    # only a cycle (a module inside itself) is cut.
    if id(module) in ancestors:
        return
    ancestors = ancestors | {id(module)}
    state = module.__dict__
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, Tensor):
            out[prefix + name] = value.detach()
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, Tensor) and name not in non_persistent:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if is_module(child):
            _walk(child, f"{prefix}{name}.", out, ancestors)
