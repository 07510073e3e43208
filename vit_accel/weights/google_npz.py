"""Google's `.npz` checkpoints (vit_jax, AugReg, big_vision): detect, read into our names (one array at a time), write.

Key map (vit_jax names; `opt/target/` and `params/` prefixes are stripped first):

| npz | ours | transform |
|---|---|---|
| `embedding/kernel` (p, p, C, D) | `vit.embeddings.patch_embeddings.projection.weight` | HWIO -> OIHW |
| `embedding/bias` | `...projection.bias` | |
| `cls` (1, 1, D) | `vit.embeddings.cls_token` | |
| `Transformer/posembed_input/pos_embedding` (1, 1+N, D) | `vit.embeddings.position_embeddings` | |
| `Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}` | `vit.layers.{i}.layernorm_before.{weight,bias}` | |
| `.../MultiHeadDotProductAttention_1/{query,key,value}/kernel` (D, H, d) | `...{q,k,v}_proj.weight` | (D, Hd).T |
| `.../MultiHeadDotProductAttention_1/{query,key,value}/bias` (H, d) | `...{q,k,v}_proj.bias` | flatten |
| `.../MultiHeadDotProductAttention_1/out/kernel` (H, d, D) | `...attention.o_proj.weight` | (Hd, D).T |
| `.../LayerNorm_2/{scale,bias}` | `vit.layers.{i}.layernorm_after.{weight,bias}` | |
| `.../MlpBlock_3/Dense_{0,1}/{kernel,bias}` | `vit.layers.{i}.mlp.fc{1,2}.{weight,bias}` | kernel .T |
| `Transformer/encoder_norm/{scale,bias}` | `vit.layernorm.{weight,bias}` | |
| `pre_logits/{kernel,bias}` | `vit.pooler.dense.{weight,bias}` | kernel .T |
| `head/{kernel,bias}` | `classifier.{weight,bias}` | kernel .T |

big_vision names the blocks' modules `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`, keeps the position
embeddings at `pos_embedding` (grid only: the CLS token gets none, so we give it a zero row) and may "scan" the
blocks into one `Transformer/encoderblock/...` array with a leading depth axis; both are read here.

Google's JAX model uses the tanh approximation of GELU, but timm and transformers load these files into models with
exact GELU and that is what their published accuracies use; the converter keeps `hidden_act="gelu"` (pass
`hidden_act="gelu_pytorch_tanh"` to from_pretrained for JAX's).
"""

from __future__ import annotations

import math
import mmap
import os
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .source_weights import Checkpoint, CheckpointError, ProgressFn

PREFIXES = ("opt/target/", "params/img/", "params/", "")

# Transforms work on torch tensors (real or meta): torch's blocked, multi-threaded copy makes the transposes several
# times faster than numpy's, and on meta tensors the same code plans the output shapes without touching any data.
Transform = Callable[[torch.Tensor], torch.Tensor]


def _conv(a: torch.Tensor) -> torch.Tensor:
    return a.permute(3, 2, 0, 1)  # HWIO -> OIHW


def _dense(a: torch.Tensor) -> torch.Tensor:
    return a.t()  # (in, out) -> (out, in)


def _qkv_kernel(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1).t()  # (D, heads, head_dim) -> (heads * head_dim, D)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1)


def _out_kernel(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, a.shape[-1]).t()  # (heads, head_dim, D) -> (D, heads * head_dim)


def _same(a: torch.Tensor) -> torch.Tensor:
    return a


def detect_prefix(keys: set[str] | list[str], source: str = "npz") -> str:
    """The key prefix of a Google npz (`""`, `opt/target/`, `params/`, `params/img/`)."""
    keys = set(keys)
    for prefix in PREFIXES:
        if f"{prefix}embedding/kernel" in keys:
            return prefix
    raise CheckpointError(
        f"{source}: not a Google ViT npz: no 'embedding/kernel' (with or without an 'opt/target/' or 'params/' prefix) "
        f"among its {len(keys)} keys, e.g. {sorted(keys)[:5]}."
    )


