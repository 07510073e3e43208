"""Pretrained weights for ViTAccel: named variants, Google npz, timm and transformers checkpoints, detected by content.

    ViTAccelForImageClassification.from_pretrained("vit-base-p16-384", num_labels=100)

`ViTAccelPreTrainedModel.from_pretrained` calls `loading.from_pretrained` whenever vit_accel is installed (nothing is
set up at import), so the usual `from_pretrained` also accepts a named variant, a Google `.npz`, a timm state dict, a
transformers ViT directory or Hub id, and a safetensors file of ours. A directory (or Hub repo) of ours goes down
transformers' standard path.

One module per format, each with the same surface (`detect`, `read` into our names, `write` from our names):
`google_npz`, `timm_state_dict`, `transformers_vit`, `native` (ours), for the later ViT families `timm_families` and
`transformers_families`, `meta_dinov2` for Meta's DINOv2 `.pth`, and `mae` for MAE pre-training checkpoints (with
their decoder). Around them: `files`
(containers: sniffing, safe reads, the streaming safetensors writer), `sources` (named variants, local paths, the Hub),
`policy` (head, pre_logits/pooler, position-embedding resampling: the fine-tuning policy), `loading` (the
`from_pretrained` entry point and its keywords), `conversion` (`convert`, `export`), `graph_export` (ONNX,
ExportedProgram), `download`.
"""

from __future__ import annotations

from .conversion import EXPORT_TARGETS, convert, export
from .download import WeightsDownloadError
from .files import save_safetensors, sniff
from .loading import from_pretrained
from .policy import HEAD_INITS
from .source_weights import Checkpoint, CheckpointError, ProgressFn
from .sources import ACCEPTED, read_checkpoint

__all__ = [
    "ACCEPTED",
    "EXPORT_TARGETS",
    "HEAD_INITS",
    "Checkpoint",
    "CheckpointError",
    "ProgressFn",
    "WeightsDownloadError",
    "convert",
    "export",
    "from_pretrained",
    "read_checkpoint",
    "save_safetensors",
    "sniff",
]
