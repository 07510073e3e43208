import pytest
import torch

from vit_accel.cli import main


def test_variants_lists_every_variant_with_timm_parameter_counts(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "vit-base-p16-224" in out and "vit-huge-p14-224" in out
    # timm's vit_base_patch16_224 (1000 classes) has 86.6M parameters, vit_large_patch16_224 304.3M.
    assert "86.6M" in out.splitlines()[[line.split()[0] for line in out.splitlines()].index("vit-base-p16-224")]
    assert "304.3M" in [line for line in out.splitlines() if line.startswith("vit-large-p16-224")][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about machines without a GPU")
def test_commands_that_never_use_deepspeed_do_not_print_its_accelerator_warning(tmp_path):
    # accelerate and transformers import DeepSpeed whenever it is installed; on a machine without CUDA it would warn
    # "Setting accelerator to CPU" on every command.
    import os
    import subprocess
    import sys

    from factories import ROOT, tiny_config_kwargs

    from vit_accel import ViTAccelConfig, ViTAccelForImageClassification

    ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).save_pretrained(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    command = [sys.executable, "-m", "vit_accel.cli", "export", str(tmp_path / "model"), str(tmp_path / "out")]
    result = subprocess.run(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.safetensors" in os.listdir(tmp_path / "out")
    assert "Setting accelerator" not in result.stderr + result.stdout
