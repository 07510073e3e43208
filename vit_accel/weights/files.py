"""The containers checkpoints come in: telling them apart, reading tensors safely, writing safetensors in a stream.

A container is not a format: a timm state dict, a transformers ViT and one of ours can all be `.safetensors` files;
the format modules tell them apart by their tensor names. Nothing is ever unpickled: torch files are read with
`weights_only=True` and npz files with `allow_pickle=False`.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .source_weights import CheckpointError, ProgressFn

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


# timm's own training checkpoints wrap the weights; DDP adds "module.".
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")


def unwrap(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a torch checkpoint: timm's training checkpoints wrap it (`{"state_dict": ...}`,
    `{"model": ...}`), DDP prefixes `module.`."""
    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a state dict (a dict of tensors).")
    others = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if others:
        kinds = ", ".join(f"{key!r}: {type(obj[key]).__name__}" for key in others[:3])
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        if len(others) == len(obj):
            raise CheckpointError(f"{source}: not a state dict: a dict of {kinds}{more}, without any tensor.")
        raise CheckpointError(f"{source}: not a plain state dict: besides tensors it holds {kinds}{more}.")
    return {(key[7:] if key.startswith("module.") else key): value for key, value in obj.items()}


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file (memory-mapped) or a torch file read with `weights_only=True`."""
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        safetensors_header(path)  # a truncated file says so, instead of safetensors' "file not fully covered"
        return load_file(str(path))
    if kind == "torch" and (unsafe := _unsafe_globals(path)):
        raise CheckpointError(f"{path}: {_OBJECTS.format(', '.join(unsafe[:3]))}")
    if kind in ("torch", "pickle"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch")
        except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...: see _refusal
            raise CheckpointError(f"{path}: {_refusal(error, path if kind == 'pickle' else None)}") from error
        return unwrap(obj, str(path))
    raise CheckpointError(f"{path}: an {kind} file, not a tensor file.")


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects beyond tensors and plain containers that a torch (zip) checkpoint holds, which its
    `weights_only=True` load would refuse: torch's own list, read without unpickling (empty when the file cannot be
    read so: `torch.load` then says why)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a truncated or corrupt zip: the load that follows names the fault
        return []


_KEEP = "Save the weights as safetensors or a plain state dict (torch.save(model.state_dict())) where they were made"
_OBJECTS = "refusing to unpickle: it holds Python objects ({}) beyond tensors and plain containers. " + _KEEP + "."
# torch's "Unsupported global: GLOBAL module.Name was not an allowed global": the one fact worth repeating (a plain
# pickle file, which torch's own list of a checkpoint's globals does not read).
_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def _refusal(error: BaseException, pickle_file: Path | None = None) -> str:
    """Why `torch.load(weights_only=True)` failed, in our words.

    torch's own message advises re-running with `weights_only=False`, i.e. unpickling a file that may run code, so it
    is never repeated: only the object it met (a file of Python objects), the file's truncation, or the fault in the
    stream (not a readable torch file at all) is kept. A plain pickle file (`pickle_file`, which torch's loader stops
    reading at its first unsupported opcode) is told apart by parsing its opcodes, which runs nothing: a well-formed
    pickle of Python objects, or bytes that are no pickle at all.
    """
    text = _ANSI_RE.sub("", str(error))
    found = _GLOBAL_RE.search(text)
    keep, objects = _KEEP, _OBJECTS
    if found:
        return objects.format(found[1])
    if isinstance(error, EOFError) or "truncated" in text or "Ran out of input" in text:
        return "not a readable torch checkpoint: the file ends too early (truncated: an interrupted download or copy?)."
    if pickle_file is not None:
        named, fault = _scan_pickle(pickle_file)
        if fault is not None:
            return f"not a readable torch checkpoint: corrupt, or no checkpoint at all ({fault})."
        if named:
            return objects.format(", ".join(named[:3]))
        return f"refusing to unpickle: a pickle in a form torch's safe loader does not read. {keep}."
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.DOTALL)
    reason = detail[1] if detail else (text.strip().splitlines() or [type(error).__name__])[0]
    if "eights only" in reason or "weights_only" in reason:  # torch's advice to unpickle, not a reason
        reason = type(error).__name__
    return (
        "not a readable torch checkpoint: corrupt, truncated, or another kind of pickle (torch's safe loader stopped "
        f"at: {reason.strip()})."
    )


def _scan_pickle(path: Path) -> tuple[list[str], str | None]:
    """The classes and functions a pickle file names, and the fault that stops its parsing (None for a well-formed
    pickle). `pickletools` only reads the opcodes: nothing is imported or run."""

    objects: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL":
                    objects.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    objects.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception as error:  # ValueError for a bad opcode or argument, among others
        return objects, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"
    return list(dict.fromkeys(objects)), None


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

    Our own writer rather than the safetensors library's: `safetensors.torch.save_file` first serialises every tensor
    to bytes, which doubles the peak memory of converting a 1.2 GB checkpoint, and it has no streaming API; the format
    is simple (8-byte header length, JSON header, raw little-endian data) to stream, and safetensors reads it back.
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
