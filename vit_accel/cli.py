"""The `vit-accel` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import sys


def _variants(args: argparse.Namespace) -> int:
    """Print the table of named variants with their parameter counts (built on the meta device: no memory used)."""
    import torch

    from .configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig
    from .modeling_vit_accel import ViTAccelForImageClassification

    print(f"{'variant':<20} {'width':>5} {'depth':>5} {'heads':>5} {'mlp':>5} {'patch':>5} {'image':>5} {'params':>9}")
    for name in VIT_VARIANTS:
        config = ViTAccelConfig.from_variant(name, num_labels=args.num_labels)
        with torch.device("meta"):
            params = sum(p.numel() for p in ViTAccelForImageClassification(config).parameters())
        print(
            f"{name:<20} {config.hidden_size:>5} {config.num_hidden_layers:>5} {config.num_attention_heads:>5} "
            f"{config.intermediate_size:>5} {config.patch_size:>5} {config.image_size:>5} {params / 1e6:>8.1f}M"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-accel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    variants = commands.add_parser("variants", help="list the named ViT variants and their sizes")
    variants.add_argument("--num-labels", type=int, default=1000, help="classifier width used for the counts")
    variants.set_defaults(func=_variants)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
