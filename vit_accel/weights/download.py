"""Named weights: where Google's ImageNet-21k files live, and a resumable, verified download into the HF cache.

Every named variant starts from a 224-px ImageNet-21k file (the `-384` variants resample the position embeddings at
load time). A download goes to `<HF hub cache>/vit_accel/<file>.incomplete`, resumes with an HTTP Range request after
an interruption, is verified (length, zip CRCs, the keys of a ViT) and only then renamed into place; it is converted
once to safetensors next to it, so later loads are a memory-mapped read. Set `VIT_ACCEL_WEIGHTS_URL` to fetch from a
mirror (the tests point it at a local server).

The transfer is our own (urllib with a Range header) rather than huggingface_hub's: Google's files live in its storage
bucket, not in a Hub repo, and `hf_hub_download` fetches Hub repos only; resuming a multi-gigabyte file after a cut
connection, instead of starting over, is the point of the `.incomplete` file.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants

from ..errors import UserError
from .source_weights import CheckpointError

DEFAULT_BASE_URL = "https://storage.googleapis.com/vit_models/"

# (size, patch) -> file under the bucket. "orig": the paper's ImageNet-21k files; "augreg": "How to train your ViT"
# (the names timm's default_cfgs use for its `*.augreg_in21k` tags). Both are 224-px, 21843-class files.
WEIGHT_FILES: dict[tuple[str, int], dict[str, str]] = {
    ("tiny", 16): {"augreg": "augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0.npz"},
    ("small", 16): {"augreg": "augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz"},
    ("small", 32): {"augreg": "augreg/S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0.npz"},
    ("base", 16): {
        "orig": "imagenet21k/ViT-B_16.npz",
        "augreg": "augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
    },
    ("base", 32): {
        "orig": "imagenet21k/ViT-B_32.npz",
        "augreg": "augreg/B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0.npz",
    },
    ("base", 8): {
        "orig": "imagenet21k/ViT-B_8.npz",
        "augreg": "augreg/B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
    },
    ("large", 16): {
        "orig": "imagenet21k/ViT-L_16.npz",
        "augreg": "augreg/L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1.npz",
    },
    ("large", 32): {"orig": "imagenet21k/ViT-L_32.npz"},
    ("huge", 14): {"orig": "imagenet21k/ViT-H_14.npz"},
}
WEIGHT_SETS = ("orig", "augreg")
CHUNK = 1 << 20


class WeightsDownloadError(UserError):
    """A named checkpoint could not be fetched; the message names the URL and how to pass a local file instead."""


def base_url() -> str:
    url = os.environ.get("VIT_ACCEL_WEIGHTS_URL", DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """`<root>/vit_accel`; without `root`, the HF hub cache read from the environment at call time (HF_HUB_CACHE,
    then HF_HOME/hub), as `from_pretrained(cache_dir=...)` and the environment choose it for Hub models."""
    if root is not None:
        hub = Path(root)
    elif os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"])
    elif os.environ.get("HF_HOME"):
        hub = Path(os.environ["HF_HOME"]) / "hub"
    else:
        hub = Path(constants.HF_HUB_CACHE)
    return hub / "vit_accel"


def weight_file(variant: str, weights: str | None = None) -> str:
    """The bucket path of the 21k file a variant starts from (`weights`: "orig" or "augreg"; default: orig if any)."""
    parts = variant.split("-")  # vit-{size}-p{patch}-{res}
    key = (parts[1], int(parts[2][1:]))
    files = WEIGHT_FILES.get(key, {})
    if weights is not None and weights not in WEIGHT_SETS:
        raise UserError(f"weights must be one of {WEIGHT_SETS}, got {weights!r}.")
    choice = weights or ("orig" if "orig" in files else "augreg")
    if choice not in files:
        available = ", ".join(files) or "none"
        raise WeightsDownloadError(
            f"No public ImageNet-21k {choice!r} file for {variant} (available for this variant: {available}); "
            f"pass a local checkpoint instead: ViTAccelForImageClassification.from_pretrained('/path/file.npz', "
            f"variant={variant!r}, num_labels=...)."
        )
    return files[choice]


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, but at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "0"
    return value.upper() in ("1", "ON", "YES", "TRUE")


def _remote_failure(url: str, local_path: Path, reason: object) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"Could not download {url}: {reason}. Without network access, fetch that file elsewhere and pass its path: "
        f"ViTAccelForImageClassification.from_pretrained('/path/to/{local_path.name}', variant=..., num_labels=...), "
        f"or place it at {local_path} (the cache), or set VIT_ACCEL_WEIGHTS_URL to a mirror."
    )


def fetch(
    relative: str,
    dest_dir: Path | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    verify=None,
    quiet: bool = False,
    force: bool = False,
    local_only: bool = False,
) -> Path:
    """Download `base_url() + relative` into the cache, resuming after interruptions; verified before it is kept.

    `verify(path)` raises on a bad file; the partial file is then deleted, so nothing corrupt stays in the cache.
    `force` downloads again even when the file is cached; `local_only` (or HF_HUB_OFFLINE) never touches the network.
    """
    dest_dir = dest_dir or cache_dir()
    name = Path(relative).name
    final = dest_dir / name
    if final.is_file() and not force:
        return final
    url = base_url() + relative
    if local_only or offline():
        reason = "local_files_only=True" if local_only else "HF_HUB_OFFLINE is set"
        raise _remote_failure(url, final, f"{reason}, and the cache has no copy")
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = dest_dir / (name + ".incomplete")
    if force:
        partial.unlink(missing_ok=True)
    total: int | None = None
    last_error: object = None
    for _attempt in range(retries):
        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status == 206:
                    total = _total_from_content_range(response.headers.get("Content-Range")) or total
                    mode = "ab"
                else:  # 200: the server ignored the range (or nothing was there yet): start over
                    have, mode = 0, "wb"
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                with open(partial, mode) as handle:
                    _copy(response, handle, have, total, name, quiet)
            size = partial.stat().st_size
            if total is not None and size != total:
                last_error = f"received {size} of {total} bytes"
                continue
            break
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # our partial file is longer than the resource: restart from scratch
                partial.unlink()
                last_error = error
                continue
            raise _remote_failure(url, final, f"HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, TimeoutError, OSError) as error:
            # An interrupted transfer: keep what arrived and ask for the rest on the next attempt.
            last_error = getattr(error, "reason", error)
            time.sleep(0.2)
            continue
    else:
        raise _remote_failure(url, final, f"gave up after {retries} attempts ({last_error})")
    try:
        if verify is not None:
            verify(partial)
    except CheckpointError as error:
        partial.unlink(missing_ok=True)  # never leave a corrupt file to be resumed or trusted
        raise WeightsDownloadError(f"Downloaded {url} but the file is not valid and was deleted: {error}") from error
    os.replace(partial, final)
    return final


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-999/1000"
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None


def _copy(response, handle, have: int, total: int | None, name: str, quiet: bool) -> None:
    done, reported = have, time.monotonic()
    while True:
        chunk = response.read(CHUNK)
        if not chunk:
            break
        handle.write(chunk)
        done += len(chunk)
        if not quiet and time.monotonic() - reported > 2.0:
            reported = time.monotonic()
            of = f" of {total / 1e6:.0f} MB" if total else ""
            print(f"downloading {name}: {done / 1e6:.0f} MB{of}", file=sys.stderr, flush=True)
    if total is not None and done < total:
        raise ConnectionError(f"connection closed after {done} of {total} bytes")
