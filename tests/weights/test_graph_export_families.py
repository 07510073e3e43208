"""Each ViT family as a graph for Python-free runtimes (`vit_accel.weights.graph_export`), with a dynamic batch and the
eager model's logits: ONNX for the two whose parts are furthest from Google's ViT (SigLIP's attention pool without a
CLS token, DINOv3's RoPE with registers; torch's ONNX exporter goes through torch.export), a torch.export
ExportedProgram for the others (each export takes seconds on 2 cores, so each family is exported once)."""

import pytest
import torch
from test_modeling_vit_accel_families import FAMILY_OPTIONS, family_model

from vit_accel.weights import graph_export

ATOL = 1e-5


@pytest.mark.parametrize("name", sorted(set(FAMILY_OPTIONS) - {"siglip", "dinov3"}))
def test_every_other_family_exports_to_an_exported_program_with_any_batch(name, tmp_path):
    model = family_model(name).eval()
    path = graph_export.write_exported_program(model, tmp_path)
    program = torch.export.load(str(path)).module()
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program(pixels), model(pixels).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["siglip", "dinov3"])
def test_attention_pool_and_rope_families_export_to_onnx_with_any_batch(name, tmp_path):
    import onnxruntime

    model = family_model(name).eval()
    path = graph_export.write_onnx(model, tmp_path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(pixels).logits, atol=ATOL, rtol=0)
