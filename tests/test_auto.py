"""`import vit_accel` registers our model type with transformers' Auto classes without importing torch itself."""

import subprocess
import sys
import textwrap

import pytest
import torch
from factories import ROOT, tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    model.save_pretrained(root / "ours")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.save({"x": x, "logits": model(pixel_values=x).logits}, root / "expected.pt")
    return root


ORDERS = {
    # The README's order: vit_accel first, transformers' Auto classes loaded afterwards.
    "vit_accel first": """
        import sys
        import vit_accel
        assert "torch" not in sys.modules, "import vit_accel imported torch"
        from transformers import AutoModelForImageClassification
    """,
    "transformers first": """
        from transformers import AutoModelForImageClassification
        import vit_accel
    """,
    "config before models": """
        import vit_accel
        from transformers import AutoConfig
        assert type(AutoConfig.from_pretrained(OURS)).__name__ == "ViTAccelConfig"
        from transformers import AutoModelForImageClassification
    """,
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_import_vit_accel_registers_the_auto_classes_in_a_fresh_process(saved, order):
    script = textwrap.dedent(ORDERS[order]) + textwrap.dedent(
        """
        import torch
        model = AutoModelForImageClassification.from_pretrained(OURS).eval()  # no trust_remote_code
        assert type(model).__module__ == "vit_accel.modeling_vit_accel", type(model)
        expected = torch.load(EXPECTED, weights_only=True)
        with torch.no_grad():
            print((model(pixel_values=expected["x"]).logits - expected["logits"]).abs().max().item())
        """
    )
    script = script.replace("OURS", repr(str(saved / "ours"))).replace("EXPECTED", repr(str(saved / "expected.pt")))
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) == 0.0


def test_the_model_module_imported_directly_reads_every_source(tmp_path):
    # The from_pretrained extension (here: a bare timm state dict) comes with the model module, not only with
    # vit_accel's attributes.
    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import save_file
        from timm.models.vision_transformer import VisionTransformer
        from vit_accel.modeling_vit_accel import ViTAccelForImageClassification
        timm_model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_classes=3)
        path = {str(tmp_path / "timm.safetensors")!r}
        save_file(timm_model.state_dict(), path)
        model = ViTAccelForImageClassification.from_pretrained(path, num_attention_heads=4)
        print(model.config.num_labels)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "3"
