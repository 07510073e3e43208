"""The containers checkpoints come in: telling them apart, reading tensors safely, writing safetensors in a stream.

A container is not a format: a timm state dict, a transformers ViT and one of ours can all be `.safetensors` files;
the format modules tell them apart by their tensor names. Nothing is ever unpickled: torch files are read with
`weights_only=True` and npz files with `allow_pickle=False`.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, ProgressFn

_ZIP = b"PK\x03\x04"
# A safetensors header is JSON behind its 8-byte little-endian length; safetensors itself refuses headers over 100 MB.
_MAX_HEADER = 100_000_000


def sniff(path: str | os.PathLike) -> str:
    """The container of a file from its first bytes and structure: "npz", "torch", "safetensors" or "pickle"."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(_ZIP):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{path}: starts like a zip file but is not a valid one ({error}).") from error
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        raise CheckpointError(f"{path}: a zip file that is neither an npz nor a torch checkpoint.")
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < _MAX_HEADER:
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+ (also torch's legacy, non-zip format)
        return "pickle"
    raise CheckpointError(f"{path}: unknown checkpoint format (first bytes {head[:8]!r}).")


def safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a safetensors file, checked against the file's size: a truncated file is named as such."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length < _MAX_HEADER:
            raise CheckpointError(f"{path}: not a safetensors file (its first 8 bytes are not a header length).")
        if 8 + length > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: the header alone needs {8 + length} bytes, the file has {size}."
            )
        try:
            header = json.loads(handle.read(length))
        except ValueError as error:
            raise CheckpointError(f"{path}: corrupt safetensors header ({error}).") from error
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + length + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: its tensors need {8 + length + end} bytes, the file has {size} "
            "(an interrupted download or copy; fetch or write it again)."
        )
    return header


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file (memory-mapped) or a torch file read with `weights_only=True`."""
    from .timm_state_dict import unwrap

    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        safetensors_header(path)  # a truncated file says so, instead of safetensors' "file not fully covered"
        return load_file(str(path))
    if kind in ("torch", "pickle"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch")
        except Exception as error:  # torch raises UnpicklingError/RuntimeError for anything beyond plain tensors
            raise CheckpointError(
                f"{path}: refusing to unpickle: this file holds Python objects beyond tensors and plain containers "
                f"(torch.load(weights_only=True) said: {str(error).splitlines()[0]}). Convert it to safetensors or a "
                "plain state dict where it was made."
            ) from error
        return unwrap(obj, str(path))
    raise CheckpointError(f"{path}: an {kind} file, not a tensor file.")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; a corrupt file is an error that names it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); restore or rewrite this file.") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}.")
    return value


_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    materialize: Callable[[str], torch.Tensor] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (no second in-memory copy of the whole dict), atomically.

    `safetensors.torch.save_file` first serialises every tensor to bytes, which doubles the peak memory of converting
    a 1.2 GB checkpoint; the format is simple (8-byte header length, JSON header, raw little-endian data) to stream.
    Meta tensors are placeholders: `materialize(key)` supplies their data when their turn comes; what it returns must
    stay valid until the call after next (it may reuse two buffers in turn).
    """
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for key, tensor in tensors.items():
        if tensor.dtype not in _ST_DTYPES:
            raise CheckpointError(f"Cannot write {key!r} of dtype {tensor.dtype} to safetensors.")
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _ST_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as safetensors itself writes it
    partial = path.with_name(path.name + ".partial")
    total = len(tensors)
    # One writer thread: tensor i is written while tensor i+1 is read and transposed (file writes and torch copies
    # both release the GIL). At most one write is in flight, so a materialize() that alternates two buffers is safe.
    with open(partial, "wb") as handle, ThreadPoolExecutor(max_workers=1) as writer:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        pending = None
        for index, (key, tensor) in enumerate(tensors.items()):
            if tensor.is_meta:
                if materialize is None:
                    raise CheckpointError(f"{key!r} is a placeholder (meta tensor) and nothing can read its data.")
                real = materialize(key)
                if tuple(real.shape) != tuple(tensor.shape):
                    raise CheckpointError(f"{key!r}: read shape {tuple(real.shape)}, planned {tuple(tensor.shape)}.")
                tensor = real.to(tensor.dtype)
            data = tensor.detach().cpu().contiguous().reshape(-1)
            if pending is not None:
                pending.result()  # also re-raises a failed write here
            pending = writer.submit(handle.write, memoryview(data.view(torch.uint8).numpy())) if data.numel() else None
            if progress is not None:
                progress(index + 1, total, key, data.numel() * data.element_size())
        if pending is not None:
            pending.result()
    os.replace(partial, path)
