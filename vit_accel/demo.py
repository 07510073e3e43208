"""The offline demo dataset: scikit-learn's handwritten digits exported as a 🤗 `datasets` directory.

`python -m vit_accel.demo outputs/digits` writes a `save_to_disk` directory with an `image` column (8x8 grayscale
PIL images) and a `label` ClassLabel column, split into train and test; `train.py --dataset_name outputs/digits`
then trains on it like on any other dataset. `--rotate 90` writes the same digits turned a quarter counter-clockwise
(same split): a task a model trained on upright digits was not trained for, used by the LoRA demo.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np


def export_digits(path: str | Path, test_fraction: float = 0.2, seed: int = 0, rotate: int = 0) -> datasets.DatasetDict:
    """Write `load_digits()` (1,797 images, 10 classes) as a DatasetDict with a seeded stratified test split.

    `rotate` (a multiple of 90 degrees) turns every image counter-clockwise; the split does not depend on it.
    """
    if rotate % 90:
        raise ValueError(f"rotate must be a multiple of 90 degrees, got {rotate}.")
    try:
        # Deferred: scikit-learn is the demo's (the `demo` extra), not a dependency of the package.
        from sklearn.datasets import load_digits
    except ImportError as error:  # scikit-learn is in the `demo` and `dev` extras only
        raise ImportError("The digits demo needs scikit-learn: pip install 'vit_accel[demo]'.") from error

    digits = load_digits()
    # Pixel values are 0..16; stretch them to 0..255 so they look like ordinary 8-bit images.
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    images = np.ascontiguousarray(np.rot90(images, k=rotate // 90, axes=(1, 2)))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": list(images), "label": digits.target.tolist()}, features=features)
    splits = full.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    splits.save_to_disk(str(path))
    return splits


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vit_accel.demo", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="outputs/digits", help="directory to write")
    parser.add_argument("--rotate", type=int, default=0, help="turn every digit by this many degrees (90, 180, 270)")
    args = parser.parse_args()
    result = export_digits(args.target, rotate=args.rotate)
    print(f"wrote {args.target}: {result.num_rows}")