def key_map(
    keys: set[str], source: str = "npz", check: bool = True
) -> tuple[list[tuple[str, str, Transform, int | None]], dict]:
    """The explicit (npz key, our key, transform, scan index) list for a file with these keys, plus facts about it.

    With `check`, every npz key of the list must be among `keys` (writing plans a file from a few names only)."""
    prefix = detect_prefix(keys, source)
    p = prefix
    big_vision = prefix.startswith("params/") or f"{p}pos_embedding" in keys
    scanned = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in keys
    mha, mlp, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else (
            "MultiHeadDotProductAttention_1",
            "MlpBlock_3",
            "LayerNorm_2",
        )
    )
    if f"{p}cls" not in keys:
        raise CheckpointError(
            f"{source}: no 'cls' token: this checkpoint pools by average or attention (big_vision 'gap'/'map'), "
            "but ViTAccel classifies the CLS token as the original ViT does."
        )
    pos_key = f"{p}pos_embedding" if f"{p}pos_embedding" in keys else f"{p}Transformer/posembed_input/pos_embedding"
    entries: list[tuple[str, str, Transform, int | None]] = [
        (f"{p}embedding/kernel", "vit.embeddings.patch_embeddings.projection.weight", _conv, None),
        (f"{p}embedding/bias", "vit.embeddings.patch_embeddings.projection.bias", _same, None),
        (f"{p}cls", "vit.embeddings.cls_token", _same, None),
        (pos_key, "vit.embeddings.position_embeddings", _same, None),
    ]
    if scanned:
        depth = None  # read from the stacked array's leading axis by the caller
        blocks = [(f"{p}Transformer/encoderblock/", None)]
    else:
        indices = sorted(
            int(k[len(f"{p}Transformer/encoderblock_") :].split("/")[0])
            for k in keys
            if k.startswith(f"{p}Transformer/encoderblock_") and k.endswith("LayerNorm_0/scale")
        )
        depth = len(indices)
        blocks = [(f"{p}Transformer/encoderblock_{i}/", i) for i in indices]
    for block, index in blocks:
        ours = f"vit.layers.{index if index is not None else '{i}'}."
        for name, theirs in (("weight", "scale"), ("bias", "bias")):
            entries.append((f"{block}LayerNorm_0/{theirs}", f"{ours}layernorm_before.{name}", _same, index))
            entries.append((f"{block}{ln2}/{theirs}", f"{ours}layernorm_after.{name}", _same, index))
        for theirs, mine in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            entries.append((f"{block}{mha}/{theirs}/kernel", f"{ours}attention.{mine}.weight", _qkv_kernel, index))
            entries.append((f"{block}{mha}/{theirs}/bias", f"{ours}attention.{mine}.bias", _flat, index))
        entries.append((f"{block}{mha}/out/kernel", f"{ours}attention.o_proj.weight", _out_kernel, index))
        entries.append((f"{block}{mha}/out/bias", f"{ours}attention.o_proj.bias", _same, index))
        for r in range(2):
            entries.append((f"{block}{mlp}/Dense_{r}/kernel", f"{ours}mlp.fc{r + 1}.weight", _dense, index))
            entries.append((f"{block}{mlp}/Dense_{r}/bias", f"{ours}mlp.fc{r + 1}.bias", _same, index))
    entries.append((f"{p}Transformer/encoder_norm/scale", "vit.layernorm.weight", _same, None))
    entries.append((f"{p}Transformer/encoder_norm/bias", "vit.layernorm.bias", _same, None))
    for theirs, mine in (("pre_logits", "vit.pooler.dense"), ("head", "classifier")):
        if f"{p}{theirs}/kernel" in keys:
            entries.append((f"{p}{theirs}/kernel", f"{mine}.weight", _dense, None))
            entries.append((f"{p}{theirs}/bias", f"{mine}.bias", _same, None))
    missing = [theirs for theirs, _, _, _ in entries if theirs not in keys]
    if missing and check:
        raise CheckpointError(f"{source}: Google npz lacks the keys {missing[:6]} (prefix {prefix!r}).")
    facts = {"prefix": prefix, "big_vision": big_vision, "scanned": scanned, "depth": depth}
    return entries, facts


