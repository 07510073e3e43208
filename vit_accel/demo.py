"""The offline demo dataset: scikit-learn's handwritten digits exported as a 🤗 `datasets` directory.

`python -m vit_accel.demo outputs/digits` writes a `save_to_disk` directory with an `image` column (8x8 grayscale
PIL images) and a `label` ClassLabel column, split into train and test; `train.py --dataset_name outputs/digits`
then trains on it like on any other dataset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import numpy as np


def export_digits(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> datasets.DatasetDict:
    """Write `load_digits()` (1,797 images, 10 classes) as a DatasetDict with a seeded stratified test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # scikit-learn is in the `demo` and `dev` extras only
        raise ImportError("The digits demo needs scikit-learn: pip install 'vit_accel[demo]'.") from error

    digits = load_digits()
    # Pixel values are 0..16; stretch them to 0..255 so they look like ordinary 8-bit images.
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict({"image": list(images), "label": digits.target.tolist()}, features=features)
    splits = full.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column="label")
    splits.save_to_disk(str(path))
    return splits


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "outputs/digits"
    result = export_digits(target)
    print(f"wrote {target}: {result.num_rows}")
