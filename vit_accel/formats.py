"""Names the command line offers before anything heavy is imported (its `--help` must not load torch)."""

# `vit-accel export --to` and `vit_accel.weights.export(to=...)`.
EXPORT_TARGETS: tuple[str, ...] = ("transformers", "timm", "onnx", "exported-program")
