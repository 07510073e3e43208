"""What an image folder (`--train_dir`, `--validation_dir`) holds, read before 🤗 datasets' ImageFolder loads it.

ImageFolder takes each image's class from the name of the folder holding it, and only when every image lies at the
same depth below the folder given and there are at least two such folders; otherwise it silently drops the labels
(then "could not find the label column"). It lists files without entering linked folders (a class folder that is a
symbolic link holds "no data"), skips hidden files and folders (`.name`, `__name`), and takes labels from a
`metadata.csv`/`.jsonl`/`.parquet` instead when there is one. This module tells the layout found from the expected
`root/<class>/<image>` in one line, and lists the files itself where linked folders must be entered.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

logger = logging.getLogger(__name__)

# 🤗 datasets resolves local data files as fsspec glob patterns, in which these characters are special.
GLOB_CHARACTERS: str = "*?[]"
EXPECTED = "expected <folder>/<class>/<image>, one folder per class"


def _image_extensions() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(extension.lower() for extension in ImageFolder.EXTENSIONS)


def _metadata_names() -> frozenset[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(ImageFolder.METADATA_FILENAMES)


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))  # what 🤗 datasets skips when it lists a folder


@dataclass
class FolderLayout:
    """What lies below a folder (linked folders entered), by folder relative to it: the number of images each holds
    directly, one example image per depth, and what else is there. Counts, not file lists, so that a folder of a
    million images costs a walk and little memory."""

    root: Path
    image_counts: dict[tuple[str, ...], int] = field(default_factory=dict)  # folder -> images directly in it
    examples: dict[int, tuple[str, ...]] = field(default_factory=dict)  # depth -> the first image found there
    other_files: Counter = field(default_factory=Counter)  # extension -> count
    folders: list[tuple[str, ...]] = field(default_factory=list)  # every (non-hidden) folder, relative
    linked: bool = False  # a folder below root is a symbolic link (which ImageFolder does not enter)
    metadata: bool = False

    @property
    def num_images(self) -> int:
        return sum(self.image_counts.values())

    @property
    def depths(self) -> set[int]:
        """How many folders lie between the root and each image."""
        return {len(folder) for folder in self.image_counts}

    @property
    def classes(self) -> list[str]:
        return sorted({folder[-1] for folder in self.image_counts if folder})

    def files(self) -> list[str]:
        """Every image's path (through the links), for ImageFolder to read as a list of files."""
        return [str(self.root.joinpath(*parts)) for parts in _walk(self.root, FolderLayout(self.root))]


def _walk(root: Path, layout: FolderLayout):
    """Fill `layout` walking `root` as ImageFolder would see it, but entering linked folders (each real folder
    once); yields each image's path relative to `root`."""
    extensions, metadata = _image_extensions(), _metadata_names()
    seen: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree: walked already
            dirs[:] = []
            continue
        seen.add(real)
        relative = Path(current).relative_to(root).parts
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in dirs:
            layout.folders.append((*relative, name))
            layout.linked |= os.path.islink(os.path.join(current, name))
        for name in sorted(files):
            if _hidden(name):
                continue
            if name in metadata:
                layout.metadata = True
            suffix = os.path.splitext(name)[1].lower()
            if suffix in extensions:
                layout.image_counts[relative] = layout.image_counts.get(relative, 0) + 1
                layout.examples.setdefault(len(relative), (*relative, name))
                yield (*relative, name)
            else:
                layout.other_files[suffix or "(no extension)"] += 1


def scan(root: Path) -> FolderLayout:
    """What lies below `root`, as `FolderLayout` counts it."""
    layout = FolderLayout(root)
    for _ in _walk(root, layout):
        pass
    return layout


