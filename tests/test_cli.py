from vit_accel.cli import main


def test_variants_lists_every_variant_with_timm_parameter_counts(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "vit-base-p16-224" in out and "vit-huge-p14-224" in out
    # timm's vit_base_patch16_224 (1000 classes) has 86.6M parameters, vit_large_patch16_224 304.3M.
    assert "86.6M" in out.splitlines()[[line.split()[0] for line in out.splitlines()].index("vit-base-p16-224")]
    assert "304.3M" in [line for line in out.splitlines() if line.startswith("vit-large-p16-224")][0]