Provenance = tuple[str, Transform, int | None]  # (npz key, transform, index in a scanned array)


def _iter_converted(
    arrays: Mapping[str, np.ndarray],
    entries: list[tuple[str, str, Transform, int | None]],
    source: str,
    progress: ProgressFn | None,
) -> Iterator[tuple[str, torch.Tensor, Provenance]]:
    total = len(entries)
    for done, (theirs, ours, transform, _) in enumerate(entries, start=1):
        array = arrays[theirs]  # read from the zip now; dropped once converted
        tensor = _to_tensor(array, theirs, source)
        if "{i}" in ours:  # a scanned array holds every block: read it once, cut one slice per block
            for i in range(tensor.shape[0]):
                yield ours.format(i=i), transform(tensor[i]).contiguous(), (theirs, transform, i)
        else:
            # contiguous() copies only the transposed arrays; the others share the array's memory.
            yield ours, transform(tensor).contiguous(), (theirs, transform, None)
        del tensor
        if progress:
            progress(done, total, theirs, array.nbytes)
        del array


def _is_placeholder(array: np.ndarray) -> bool:
    return array.size > 1 and not array.flags.writeable and all(stride == 0 for stride in array.strides)


def _to_tensor(array: np.ndarray, key: str, source: str) -> torch.Tensor:
    if array.dtype.kind == "O":
        raise CheckpointError(f"{source}: array {key!r} holds pickled objects; refusing to unpickle.")
    if array.dtype.kind not in "fiu":
        raise CheckpointError(f"{source}: array {key!r} has dtype {array.dtype}, not a number type.")
    if _is_placeholder(array):  # planning pass: shape and dtype only, the data is read when written
        return torch.empty(array.shape, dtype=torch.from_numpy(np.zeros(0, array.dtype)).dtype, device="meta")
    return torch.from_numpy(array)