def _show(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


def check_layout(layout: FolderLayout, where: str, training: bool) -> None:
    """Refuse, in one line naming the folder (`where`: the flag and path) and what was found there, a layout
    ImageFolder would load without the classes the user meant (or not at all); warn where it loads but takes the
    classes from deeper folders."""
    if layout.metadata:
        return  # labels and columns come from the metadata file: any layout of the images is then valid
    if not layout.image_counts:
        if layout.other_files:
            found = ", ".join(f"{count} {suffix}" for suffix, count in layout.other_files.most_common(4))
            raise UserError(
                f"{where} holds no image files (found {found}; images are .png, .jpg, .webp, ..., the formats PIL "
                f"reads); {EXPECTED}."
            )
        raise UserError(f"{where} holds no images (no files at all below it); {EXPECTED}.")
    depths = layout.depths
    if depths == {0}:
        raise UserError(
            f"{where} holds its {layout.num_images} images directly, without class folders (e.g. "
            f"{_show(layout.examples[0])}); {EXPECTED}, or a metadata.csv with a file_name and a label column."
        )
    if len(depths) > 1:
        examples = " and ".join(_show(layout.examples[d]) for d in sorted(layout.examples)[:2])
        if 0 in depths:
            raise UserError(
                f"{where} holds images both directly in it and in class folders (e.g. {examples}): ImageFolder then "
                f"finds no classes; move each into its class's folder ({EXPECTED})."
            )
        raise UserError(
            f"{where} holds images at different depths (e.g. {examples}): ImageFolder takes the class from the "
            f"folder holding each image only when all lie equally deep, so it would find none; {EXPECTED}."
        )
    (depth,) = depths
    holders = set(layout.image_counts)
    empty = sorted(folder for folder in layout.folders if len(folder) == depth and folder not in holders)
    if empty:
        raise UserError(
            f"{where}: the class folder {_show(empty[0])!r} holds no images"
            + (f" ({len(empty)} such folders)" if len(empty) > 1 else "")
            + ": that class would silently not exist; add its images or remove the folder."
        )
    classes = layout.classes
    if training and len(classes) < 2:
        raise UserError(
            f"{where} has a single class folder ({classes[0]!r}): a classifier needs at least two ({EXPECTED})."
        )
    if depth > 1:
        above = sorted({_show(parts[:-1]) for parts in holders})
        merged = [name for name, count in Counter(parts[-1] for parts in holders).items() if count > 1]
        logger.warning(
            f"{where}: the images lie {depth} folders deep, and ImageFolder names each class after the folder "
            f"holding the image: {len(classes)} classes ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}"
            f"), from {', '.join(above[:3])}{', ...' if len(above) > 3 else ''}"
            + (f"; folders of the same name are one class ({', '.join(merged[:3])})" if merged else "")
            + "."
        )


def compare_classes(train: FolderLayout, validation: FolderLayout) -> None:
    """Warn when the validation folder lacks classes of the training folder: trained, never evaluated. (The reverse,
    a class only in validation, is refused once the labels are read.)"""
    if train.metadata or validation.metadata:
        return
    missing = sorted(set(train.classes) - set(validation.classes))
    if missing:
        logger.warning(
            f"--validation_dir {validation.root} has no images of {len(missing)} class(es) of --train_dir "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): they are trained but never evaluated."
        )


def label_options(layouts) -> dict:
    """ImageFolder's options for these folders: labels kept even for a single class folder (ImageFolder drops them
    then, although a single class is what an evaluation folder may hold), unless a metadata file gives them."""
    return {} if any(layout.metadata for layout in layouts) else {"drop_labels": False}


def data_files(layout: FolderLayout) -> str | list[str]:
    """What to give ImageFolder for the folder: the recursive pattern of its folder (its own listing), or the list
    of image files where a linked folder must be entered."""
    import glob

    if layout.linked and not layout.metadata:
        special = sorted({c for c in str(layout.root.resolve()) if c in GLOB_CHARACTERS})
        if special:
            # 🤗 datasets reads a file name holding them as a pattern, and patterns are matched by walking the
            # folder, which does not enter links: the linked class folders would hold "no data".
            raise UserError(
                f"{layout.root}: its path holds the glob character(s) {', '.join(map(repr, special))} and it has "
                "class folders that are links, which 🤗 datasets cannot read together; rename the folder (or point a "
                "link without them at it)."
            )
        return [glob.escape(path) for path in layout.files()]
    # Escaped: 🤗 datasets reads data files as glob patterns, and `data[1]` is a folder name, not a pattern.
    return os.path.join(glob.escape(str(layout.root)), "**")


def _split_of(name: str) -> str | None:
    """The split 🤗 datasets names after a folder called `name` (train, training -> train; ...), else None."""
    from datasets.data_files import SPLIT_KEYWORDS

    return next((str(split) for split, words in SPLIT_KEYWORDS.items() if name.lower() in words), None)


def _split_like(name: str) -> bool:
    """Whether 🤗 datasets would read a folder of this name as (part of) a split: a split keyword alone, or joined to
    other words by - _ . or a space."""
    from datasets.data_files import SPLIT_KEYWORDS

    words = {word for group in SPLIT_KEYWORDS.values() for word in group}
    return any(part in words for part in re.split(r"[-_. ]", name.lower()))


# Files that make 🤗 datasets read a folder as a table (or an archive) rather than as an image folder.
DATA_FILE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl", ".zip", ".tar", ".gz", ".tgz")


def image_folder_splits(root: Path, flag: str) -> dict[str, FolderLayout] | None:
    """For a `--dataset_name` folder of images (no metadata file): its splits as 🤗 datasets infers them, each
    checked as a class-folder layout. `{"train": <root>}` when no folder is named after a split; one entry per
    top-level split folder (train/, test/, validation/, ...) when the images lie in those; None when datasets' own
    split inference should decide (split names deeper down or joined to other words)."""
    layout = scan(root)
    if (
        layout.metadata
        or not layout.image_counts
        or any(suffix in DATA_FILE_EXTENSIONS for suffix in layout.other_files)
    ):
        return None
    top = {parts[0] for parts in layout.folders if len(parts) == 1}
    splits = {name: _split_of(name) for name in top if _split_of(name) is not None}
    if not splits and not any(_split_like(name) for parts in layout.folders for name in parts):
        check_layout(layout, flag, training=True)
        return {"train": layout}
    images_in_splits = all(folder and folder[0] in splits for folder in layout.image_counts)
    if not splits or not images_in_splits or len(set(splits.values())) < len(splits):
        return None
    found = {}
    for name, split in splits.items():
        found[split] = scan(root / name)
        check_layout(found[split], f"{flag} (its {name}/ folder)", training=split == "train")
    return found
