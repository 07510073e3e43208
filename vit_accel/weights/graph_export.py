"""Our classifier as a graph for runtimes without Python models: ONNX (torch's exporter) and a `torch.export`
ExportedProgram, both with a dynamic batch dimension; input `pixel_values (batch, C, H, W)`, output `logits`.

The ONNX exporter needs `onnx` and `onnxscript` (the `onnx` extra of this package); running the file needs an ONNX
runtime, which is the user's choice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import UserError

ONNX_FILE = "model.onnx"
PROGRAM_FILE = "model.pt2"


class Logits(torch.nn.Module):
    """`pixel_values -> logits` around our classifier: a graph with one plain tensor in and out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def require_onnx_exporter() -> None:
    """Refuse, in one line naming what to install, when torch's ONNX exporter cannot run here."""
    missing = [name for name in ("onnx", "onnxscript") if not installed(name)]
    if missing:
        raise UserError(
            f"export --to onnx needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            "installed: pip install 'vit_accel[onnx]'."
        )


def _traced(model: torch.nn.Module) -> tuple[Logits, tuple[torch.Tensor], dict]:
    config = model.config
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    parameter = next(model.parameters())
    # Batch 2 as the example: torch.export specialises sizes 0 and 1, so they cannot stand for "any batch".
    example = torch.zeros(2, config.num_channels, *size, dtype=parameter.dtype, device=parameter.device)
    batch = torch.export.Dim("batch", min=1)
    return Logits(model).eval(), (example,), {"pixel_values": {0: batch}}


def write_onnx(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """`out_dir/model.onnx` (weights in `model.onnx.data` beside it): torch's dynamo-based ONNX exporter."""
    require_onnx_exporter()
    wrapper, args, dynamic_shapes = _traced(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(out_dir / ONNX_FILE),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=["pixel_values"],
            output_names=["logits"],
            verbose=False,
        )
    return out_dir / ONNX_FILE


def write_exported_program(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """`out_dir/model.pt2`: a `torch.export` ExportedProgram (reload with `torch.export.load(path).module()`)."""
    wrapper, args, dynamic_shapes = _traced(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(wrapper, args, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(out_dir / PROGRAM_FILE))
    return out_dir / PROGRAM_FILE
