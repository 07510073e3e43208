"""Google's `.npz` checkpoints (vit_jax, AugReg, big_vision) to our parameter names, one array at a time.

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
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from .core import Checkpoint, CheckpointError, ProgressFn

PREFIXES = ("opt/target/", "params/img/", "params/", "")
REQUIRED = ("embedding/kernel", "embedding/bias")

Transform = Callable[[np.ndarray], np.ndarray]


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _dense(a: np.ndarray) -> np.ndarray:
    return a.T


def _qkv_kernel(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).T


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _out_kernel(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T


def _same(a: np.ndarray) -> np.ndarray:
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


def key_map(keys: set[str], source: str = "npz") -> tuple[list[tuple[str, str, Transform, int | None]], dict]:
    """The explicit (npz key, our key, transform, scan index) list for a file with these keys, plus facts about it."""
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
    if missing:
        raise CheckpointError(f"{source}: Google npz lacks the keys {missing[:6]} (prefix {prefix!r}).")
    facts = {"prefix": prefix, "big_vision": big_vision, "scanned": scanned, "depth": depth}
    return entries, facts


def _iter_converted(
    arrays: Mapping[str, np.ndarray],
    entries: list[tuple[str, str, Transform, int | None]],
    source: str,
    progress: ProgressFn | None,
) -> Iterator[tuple[str, torch.Tensor]]:
    total = len(entries)
    for done, (theirs, ours, transform, _) in enumerate(entries, start=1):
        array = arrays[theirs]  # read from the zip now; dropped once converted
        if "{i}" in ours:  # a scanned array holds every block: read it once, cut one slice per block
            for i in range(array.shape[0]):
                yield ours.format(i=i), _to_tensor(transform(array[i]), theirs, source)
        else:
            yield ours, _to_tensor(transform(array), theirs, source)
        if progress:
            progress(done, total, theirs, array.nbytes)
        del array


def _to_tensor(array: np.ndarray, key: str, source: str) -> torch.Tensor:
    if array.dtype.kind not in "fiu":
        raise CheckpointError(f"{source}: array {key!r} has dtype {array.dtype}, not a number type.")
    # np.ascontiguousarray copies only the transposed arrays; from_numpy then shares that memory (no second copy).
    return torch.from_numpy(np.ascontiguousarray(array))


def npz_to_state_dict(
    arrays: Mapping[str, np.ndarray], source: str = "npz", progress: ProgressFn | None = None
) -> Checkpoint:
    """Convert Google npz arrays (a lazy `np.load` result or a dict) to a `Checkpoint` under our names."""
    keys = set(arrays.keys())
    entries, facts = key_map(keys, source)
    state_dict = dict(_iter_converted(arrays, entries, source, progress))
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
    return Checkpoint(
        state_dict=state_dict,
        source=source,
        format="google-npz",
        resample_mode="bilinear",  # as Google (scipy zoom order=1) and timm's npz loader
        resample_antialias=False,
        num_attention_heads=heads,
        config={"layer_norm_eps": 1e-6, "hidden_act": "gelu"},
    )


def open_npz(path: str | os.PathLike) -> np.lib.npyio.NpzFile:
    """`np.load` that never unpickles, with errors that name the file."""
    path = str(path)
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable npz file ({error}).") from error


def load_npz(path: str | os.PathLike, progress: ProgressFn | None = None) -> Checkpoint:
    """Read a Google npz file array by array into a `Checkpoint` (object arrays are refused, never unpickled)."""
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
