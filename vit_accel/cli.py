"""The `vit-accel` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError, report


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


class _Progress:
    """Prints `<stage>: i/n tensors, MB` to stderr at most once a second, and always for the last tensor."""

    def __init__(self, stage: str, quiet: bool = False):
        self.stage, self.quiet, self.bytes, self.last = stage, quiet, 0, 0.0

    def __call__(self, index: int, total: int, key: str, nbytes: int) -> None:
        import time

        self.bytes += nbytes
        now = time.monotonic()
        if self.quiet or (index < total and now - self.last < 1.0):
            return
        self.last = now
        print(f"{self.stage}: {index}/{total} tensors, {self.bytes / 1e6:.0f} MB", file=sys.stderr, flush=True)


def _convert(args: argparse.Namespace) -> int:
    """Any supported checkpoint -> a ViTAccel directory (config.json + model.safetensors)."""
    import time

    from .weights import convert

    overrides = {
        key: value
        for key, value in (
            ("num_labels", args.num_labels),
            ("image_size", args.image_size),
            ("representation_size", args.representation_size),
            ("num_attention_heads", args.num_heads),
        )
        if value is not None
    }
    start = time.perf_counter()
    out = Path(args.output)
    model = convert(
        args.source,
        out,
        progress=_Progress("reading", args.quiet),
        write_progress=_Progress("writing", args.quiet),
        variant=args.variant,
        head_init=args.head_init,
        resample_mode=args.resample_mode,
        weights=args.weights,
        quiet=args.quiet,
        **overrides,
    )
    config = model.config
    size = (out / "model.safetensors").stat().st_size
    print(
        f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s: width {config.hidden_size}, "
        f"depth {config.num_hidden_layers}, heads {config.num_attention_heads}, patch {config.patch_size}, "
        f"image {config.image_size}, {config.num_labels} labels"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    """A ViTAccel directory -> transformers, timm, ONNX or a torch.export ExportedProgram."""
    from .weights import export

    out = export(args.source, args.output, to=args.to)
    print(f"wrote {args.to} export to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vit-accel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    variants = commands.add_parser("variants", help="list the named ViT variants and their sizes")
    variants.add_argument("--num_labels", type=int, default=1000, help="classifier width used for the counts")
    variants.set_defaults(func=_variants)

    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint (named variant, Google .npz, timm, transformers) to a ViTAccel directory",
        description="Read a named variant (downloaded once into the HF cache), a Google .npz, a timm state dict or a "
        "transformers ViT directory/Hub id, detected from the content, and write config.json + model.safetensors.",
    )
    convert.add_argument("source", help="named variant (e.g. vit-base-p16-384), file, directory or Hub id")
    convert.add_argument("output", help="directory to write")
    convert.add_argument("--variant", help="named variant the source must fit (default: the source's own shapes)")
    convert.add_argument("--image_size", type=int, help="resample the position embeddings to this resolution")
    convert.add_argument("--num_labels", type=int, help="classes of a new head (default: keep the source's trained "
                         "head and labels; a new 2-class head if it has none or Google's all-zero one)")  # fmt: skip
    convert.add_argument("--representation_size", type=int, help="keep the 21k pre_logits layer of this width")
    convert.add_argument("--num_heads", type=int, help="attention heads, for sources that do not record them (timm)")
    convert.add_argument("--head_init", choices=("zeros", "normal"), default="zeros", help="new head: Google's zeros "
                         "or transformers' truncated normal")  # fmt: skip
    convert.add_argument("--resample_mode", choices=("bilinear", "bicubic"), help="default: bilinear for npz, "
                         "bicubic otherwise")  # fmt: skip
    convert.add_argument("--weights", choices=("orig", "augreg"), help="for a named variant: which 21k file")
    convert.add_argument("--quiet", action="store_true", help="no progress output")
    convert.set_defaults(func=_convert)

    from .weights.conversion import EXPORT_TARGETS

    export = commands.add_parser(
        "export",
        help="export a ViTAccel directory to transformers (model_type vit), timm, ONNX or a torch.export program",
        description="transformers: a ViT directory written by transformers itself; timm: model.safetensors under "
        "timm's names + config.json; onnx: model.onnx by torch's ONNX exporter (needs pip install "
        "'vit_accel[onnx]'); exported-program: model.pt2 from torch.export. The graph formats take any batch size.",
    )
    export.add_argument("source", help="a ViTAccel directory (save_pretrained or vit-accel convert output)")
    export.add_argument("output", help="directory to write (not the source, not an existing file)")
    export.add_argument("--to", choices=EXPORT_TARGETS, default="transformers")
    export.set_defaults(func=_export)

    predict = commands.add_parser("predict", help="top-k labels of images")
    predict.add_argument("--model", required=True, help="a saved model directory or Hub id")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top_k", type=int, default=5, help="labels per image (at most the model's labels)")
    predict.add_argument("--batch_size", type=int, default=32)
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.set_defaults(func=_predict)

    evaluate = commands.add_parser(
        "evaluate",
        help="top-1/top-5, loss, per-class accuracy and a confusion matrix over a dataset",
        description="Runs under any accelerate config: accelerate launch --config_file <mode>.yaml -m vit_accel.cli "
        "evaluate ...",
    )
    evaluate.add_argument("--model", required=True, help="a saved model directory or Hub id")
    evaluate.add_argument("--dataset_name", help="Hub id or local dataset path (its validation/test split)")
    evaluate.add_argument("--dataset_config_name")
    evaluate.add_argument("--validation_dir", help="an ImageFolder directory to evaluate on")
    evaluate.add_argument("--image_column_name")
    evaluate.add_argument("--label_column_name")
    evaluate.add_argument("--max_eval_samples", type=int)
    evaluate.add_argument("--bad_images", choices=("error", "skip"), default="error")
    evaluate.add_argument("--dataloader_num_workers", type=int, default=2)
    evaluate.add_argument("--batch_size", type=int, default=64)
    evaluate.add_argument("--seed", type=int, default=42, help="the seed the training run used (its split)")
    evaluate.add_argument("--output_dir", default="outputs/eval", help="where eval_results.json and the PNG go")
    evaluate.set_defaults(func=_evaluate)
    return parser


def _predict(args: argparse.Namespace) -> int:
    """Top-k labels of each image, as text or JSON."""
    import json

    from .inference import predict

    results = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            top = ", ".join(f"{p['label']} {p['score']:.4f}" for p in item["predictions"])
            print(f"{item['image']}: {top}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """`eval_results.json` and `confusion_matrix.png` for a model over a dataset's evaluation split."""
    import json

    from accelerate import Accelerator

    from .data import DataArguments
    from .inference import evaluate, write_evaluation

    if args.dataset_name is None and args.validation_dir is None:
        raise UserError("Give the data to evaluate on: --dataset_name or --validation_dir.")
    # An ImageFolder given alone is the evaluation set itself (as train_dir and validation_dir both).
    folder = args.validation_dir
    if folder is not None and not Path(folder).is_dir():
        raise UserError(f"--validation_dir {folder}: no such directory.")
    data_args = DataArguments(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_dir=folder,
        validation_dir=folder,
        image_column_name=args.image_column_name,
        label_column_name=args.label_column_name,
        max_eval_samples=args.max_eval_samples,
        augmentation="none",
        bad_images=args.bad_images,
        dataloader_num_workers=args.dataloader_num_workers,
    )
    accelerator = Accelerator()
    result = evaluate(args.model, data_args, batch_size=args.batch_size, seed=args.seed, accelerator=accelerator)
    if accelerator.is_main_process:
        summary = write_evaluation(result, args.output_dir)
        print(json.dumps({k: v for k, v in summary.items() if k != "per_class_accuracy"}))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, printing a mistake as one line naming the flag (without the whole usage) before exiting with 2."""

    def error(self, message: str):
        sys.exit(report(self.prog, UserError(message)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        return report(f"vit-accel {args.command}", error)


if __name__ == "__main__":
    sys.exit(main())
