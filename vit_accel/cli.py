"""The `vit-accel` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import UserError, report
from .formats import EXPORT_TARGETS


def _positive_int(text: str) -> int:
    """argparse type of counts and sizes: a mistake is reported by argparse as one line naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _variants(args: argparse.Namespace) -> int:
    """Print the table of named variants with their parameter counts (built on the meta device: no memory used)."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.
    import torch

    from .configuration_vit_accel import FAMILY_VARIANTS, VIT_VARIANTS, ViTAccelConfig
    from .modeling_vit_accel import ViTAccelForImageClassification

    header = (
        f"{'variant':<26} {'width':>5} {'depth':>5} {'heads':>5} {'mlp':>5} {'patch':>5} {'image':>5} {'params':>9}"
    )
    print(f"{header}  source")
    for name in VIT_VARIANTS:
        config = ViTAccelConfig.from_variant(name, num_labels=args.num_labels)
        with torch.device("meta"):
            params = sum(p.numel() for p in ViTAccelForImageClassification(config).parameters())
        source = f"hf.co/{FAMILY_VARIANTS[name][0]}" if name in FAMILY_VARIANTS else "Google's ImageNet-21k npz"
        print(
            f"{name:<26} {config.hidden_size:>5} {config.num_hidden_layers:>5} {config.num_attention_heads:>5} "
            f"{config.intermediate_size:>5} {config.patch_size:>5} {config.image_size:>5} {params / 1e6:>8.1f}M  "
            f"{source}"
        )
    return 0


class _Progress:
    """Prints `<stage>: i/n tensors, MB` to stderr at most once a second, and always for the last tensor."""

    def __init__(self, stage: str, quiet: bool = False):
        self.stage, self.quiet, self.bytes, self.last = stage, quiet, 0, 0.0

    def __call__(self, index: int, total: int, key: str, nbytes: int) -> None:

        self.bytes += nbytes
        now = time.monotonic()
        if self.quiet or (index < total and now - self.last < 1.0):
            return
        self.last = now
        print(f"{self.stage}: {index}/{total} tensors, {self.bytes / 1e6:.0f} MB", file=sys.stderr, flush=True)


def _convert(args: argparse.Namespace) -> int:
    """Any supported checkpoint -> a ViTAccel directory (config.json + model.safetensors)."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.

    from .weights import convert

    if args.num_labels == 1:
        # One class scores 1.0 for every image, and transformers reads num_labels=1 as a regression head.
        raise UserError("--num_labels 1: a classifier needs at least two classes.")
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
    if not (out / "preprocessor_config.json").is_file():
        print(
            f"note: {args.source} does not record how its images were normalised, so {out} has no "
            "preprocessor_config.json; predict and evaluate need one: write it with the mean/std the weights were "
            "trained with (transformers' ViTImageProcessor(...).save_pretrained).",
            file=sys.stderr,
        )
    size = (out / "model.safetensors").stat().st_size
    print(
        f"wrote {out} ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s: width {config.hidden_size}, "
        f"depth {config.num_hidden_layers}, heads {config.num_attention_heads}, patch {config.patch_size}, "
        f"image {config.image_size}, {config.num_labels} labels"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    """A ViTAccel directory -> transformers, timm, ONNX or a torch.export ExportedProgram."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.
    from .weights import export

    out = export(args.source, args.output, to=args.to, backbone_only=args.backbone_only)
    print(f"wrote {args.to} export to {out}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `vit-accel` parser; `command`: the one being run, whose flags alone need declaring in full."""
    parser = _Parser(prog="vit-accel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    variants = commands.add_parser("variants", help="list the named ViT variants and their sizes")
    variants.add_argument("--num_labels", type=_positive_int, default=1000, help="classifier width used for the counts")
    variants.set_defaults(func=_variants)

    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint (named variant, Google .npz, timm, transformers) to a ViTAccel directory",
        description="Read a named variant (downloaded once into the HF cache), a Google .npz, a timm state dict or a "
        "transformers ViT directory/Hub id, detected from the content, and write config.json + model.safetensors "
        "(+ preprocessor_config.json where the source says how its images were normalised) into a new or empty "
        "directory.",
    )
    convert.add_argument("source", help="named variant (e.g. vit-base-p16-384), file, directory or Hub id")
    convert.add_argument("output", help="directory to write (new or empty)")
    convert.add_argument("--variant", help="named variant the source must fit (default: the source's own shapes)")
    convert.add_argument("--image_size", type=_positive_int, help="resample the position embeddings to this size")
    convert.add_argument("--num_labels", type=_positive_int, help="classes of a new head (default: keep the source's "
                         "trained head and labels; a new 2-class head if it has none or Google's all-zero "
                         "one)")  # fmt: skip
    convert.add_argument("--representation_size", type=_positive_int, help="keep the 21k pre_logits layer of this "
                         "width")  # fmt: skip
    convert.add_argument("--num_heads", type=_positive_int, help="attention heads, for sources that do not record "
                         "them (timm)")  # fmt: skip
    convert.add_argument("--head_init", choices=("zeros", "normal"), default="zeros", help="new head: Google's zeros "
                         "or transformers' truncated normal")  # fmt: skip
    convert.add_argument("--resample_mode", choices=("bilinear", "bicubic"), help="default: bilinear for npz, "
                         "bicubic otherwise")  # fmt: skip
    convert.add_argument("--weights", choices=("orig", "augreg"), help="for a named variant: which 21k file")
    convert.add_argument("--quiet", action="store_true", help="no progress output")
    convert.set_defaults(func=_convert)

    export = commands.add_parser(
        "export",
        help="export a ViTAccel directory to transformers (its family's class), timm, ONNX or a torch.export program",
        description="transformers: the family's own class (ViT, DINOv2, DINOv3, CLIP, SigLIP) written by "
        "transformers; timm: model.safetensors under "
        "timm's names + config.json; onnx: model.onnx by torch's ONNX exporter (needs pip install "
        "'vit_accel[onnx]'); exported-program: model.pt2 from torch.export. The graph formats take any batch size.",
    )
    export.add_argument("source", help="a ViTAccel directory (save_pretrained or vit-accel convert output)")
    export.add_argument("output", help="directory to write (new or empty)")
    export.add_argument("--to", choices=EXPORT_TARGETS, default="transformers")
    export.add_argument("--backbone-only", dest="backbone_only", action="store_true",
                        help="--to transformers: write the family's bare model class (Dinov2Model, SiglipVisionModel, "
                        "...) without the classifier")  # fmt: skip
    export.set_defaults(func=_export)

    predict = commands.add_parser("predict", help="top-k labels of images")
    predict.add_argument("--model", required=True, help="a saved model directory or Hub id")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top_k", type=int, default=5, help="labels per image (at most the model's labels)")
    predict.add_argument("--batch_size", type=int, default=32)
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument("--allow_changed_base", action="store_true", help=_ALLOW_CHANGED_BASE)
    predict.set_defaults(func=_predict)

    features = commands.add_parser(
        "features",
        help="the encoder's features of images (the pooled output its classifier reads), as safetensors",
        description="Writes <output_dir>/features.safetensors (tensor 'features', one row per image, float32) and "
        "<output_dir>/images.json (the image files in row order). The images are prepared as predict prepares "
        "them; an MAE pre-training checkpoint gives its encoder's CLS token with no patch masked. The same images "
        "give the same features on every call.",
    )
    features.add_argument("--model", required=True, help="a model directory (ours, an adapter, transformers', "
                          "timm's, an MAE run), a checkpoint file, a named variant or a Hub id")  # fmt: skip
    features.add_argument("images", nargs="+", help="image files and folders of them (every image below, sorted)")
    features.add_argument("--output_dir", required=True, help="where features.safetensors and images.json go")
    features.add_argument("--batch_size", type=_positive_int, default=64)
    features.add_argument("--overwrite", action="store_true", help="replace the features already in --output_dir")
    features.set_defaults(func=_features)

    evaluate = commands.add_parser(
        "evaluate",
        help="top-1/top-5/top-k, loss, per-class precision/recall/F1, a confusion matrix and the worst "
        "misclassified images over a dataset (report.html)",
        description="Runs under any accelerate config: accelerate launch --config_file <mode>.yaml -m vit_accel.cli "
        "evaluate ...",
    )
    evaluate.add_argument("--model", required=True, help="a saved model directory or Hub id")
    if command == "evaluate":
        _add_evaluate_data_flags(evaluate)
    evaluate.add_argument("--per_device_eval_batch_size", "--batch_size", type=_positive_int, default=64)
    evaluate.add_argument(
        "--seed",
        type=int,
        help="the seed the training run used (its hold-out, and --max_eval_samples' sample); default: the model's "
        "training_args.json, else 42",
    )
    evaluate.add_argument("--top_k", type=_positive_int, default=5, help="also report top-k accuracy for this k")
    evaluate.add_argument(
        "--output_dir",
        default="outputs/eval",
        help="where eval_results.json, confusion_matrix.png, worst_misclassified.png and report.html go",
    )
    evaluate.add_argument("--allow_changed_base", action="store_true", help=_ALLOW_CHANGED_BASE)
    evaluate.set_defaults(func=_evaluate)
    return parser


def _add_evaluate_data_flags(evaluate: argparse.ArgumentParser) -> None:
    """The data flags of `evaluate`: train.py's own (DataArguments), with the same checks and messages."""
    # Deferred: the data package imports datasets and pyarrow (seconds), which only `evaluate` needs.
    from .data import EVALUATION_FIELDS, add_data_arguments

    add_data_arguments(
        evaluate,
        EVALUATION_FIELDS,
        {
            "dataset_name": {"help": "Hub id or local dataset path (its validation/test split)"},
            "validation_dir": {"help": "an ImageFolder directory to evaluate on"},
            "train_val_split": {
                "default": None,
                "help": "for a dataset without a validation/test split: the fraction the training run held out "
                "(default: the model's training_args.json)",
            },
        },
    )


_ALLOW_CHANGED_BASE = (
    "for an adapter: use its base even though the base's weights changed since the adapter was trained (refused "
    "otherwise)"
)


def _predict(args: argparse.Namespace) -> int:
    """Top-k labels of each image, as text or JSON."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.

    from .inference import predict

    results = predict(
        args.model, args.images, top_k=args.top_k, batch_size=args.batch_size,
        allow_changed_base=args.allow_changed_base,
    )  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            top = ", ".join(f"{p['label']} {p['score']:.4f}" for p in item["predictions"])
            print(f"{item['image']}: {top}")
    return 0


def _features(args: argparse.Namespace) -> int:
    """Features of images, written as safetensors with the list of images."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.
    from .features import check_output_dir, extract_features, write_features

    output_dir = check_output_dir(args.output_dir, args.overwrite)
    features, files = extract_features(args.model, args.images, batch_size=args.batch_size)
    target = write_features(features, files, output_dir, args.model)
    print(f"wrote {target}: {features.shape[0]} images x {features.shape[1]} features")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """`eval_results.json` and `confusion_matrix.png` for a model over a dataset's evaluation split."""
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.

    from accelerate import Accelerator

    from .data import EVALUATION_FIELDS, DataArguments, check_seed
    from .inference import evaluate, evaluation_split, prepare_output_dir, recorded_split_settings, write_evaluation
    from .training.distributed import leave_process_group
    from .training.preflight import check_metric_cache

    if args.dataset_name is None and args.validation_dir is None:
        raise UserError("Give the data to evaluate on: --dataset_name or --validation_dir.")
    if args.seed is not None:
        check_seed(args.seed)
    # An ImageFolder given alone is the evaluation set itself (as train_dir and validation_dir both).
    folder = args.validation_dir
    if folder is not None and not Path(folder).is_dir():
        raise UserError(f"--validation_dir {folder}: no such directory.")
    output_dir = prepare_output_dir(args.output_dir)
    check_metric_cache()
    # A dataset without an evaluation split is evaluated on a hold-out of its training split: only the training run's
    # own fraction and seed give back its held-out images (others mix training images in).
    recorded, record_file = recorded_split_settings(args.model)
    given = {"seed": args.seed, "train_val_split": args.train_val_split}
    settings = {key: given[key] if given[key] is not None else recorded.get(key) for key in given}
    passed = {
        name: getattr(args, name) for name in EVALUATION_FIELDS if name not in ("validation_dir", "train_val_split")
    }
    data_args = DataArguments(
        **passed,
        train_dir=folder,
        validation_dir=folder,
        train_val_split=settings["train_val_split"] if settings["train_val_split"] is not None else 0.15,
        augmentation="none",
    )
    accelerator = Accelerator()
    with accelerator.main_process_first():
        split = evaluation_split(data_args)
    source = args.dataset_name or folder
    seed = settings["seed"] if settings["seed"] is not None else 42
    origin = {key: "given" if given[key] is not None else f"from {record_file}" for key in given}
    if split is None:
        unknown = " and ".join(f"--{key}" for key, value in settings.items() if value is None)
        if unknown:
            why = f"{args.model} has no training_args.json" if record_file is None else f"{record_file} lacks {unknown}"
            raise UserError(
                f"--dataset_name {source} has no validation or test split, so evaluate holds out part of its training "
                f"split, but {why}: pass {unknown} as the training run used them (another draw would mix training "
                "images into the hold-out)."
            )
        fraction = settings["train_val_split"]
        line = (
            f"evaluating the hold-out of the training split of {source}: --train_val_split {fraction} "
            f"({origin['train_val_split']}), --seed {seed} ({origin['seed']})"
        )
    else:
        line = f"evaluating split {split!r} of {source}"
        if args.max_eval_samples is not None:
            seed_origin = origin["seed"] if settings["seed"] is not None else "default"
            line += f", at most {args.max_eval_samples} examples drawn with --seed {seed} ({seed_origin})"
    if accelerator.is_main_process:
        print(f"vit-accel evaluate: {line}", file=sys.stderr)
    result = evaluate(
        args.model, data_args, batch_size=args.per_device_eval_batch_size, seed=seed, accelerator=accelerator,
        allow_changed_base=args.allow_changed_base, top_k=args.top_k,
    )  # fmt: skip
    if accelerator.is_main_process:
        summary = write_evaluation(result, output_dir)
        per_example = ("per_class_accuracy", "per_class", "largest_confusions", "worst_misclassified")
        print(json.dumps({k: v for k, v in summary.items() if k not in per_example}))
    leave_process_group()
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, printing a mistake as one line naming the flag (without the whole usage) before exiting with 2."""

    def error(self, message: str):
        sys.exit(report(self.prog, UserError(message)))


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((word for word in given if not word.startswith("-")), None))
    args, remaining = parser.parse_known_args(argv)
    if remaining:
        # A typo names the closest flag of its command; values are never echoed (one may be a token).
        from .training.habits import unknown_arguments_message

        command = parser._subparsers._group_actions[0].choices[args.command]
        program = f"vit-accel {args.command}"
        if any(item.startswith("-") for item in remaining):
            message = unknown_arguments_message(remaining, command._option_string_actions, program, habits=False)
        else:
            message = f"unexpected values: {' '.join(remaining)} (see `{program} --help`)."
        sys.exit(report(program, UserError(message)))
    # Deferred, as in every command here: `vit-accel` starts fast, each command importing only what it uses.
    from .training.distributed import name_deepspeed_accelerator

    name_deepspeed_accelerator()  # every command but --help loads torch and, through accelerate, DeepSpeed
    try:
        return args.func(args)
    except UserError as error:
        return report(f"vit-accel {args.command}", error)


if __name__ == "__main__":
    sys.exit(main())
