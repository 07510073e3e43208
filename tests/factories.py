"""Builders of small models and synthetic data shared by the tests (nothing here touches a network)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Put in the environment of a training run; no file it writes may contain it.
FAKE_TOKEN = "hf_vitaccelTESTtokenNEVERwritten0123456789"


def tiny_config_kwargs(**overrides) -> dict:
    """Fields of a ViT small enough for a CPU unit test: 2 blocks, width 48, 32-px images, 5 labels."""
    kwargs = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    kwargs.update(overrides)
    return kwargs


# --- Image datasets in the real on-disk formats. Tiny: tens of 32x32 images, built in a tmp folder. ---


def random_rgb(seed: int, size: tuple[int, int] = (32, 32)):
    """A seeded random uint8 RGB array of shape (height, width, 3)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def png_bytes(array, mode: str | None = None) -> bytes:
    """Encode an array (or a PIL image) as PNG bytes."""
    import io

    import PIL.Image

    image = array if isinstance(array, PIL.Image.Image) else PIL.Image.fromarray(array, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_exif_rotated_pair(folder, seed: int = 0, size: tuple[int, int] = (16, 16)) -> tuple:
    """A JPEG whose pixels are stored turned, with EXIF Orientation 6 (a phone held upright), and its upright copy.

    The copy is the JPEG's own decoded pixels turned upright and saved losslessly (PNG), so the two hold exactly the
    same image once the orientation is applied. Returns (jpeg path, png path)."""
    import numpy as np
    import PIL.Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Smooth gradients plus noise: a picture whose four turns differ everywhere, not a symmetric pattern.
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * y) % 256], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 40, size=base.shape)
    upright = PIL.Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # "rotate 90 CW to display": the sensor's pixels are turned CCW
    jpeg = folder / f"photo{seed}.jpg"
    upright.transpose(PIL.Image.Transpose.ROTATE_90).save(jpeg, exif=exif, quality=95)
    with PIL.Image.open(jpeg) as stored:
        assert stored.getexif()[PIL.Image.ExifTags.Base.Orientation] == 6
        turned = stored.transpose(PIL.Image.Transpose.ROTATE_270)  # what Orientation 6 means, by hand
    png = folder / f"photo{seed}_upright.png"
    turned.save(png)
    return jpeg, png


def cifar100_dataset(num: int, seed: int = 0, num_fine: int = 100):
    """uoft-cs/cifar100's schema: `img` (PNG bytes), `fine_label` (ClassLabel 100), `coarse_label` (20)."""
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features(
        {
            "img": Image(),
            "fine_label": ClassLabel(names=[f"fine_{i}" for i in range(num_fine)]),
            "coarse_label": ClassLabel(names=[f"coarse_{i}" for i in range(20)]),
        }
    )
    return Dataset.from_dict(
        {
            "img": [{"bytes": png_bytes(random_rgb(seed * 100_000 + i)), "path": None} for i in range(num)],
            "fine_label": [i % num_fine for i in range(num)],
            "coarse_label": [(i % num_fine) % 20 for i in range(num)],
        },
        features=features,
    )