class _Planned(Mapping):
    """An npz whose large members appear as zero-strided placeholders of their shape and dtype (read from the .npy
    headers only); small ones (position embeddings, biases, norms) are read for real. A conversion planned on it holds
    meta tensors for the large arrays and reads each one only when it is written."""

    def __init__(self, npz: np.lib.npyio.NpzFile, threshold: int):
        self.npz, self.threshold = npz, threshold

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        with self.npz.zip.open(key + ".npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        return shape, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        shape, dtype = self.header(key)
        if dtype.kind == "O" or "pos" in key or int(np.prod(shape)) * dtype.itemsize <= self.threshold:
            return self.npz[key]
        return np.broadcast_to(np.zeros((), dtype), shape)

    def read(self, key: str) -> np.ndarray:
        """The member's data. A member stored uncompressed (as in Google's files) is memory-mapped: the pages already
        in the page cache become the array with no copy (a `read` would move every byte once more), and the mapping
        goes away with the last array that uses it, so the resident size stays near the arrays in flight. Mapped
        copy-on-write, so that the array is writable (as torch.from_numpy wants) and the file is never changed.
        Compressed members go through zipfile."""
        info = self.npz.zip.getinfo(key + ".npy")
        filename = self.npz.zip.filename
        if info.compress_type != zipfile.ZIP_STORED or not filename:
            return self.npz[key]
        with open(filename, "rb", buffering=0) as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)  # the local file header: name and extra-field lengths at bytes 26..29
            names = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            handle.seek(info.header_offset + 30 + names)
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(handle)
            offset = handle.tell()
            if dtype.kind == "O":
                return self.npz[key]  # np.load refuses it (allow_pickle=False) with its own error
            nbytes = int(np.prod(shape)) * dtype.itemsize
            available = os.fstat(handle.fileno()).st_size - offset
            if available < nbytes:  # mapping past the end would fault (SIGBUS) instead of raising
                raise CheckpointError(f"{filename}: member {key!r} ends after {max(available, 0)} of {nbytes} bytes.")
            if nbytes == 0:
                return np.empty(shape, dtype)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapped = mmap.mmap(handle.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
            except OSError:  # a file system that cannot map files (some network and FUSE mounts): plain reads
                return self.npz[key]
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        array = np.frombuffer(mapped, dtype, count=nbytes // dtype.itemsize, offset=offset - start)
        return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.npz.files)

    def __len__(self) -> int:
        return len(self.npz.files)


def npz_to_state_dict(
    arrays: Mapping[str, np.ndarray], source: str = "npz", progress: ProgressFn | None = None
) -> Checkpoint:
    """Convert Google npz arrays (a lazy `np.load` result or a dict) to a `Checkpoint` under our names."""
    keys = set(arrays.keys())
    entries, facts = key_map(keys, source)
    state_dict, provenance = {}, {}
    for ours, tensor, origin in _iter_converted(arrays, entries, source, progress):
        state_dict[ours], provenance[ours] = tensor, origin
    pos = state_dict["vit.embeddings.position_embeddings"]
    if pos.ndim == 2:
        pos = pos.unsqueeze(0)
    if facts["big_vision"] and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        # big_vision "tok" models add position embeddings to the grid only, before the CLS token is prepended:
        # the CLS token effectively has a zero position embedding.
        pos = torch.cat((torch.zeros_like(pos[:, :1]), pos), dim=1)
    state_dict["vit.embeddings.position_embeddings"] = pos
    # The (heads, head_dim) layout of the query bias is the only place the number of heads is written down.
    query_bias = next(theirs for theirs, ours, _, _ in entries if ours.endswith("attention.q_proj.bias"))
    heads = int(arrays[query_bias].shape[-2])
    checkpoint = Checkpoint(
        state_dict=state_dict,
        source=source,
        format="google-npz",
        resample_mode="bilinear",  # as Google (scipy zoom order=1) and timm's npz loader
        resample_antialias=False,
        num_attention_heads=heads,
        config={"layer_norm_eps": 1e-6, "hidden_act": "gelu"},
    )
    if isinstance(arrays, _Planned):
        planned, scratch, calls = arrays, [torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.uint8)], [0]

        def materialize(key: str) -> torch.Tensor:
            """The tensor for `key`, valid until the call after next: two sets of buffers are reused in turn, so that
            one can be written while the other is filled (see save_safetensors)."""
            slot = calls[0] % 2
            calls[0] += 1
            theirs, transform, index = provenance[key]
            array = planned.read(theirs)
            tensor = transform(_to_tensor(array, theirs, source)[index if index is not None else ...])
            if tensor.is_contiguous():
                return tensor
            nbytes = tensor.numel() * tensor.element_size()
            if scratch[slot].numel() < nbytes:
                scratch[slot] = torch.empty(nbytes, dtype=torch.uint8)
            out = scratch[slot][:nbytes].view(tensor.dtype).view(tensor.shape)
            return _copy_transposed(out, tensor)  # into reused memory

        checkpoint.materialize = materialize
    return checkpoint


# A transpose in tiles of 512 x 64 output elements: each tile reads 64 source rows of 512 elements (128 KiB for
# float32), which stay in cache while they are scattered into 512 output rows. 32768 elements is also torch's parallel
# grain size, so each tile's copy_ runs on the calling thread with no parallel region to wait on (the writer thread has
# the other core). One copy_ over the whole matrix runs torch's single-threaded 60x60-block transpose at about 3 GB/s
# here; these tiles convert a ViT-L/16 checkpoint 1.4x faster, idle or with one core busy elsewhere. (64-column blocks
# over all rows were 15% faster still when idle, but ran on both threads in ~9,000 parallel regions: 2x slower than
# the tiles with one core busy.)
_TILE_ROWS, _TILE_COLUMNS = 512, 64


