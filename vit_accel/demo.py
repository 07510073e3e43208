"""The offline demo dataset: scikit-learn's handwritten digits exported as a 🤗 `datasets` directory.

`python -m vit_accel.demo outputs/digits` writes a `save_to_disk` directory with an `image` column (8x8 grayscale
PIL images) and a `label` ClassLabel column, split into train and test; `train.py --dataset_name outputs/digits`
then trains on it like on any other dataset. `--rotate 90` writes the same digits turned a quarter counter-clockwise
(same split): a task a model trained on upright digits was not trained for, used by the LoRA demo.
`--label_fraction 0.1` writes the MAE demo's two datasets instead: `<target>/unlabeled` (the training images alone,
no label column, for `pretrain.py`) and `<target>/labeled` (a seeded stratified tenth of the training images with
their labels, and the same test split, for `train.py`), beside `<target>/full`, the whole dataset they come from.
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


def export_mae_digits(
    path: str | Path, label_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2
) -> dict[str, datasets.DatasetDict]:
    """The digits as the MAE demo uses them: `path/unlabeled`, every training image without its label (the images
    `export_digits` puts in its train split), and `path/labeled`, `label_fraction` of those training images with their
    labels (drawn with `seed`, stratified by class) beside the same test split."""
    if not 0.0 < label_fraction < 1.0:
        raise ValueError(f"label_fraction must be in (0, 1), got {label_fraction}.")
    path = Path(path)
    splits = export_digits(path / "full", test_fraction=test_fraction)
    unlabeled = datasets.DatasetDict({"train": splits["train"].remove_columns("label")})
    subset = splits["train"].train_test_split(train_size=label_fraction, seed=seed, stratify_by_column="label")
    labeled = datasets.DatasetDict({"train": subset["train"], "test": splits["test"]})
    unlabeled.save_to_disk(str(path / "unlabeled"))
    labeled.save_to_disk(str(path / "labeled"))
    return {"unlabeled": unlabeled, "labeled": labeled}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vit_accel.demo", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="outputs/digits", help="directory to write")
    parser.add_argument("--rotate", type=int, default=0, help="turn every digit by this many degrees (90, 180, 270)")
    parser.add_argument(
        "--label_fraction",
        type=float,
        help="write the MAE demo's unlabeled training images and this stratified fraction of them with labels",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --label_fraction: the seed of the labelled draw")
    args = parser.parse_args()
    if args.label_fraction is not None:
        written = export_mae_digits(args.target, label_fraction=args.label_fraction, seed=args.seed)
        for name, result in written.items():
            print(f"wrote {Path(args.target) / name}: {result.num_rows}")
    else:
        result = export_digits(args.target, rotate=args.rotate)
        print(f"wrote {args.target}: {result.num_rows}")