def cifar10_dataset(num: int, seed: int = 0):
    """uoft-cs/cifar10's schema: `img` (PNG bytes) and `label` (ClassLabel of 10 names)."""
    from datasets import ClassLabel, Dataset, Features, Image

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    features = Features({"img": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict(
        {
            "img": [{"bytes": png_bytes(random_rgb(seed * 100_000 + i)), "path": None} for i in range(num)],
            "label": [i % 10 for i in range(num)],
        },
        features=features,
    )


def beans_dataset(num: int, seed: int = 0):
    """beans' schema: `image_file_path` (string), `image` (Image), `labels` (ClassLabel of 3 names)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value

    names = ["angular_leaf_spot", "bean_rust", "healthy"]
    features = Features({"image_file_path": Value("string"), "image": Image(), "labels": ClassLabel(names=names)})
    return Dataset.from_dict(
        {
            "image_file_path": [f"/beans/train/{i}.jpg" for i in range(num)],
            "image": [{"bytes": png_bytes(random_rgb(seed * 100_000 + i, (48, 40))), "path": None} for i in range(num)],
            "labels": [i % 3 for i in range(num)],
        },
        features=features,
    )


def write_hub_parquet(root, splits: dict) -> None:
    """Write {split: Dataset} as a Hub repository does: `root/data/<split>-00000-of-00001.parquet` (features kept)."""
    from pathlib import Path

    data = Path(root) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        dataset.to_parquet(str(data / f"{split}-00000-of-00001.parquet"))


def write_image_folder(root, per_class: dict, seed: int = 0, ext: str = "png") -> list:
    """ImageFolder layout `root/<class>/<i>.<ext>` with `per_class[class]` images each; returns the file paths."""
    from pathlib import Path

    import PIL.Image

    paths = []
    for c, (name, count) in enumerate(sorted(per_class.items())):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"{i}.{ext}"
            PIL.Image.fromarray(random_rgb(seed * 100_000 + c * 1000 + i)).save(path)
            paths.append(path)
    return paths


def google_npz_arrays(
    hidden=48,
    depth=2,
    heads=4,
    mlp=96,
    patch=8,
    grid=4,
    num_classes=7,
    representation_size=None,
    prefix="",
    big_vision=False,
    scanned=False,
    zero_head=False,
    seed=0,
):
    """A Google ViT npz as arrays: the real key names and layouts (vit_jax, or big_vision if asked), random values.

    vit_jax: `Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/...`, `MlpBlock_3`, `LayerNorm_2`, position
    embeddings `(1, 1 + grid**2, D)` with the CLS row first. big_vision: `MultiHeadDotProductAttention_0`, `MlpBlock_0`,
    `LayerNorm_1`, `pos_embedding` `(1, grid**2, D)`; `scanned` stacks the blocks on a leading axis.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    head_dim = hidden // heads

    def rand(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arrays = {
        "embedding/kernel": rand(patch, patch, 3, hidden, scale=0.05),
        "embedding/bias": rand(hidden),
        "cls": rand(1, 1, hidden),
        "Transformer/encoder_norm/scale": 1 + rand(hidden),
        "Transformer/encoder_norm/bias": rand(hidden),
    }
    if big_vision:
        arrays["pos_embedding"] = rand(1, grid * grid, hidden)
    else:
        arrays["Transformer/posembed_input/pos_embedding"] = rand(1, 1 + grid * grid, hidden)
    mha, mlp_name, ln2 = (
        ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1")
        if big_vision
        else ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    )
    blocks = []
    for _ in range(depth):
        block = {
            "LayerNorm_0/scale": 1 + rand(hidden),
            "LayerNorm_0/bias": rand(hidden),
            f"{ln2}/scale": 1 + rand(hidden),
            f"{ln2}/bias": rand(hidden),
            f"{mha}/out/kernel": rand(heads, head_dim, hidden),
            f"{mha}/out/bias": rand(hidden),
            f"{mlp_name}/Dense_0/kernel": rand(hidden, mlp),
            f"{mlp_name}/Dense_0/bias": rand(mlp),
            f"{mlp_name}/Dense_1/kernel": rand(mlp, hidden),
            f"{mlp_name}/Dense_1/bias": rand(hidden),
        }
        for name in ("query", "key", "value"):
            block[f"{mha}/{name}/kernel"] = rand(hidden, heads, head_dim)
            block[f"{mha}/{name}/bias"] = rand(heads, head_dim)
        blocks.append(block)
    if scanned:
        for key in blocks[0]:
            arrays[f"Transformer/encoderblock/{key}"] = np.stack([block[key] for block in blocks])
    else:
        for i, block in enumerate(blocks):
            for key, value in block.items():
                arrays[f"Transformer/encoderblock_{i}/{key}"] = value
    features = hidden
    if representation_size is not None:
        arrays["pre_logits/kernel"] = rand(hidden, representation_size)
        arrays["pre_logits/bias"] = rand(representation_size)
        features = representation_size
    if num_classes:
        arrays["head/kernel"] = (
            np.zeros((features, num_classes), np.float32) if zero_head else rand(features, num_classes)
        )
        arrays["head/bias"] = np.zeros((num_classes,), np.float32) if zero_head else rand(num_classes)
    return {prefix + key: value for key, value in arrays.items()}


def write_google_npz(path, **kwargs):
    """Write `google_npz_arrays(**kwargs)` as an uncompressed npz (as Google's files are) and return the path."""
    import numpy as np

    np.savez(path, **google_npz_arrays(**kwargs))
    return path


def npz_bytes(**kwargs) -> bytes:
    """`google_npz_arrays(**kwargs)` as the bytes of an npz file (what a weights server sends)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **google_npz_arrays(**kwargs))
    return buffer.getvalue()


def cache_files(root) -> list:
    """The file names in `<root>/vit_accel`, where named variants are cached."""
    folder = Path(root) / "vit_accel"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
