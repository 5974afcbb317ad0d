"""Load and save ONNX models as real files are: external data, subgraphs, old IR versions.

Weights are read lazily (external data is memory-mapped) and presented to passes uniformly as
`Weight` objects, whichever graph owns them. Saving is atomic and streams external tensors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from mcompress import spill
from mcompress.errors import ModelError
from mcompress.graph import iter_graphs
from mcompress.tensor_checks import check_tensors, expected_nbytes, external_int

PROTOBUF_LIMIT = 2**31 - 1
# Tensors at least this large go to the external data file when a model is saved externally.
EXTERNAL_THRESHOLD = 1024
_ALIGN = 64


@dataclass
class Model:
    """A loaded model: its proto (weights possibly still on disk) and where it came from."""

    proto: onnx.ModelProto
    path: Path
    base_dir: Path
    had_external_data: bool
    notes: list[str] = field(default_factory=list)

    def graphs(self) -> Iterator[onnx.GraphProto]:
        """The main graph and every nested subgraph (If/Loop/Scan bodies), outermost first."""
        return iter_graphs(self.proto.graph)

    def weights(self, float_only: bool = True) -> Iterator[Weight]:
        """Every initializer of every graph, as a `Weight`."""
        for graph in self.graphs():
            for tensor in graph.initializer:
                if float_only and tensor.data_type not in FLOAT_TYPES:
                    continue
                yield Weight(tensor, graph, self)

    def opset(self, domain: str = "") -> int:
        """The imported opset version of `domain` (0 when not imported)."""
        for imp in self.proto.opset_import:
            if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
                return int(imp.version)
        return 0


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass
class Weight:
    """One initializer, wherever it lives; `array()` reads it, `replace()` writes it back."""

    tensor: onnx.TensorProto
    graph: onnx.GraphProto
    model: Model

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def array(self) -> np.ndarray:
        """The tensor's values; read-only and memory-mapped when stored as external data."""
        return read_array(self.tensor, self.model.base_dir)

    def replace(self, values: np.ndarray) -> None:
        """Store new values (dtype and shape may change) under the same name: in memory, or in
        the spill file while one is active (see `mcompress.spill`)."""
        fill_tensor(self.tensor, values, self.name, spill_ok=True)


def fill_tensor(
    tensor: onnx.TensorProto, values: np.ndarray, name: str, *, spill_ok: bool = False
) -> onnx.TensorProto:
    """Make `tensor` hold `values` under `name`, in place; an initializer (`spill_ok`) goes to
    the active spill file instead when large.

    `CopyFrom(numpy_helper.from_array(...))` or `append` of one copies the bytes once more,
    several times slower on large tensors (benchmarks/README.md).
    """
    array = np.asarray(values)
    if array.dtype.kind not in "biuf" or array.dtype.byteorder == ">":
        tensor.CopyFrom(numpy_helper.from_array(array, name))
        return tensor
    tensor.Clear()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    if spill_ok:
        store_raw(tensor, array)
    else:
        tensor.raw_data = np.ascontiguousarray(array).tobytes()
    return tensor


def store_raw(tensor: onnx.TensorProto, values: np.ndarray) -> None:
    """Set the data of an initializer whose name, type and dims are set: its raw bytes, or the
    active spill file when large (see `mcompress.spill`)."""
    array = np.ascontiguousarray(values)
    if not spill.store(tensor, array):
        tensor.raw_data = array.tobytes()


def add_initializer(graph: onnx.GraphProto, values: np.ndarray, name: str) -> onnx.TensorProto:
    """A new initializer of `graph` holding `values` (see `fill_tensor`)."""
    return fill_tensor(graph.initializer.add(), values, name, spill_ok=True)


def remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Drop the named initializers of `graph` and their graph-input twins, in place
    (rebuilding the list instead copies every tensor that stays)."""
    for entries in (graph.initializer, graph.input):
        for index in reversed(range(len(entries))):
            if entries[index].name in names:
                del entries[index]


# ---------------------------------------------------------------- external data


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_file(tensor: onnx.TensorProto, base_dir: Path) -> Path:
    """The external data file of `tensor`, refusing locations outside the model's folder."""
    location = _external_info(tensor).get("location", "")
    if not location:
        raise ModelError(f"tensor '{tensor.name}' is marked external but names no data file")
    if spill.owns(Path(location)):
        return Path(location)
    if os.path.isabs(location) or location.startswith(("/", "\\")):
        raise ModelError(
            f"tensor '{tensor.name}' points to external data at absolute path '{location}'; "
            "only files inside the model's folder are allowed"
        )
    resolved = (base_dir / location).resolve()
    root = base_dir.resolve()
    if resolved != root and root not in resolved.parents:
        raise ModelError(
            f"tensor '{tensor.name}' points to external data '{location}' outside the model's "
            "folder; refusing to read it"
        )
    return resolved


def read_array(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """Values of `tensor`; external data is memory-mapped rather than read into memory."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    info = _external_info(tensor)
    path = external_file(tensor, base_dir)
    offset = int(info.get("offset", 0))
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.data_type in _PACKED_4BIT:
        packed = onnx.TensorProto()
        packed.CopyFrom(tensor)
        del packed.external_data[:]
        packed.data_location = onnx.TensorProto.DEFAULT
        packed.raw_data = external_bytes(tensor, base_dir).tobytes()
        return numpy_helper.to_array(packed)
    if tensor.data_type in (onnx.TensorProto.BFLOAT16,) or dtype == np.dtype(object):
        raise ModelError(f"external tensor '{tensor.name}' has a dtype that cannot be mapped")
    if count == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def external_bytes(tensor: onnx.TensorProto, base_dir: Path) -> np.ndarray:
    """The stored bytes of an external tensor, memory-mapped as uint8."""
    nbytes = stored_nbytes(tensor)
    if nbytes == 0:
        return np.zeros(0, np.uint8)
    offset = int(_external_info(tensor).get("offset", 0))
    return np.memmap(external_file(tensor, base_dir), np.uint8, "r", offset, (nbytes,))


_PACKED_4BIT = {
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
    *([onnx.TensorProto.FLOAT4E2M1] if hasattr(onnx.TensorProto, "FLOAT4E2M1") else []),
}


def stored_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes the tensor's data takes in raw form (4-bit types pack two values per byte)."""
    count = int(np.prod(tensor.dims, dtype=np.int64))
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize * count


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> bool:
    """Verify every external reference is inside the folder, exists and is long enough."""
    found = False
    sizes: dict[Path, int] = {}
    for graph in iter_graphs(proto.graph):
        for tensor in graph.initializer:
            if not is_external(tensor):
                continue
            found = True
            path = external_file(tensor, base_dir)
            if path not in sizes:
                if not path.is_file():
                    raise ModelError(
                        f"external data file '{path.name}' for tensor '{tensor.name}' is missing "
                        f"(expected next to the model in {base_dir})"
                    )
                sizes[path] = path.stat().st_size
            offset = external_int(tensor, "offset") or 0
            length = max(external_int(tensor, "length") or 0, expected_nbytes(tensor))
            if offset + length > sizes[path]:
                raise ModelError(
                    f"external data file '{path.name}' is truncated: tensor '{tensor.name}' needs "
                    f"bytes {offset}..{offset + length} but the file has {sizes[path]}"
                )
    return found


# ---------------------------------------------------------------- load


def load_model(path: str | os.PathLike[str]) -> Model:
    """Read a model's graph without pulling external data into memory; fail with one line."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelError(f"'{path}' is a folder, not an ONNX model file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model '{path}': {exc.strerror}") from None
    if not data:
        raise ModelError(f"model file '{path}' is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(
            f"'{path}' is not a readable ONNX model (corrupt or truncated protobuf)"
        ) from None
    del data
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"'{path}' is not an ONNX model (no graph nodes; corrupt or truncated?)")
    base_dir = path.resolve().parent
    check_tensors(proto)
    had_external = check_external_data(proto, base_dir)
    _check_complete(proto, path)
    return Model(proto=proto, path=path, base_dir=base_dir, had_external_data=had_external)


def _check_complete(proto: onnx.ModelProto, path: Path) -> None:
    """Catch files truncated on a field boundary: every graph output must be produced."""
    graph = proto.graph
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    produced |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        produced.update(node.output)
    missing = [o.name for o in graph.output if o.name not in produced]
    if not graph.output or missing:
        what = f"output '{missing[0]}' is never produced" if missing else "it has no outputs"
        raise ModelError(f"'{path}' is incomplete ({what}); the file is corrupt or truncated")


# ---------------------------------------------------------------- compatibility


def _probe_model(ir_version: int, opset: int) -> bytes:
    node = helper.make_node("Identity", ["x"], ["y"])
    vi_x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    vi_y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([node], "probe", [vi_x], [vi_y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


def _loads(blob: bytes) -> bool:
    from mcompress import runtime

    try:
        runtime.session(blob)
    except Exception:
        return False
    return True


@lru_cache(maxsize=1)
def max_ir_version() -> int:
    """The newest IR version the installed onnxruntime loads (probed once, cached)."""
    for ir in range(onnx.IR_VERSION, 3, -1):
        if _loads(_probe_model(ir, 13)):
            return ir
    return 7


@lru_cache(maxsize=1)
def max_opset() -> int:
    """The newest default-domain opset the installed onnxruntime loads (probed once, cached)."""
    newest = onnx.defs.onnx_opset_version()
    for opset in range(newest, 10, -1):
        if _loads(_probe_model(min(max_ir_version(), 8), opset)):
            return opset
    return 11


@lru_cache(maxsize=8)
def loads_versions(ir_version: int, opset: int) -> bool:
    """Whether the installed onnxruntime loads a model of this IR version and default-domain
    opset (one probe session per pair, cached)."""
    return _loads(_probe_model(ir_version, opset))


def make_runtime_compatible(proto: onnx.ModelProto) -> list[str]:
    """Lower an IR version the installed onnxruntime cannot load; refuse unsupported opsets.
    A model whose versions load as they are costs one probe session, not a search."""
    opsets = [imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")]
    if opsets and loads_versions(proto.ir_version, max(opsets)):
        return []
    notes: list[str] = []
    limit = max_ir_version()
    if proto.ir_version > limit:
        notes.append(f"IR version lowered from {proto.ir_version} to {limit} for onnxruntime")
        proto.ir_version = limit
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > max_opset():
            raise ModelError(
                f"model uses opset {imp.version} but the installed onnxruntime supports up to "
                f"{max_opset()}; upgrade onnxruntime"
            )
    return notes


# ---------------------------------------------------------------- save


def default_output(input_path: str | os.PathLike[str], what: str) -> Path:
    """`model.onnx` -> `model.<what>.onnx`, next to the input."""
    path = Path(input_path)
    stem = path.name[:-5] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.{what}.onnx")


def tensor_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of tensor data in the model, wherever stored (for deciding on external data)."""
    total = 0
    for graph in iter_graphs(proto.graph):
        total += sum(stored_nbytes(tensor) for tensor in graph.initializer)
    return total


def saves_external(model: Model) -> bool:
    """Whether `save_model` writes external data (`OUT.onnx.data`) without being asked: the
    input had it, or the tensors would pass protobuf's 2 GB limit."""
    return model.had_external_data or tensor_bytes(model.proto) > PROTOBUF_LIMIT - 2**26


def data_path(output: Path) -> Path:
    """The external data file written beside `output`."""
    return output.with_name(output.name + ".data")


def save_model(model: Model, output: Path, *, external: bool | None = None) -> list[str]:
    """Write `model` to `output` atomically; external data when asked, inherited or needed.

    Tensors are streamed one at a time into the data file; tensors still on disk in the
    input's data file are copied in chunks, never loaded whole.
    """
    proto = model.proto
    notes = make_runtime_compatible(proto)
    external = bool(external) or saves_external(model)
    output = Path(output)
    out_dir = output.resolve().parent
    data_name = output.name + ".data"
    # A short temp name: the output's own name may already be near the 255-byte limit.
    fd, tmp_name = tempfile.mkstemp(prefix=".mc-", suffix=".tmp", dir=out_dir)
    os.close(fd)
    tmp_onnx = Path(tmp_name)
    tmp_data = tmp_onnx.with_suffix(".data.tmp")
    try:
        if external:
            _write_external(model, tmp_data, data_name)
        else:
            _internalize(model)
        with open(tmp_onnx, "wb") as f:
            f.write(proto.SerializeToString())
        os.chmod(tmp_onnx, 0o666 & ~_umask())
        if external:
            os.replace(tmp_data, out_dir / data_name)
        os.replace(tmp_onnx, output)
    except BaseException:
        for leftover in (tmp_onnx, tmp_data):
            leftover.unlink(missing_ok=True)
        raise
    model.base_dir = out_dir
    model.path = output
    model.had_external_data = external
    return notes


def _umask() -> int:
    """The process umask (mkstemp creates files 0600; outputs get the usual permissions)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _internalize(model: Model) -> None:
    """Bring external tensors into the proto (only for models that fit in protobuf)."""
    for graph in model.graphs():
        for tensor in graph.initializer:
            if is_external(tensor):
                fill_tensor(tensor, np.array(read_array(tensor, model.base_dir)), tensor.name)


def _write_external(model: Model, data_path: Path, location: str) -> None:
    """Stream every large tensor into one data file and point the proto at it."""
    offset = 0
    with open(data_path, "wb") as out:
        for graph in model.graphs():
            for tensor in graph.initializer:
                nbytes = stored_nbytes(tensor)
                if nbytes < EXTERNAL_THRESHOLD:
                    if is_external(tensor):
                        values = np.array(read_array(tensor, model.base_dir))
                        fill_tensor(tensor, values, tensor.name)
                    continue
                pad = (-offset) % _ALIGN
                out.write(b"\0" * pad)
                offset += pad
                if is_external(tensor):
                    src = external_bytes(tensor, model.base_dir)
                    for start in range(0, src.size, 2**26):
                        out.write(src[start : start + 2**26].tobytes())
                else:
                    out.write(tensor.raw_data or _raw_bytes(tensor))
                _point_external(tensor, location, offset, nbytes)
                offset += nbytes


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """Raw little-endian bytes of a tensor stored in typed fields (packing 4-bit types)."""
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _point_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for attr in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        tensor.ClearField(attr)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key = key
        entry.value = value


# ---------------------------------------------------------------- sizes


def external_files(proto: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """External data files that `proto`'s initializers point to, resolved against `base_dir`."""
    files = {
        external_file(tensor, base_dir)
        for graph in iter_graphs(proto.graph)
        for tensor in graph.initializer
        if is_external(tensor)
    }
    return sorted(files)


def data_files(path: Path) -> list[Path]:
    """External data files referenced by the model at `path` (read without tensor data)."""
    proto = onnx.load(str(path), load_external_data=False)
    return external_files(proto, path.resolve().parent)


def disk_size(path: str | os.PathLike[str], files: list[Path] | None = None) -> int:
    """Bytes on disk of the model file plus its external data files.

    `files` are those data files when the caller already has the proto (`external_files`);
    finding them otherwise parses the whole model file again.
    """
    path = Path(path)
    files = data_files(path) if files is None else files
    return path.stat().st_size + sum(f.stat().st_size for f in files)