def _copy_transposed(out: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`out.copy_(tensor)`, tile by tile when `tensor` is the transpose of a contiguous matrix."""
    if tensor.ndim != 2 or tensor.stride() != (1, tensor.shape[0]):
        return out.copy_(tensor)
    rows, columns = tensor.shape
    for column in range(0, columns, _TILE_COLUMNS):
        for row in range(0, rows, _TILE_ROWS):
            tile = (slice(row, row + _TILE_ROWS), slice(column, column + _TILE_COLUMNS))
            out[tile].copy_(tensor[tile])
    return out


def open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    """`np.load` that never unpickles, with errors that name the file."""
    path = str(path)
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable npz file ({error}).") from error


# Arrays above this size stay on disk in a planned (lazy) conversion until they are written.
LAZY_THRESHOLD = 1 << 16


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether these array names (npz members without `.npy`) are a Google ViT's."""
    try:
        detect_prefix(names)
    except CheckpointError:
        return False
    return True


def read(path: str | os.PathLike, progress: ProgressFn | None = None, lazy: bool = False) -> Checkpoint:
    """Read a Google npz file array by array into a `Checkpoint` (object arrays are refused, never unpickled).

    `lazy=True` reads only the small arrays: the large ones become meta tensors and `checkpoint.materialize(key)` reads
    one when it is needed, so a conversion streams from the npz to the output file (peak memory: one array).
    """
    if lazy:
        return npz_to_state_dict(_Planned(open_npz(path), LAZY_THRESHOLD), source=str(path), progress=progress)
    with open_npz(path) as arrays:
        try:
            return npz_to_state_dict(arrays, source=str(path), progress=progress)
        except ValueError as error:
            if "allow_pickle" in str(error):
                raise CheckpointError(
                    f"{path}: holds pickled object arrays; refusing to unpickle (only plain numeric arrays are read)."
                ) from error
            raise
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise CheckpointError(f"{path}: corrupt npz member ({error}).") from error


# Each transform's inverse, for writing: `heads` restores the (heads, head_dim) axes that reading flattened.
_INVERSE: dict[Transform, Callable[[torch.Tensor, int], torch.Tensor]] = {
    _conv: lambda a, heads: a.permute(2, 3, 1, 0),  # OIHW -> HWIO
    _dense: lambda a, heads: a.t(),
    _qkv_kernel: lambda a, heads: a.t().reshape(a.shape[1], heads, -1),
    _flat: lambda a, heads: a.reshape(heads, -1),
    _out_kernel: lambda a, heads: a.t().reshape(heads, -1, a.shape[0]),
    _same: lambda a, heads: a,
}


def write(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write a `ViTAccelForImageClassification` as a vit_jax npz (the layout of Google's ViT-B_16.npz files)."""
    config = model.config
    state_dict = {key: value.detach().float().cpu() for key, value in model.state_dict().items()}
    names = {"embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding", "head/kernel"}
    names |= {f"Transformer/encoderblock_{i}/LayerNorm_0/scale" for i in range(config.num_hidden_layers)}
    if config.representation_size is not None:
        names.add("pre_logits/kernel")
    entries, _ = key_map(names, str(path), check=False)
    arrays = {}
    for theirs, ours, transform, _ in entries:
        if ours in state_dict:
            arrays[theirs] = _INVERSE[transform](state_dict[ours], config.num_attention_heads).contiguous().numpy()
    path = Path(path)
    with open(path, "wb") as handle:  # np.savez on a name would append ".npz"
        np.savez(handle, **arrays)
    return path


def verify_npz(path: str | os.PathLike, check_crc: bool = True) -> None:
    """Check a downloaded npz: a complete zip whose members pass their CRC, with the keys of a ViT checkpoint."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            if check_crc:
                bad = archive.testzip()
                if bad is not None:
                    raise CheckpointError(f"{path}: member {bad!r} fails its CRC check (corrupt download).")
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise CheckpointError(
            f"{path}: not a complete zip/npz file ({error}); the download is truncated or corrupt."
        ) from error
    key_map(set(names), str(path))
