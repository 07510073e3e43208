"""transformers' own common model tests, made runnable here against ViTAccel and transformers' ViT (the control).

The three test files (`tests/test_modeling_common.py`, `tests/test_configuration_common.py`,
`tests/test_pipeline_mixin.py`) come from the source distribution of the installed transformers version, fetched with
pip once and cached under `$VIT_ACCEL_TEST_CACHE` (default `~/.cache/vit_accel`), keyed by version; nothing of them
is copied into this repository. The source distribution lacks some modules those files import, so this module puts
stand-ins of its own in their place before importing them (each says why below), writes a local tiny-model folder for
the pipeline tests (transformers' documented `TRANSFORMERS_TINY_MODEL_PATH` mechanism) and provides the model tester.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from pathlib import Path

import pytest
import torch
import transformers
from transformers import PreTrainedConfig

VERSION = transformers.__version__
NEEDED = ("test_modeling_common.py", "test_configuration_common.py", "test_pipeline_mixin.py")
# The package name the sdist's tests are imported under (their relative imports resolve inside it).
PACKAGE = "transformers_sdist_tests"
# Errors pip reports when the package index cannot be reached (DNS, refused or timed-out connections, proxies).
_NETWORK_ERRORS = (
    "NewConnectionError",
    "ConnectTimeout",
    "ConnectionError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ProxyError",
    "No route to host",
)


def cache_dir() -> Path:
    root = os.environ.get("VIT_ACCEL_TEST_CACHE") or Path.home() / ".cache" / "vit_accel"
    return Path(root) / f"transformers-{VERSION}-tests"


def fetch_common_tests() -> Path:
    """The folder holding the three test files of the installed transformers version; pytest-skips the caller only
    when they are not cached and the package index cannot be reached."""
    target = cache_dir()
    if all((target / name).is_file() for name in NEEDED):
        return target
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--retries", "1",
            "--timeout", "20", "--disable-pip-version-check", "--dest", download, f"transformers=={VERSION}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        if result.returncode != 0:
            if any(marker in output for marker in _NETWORK_ERRORS):
                pytest.skip(
                    f"transformers {VERSION}'s common tests are not cached in {target} and the package index could "
                    f"not be reached to fetch its source distribution ({output.strip().splitlines()[-1]})."
                )
            raise RuntimeError(f"pip could not download transformers=={VERSION}'s source distribution:\n{output}")
        (archive,) = Path(download).glob(f"transformers-{VERSION}.tar.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        with tarfile.open(archive) as tar:
            for name in NEEDED:
                member = tar.getmember(f"transformers-{VERSION}/tests/{name}")
                source = tar.extractfile(member)
                assert source is not None, member.name
                (staging / name).write_bytes(source.read())
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)  # whole or nothing: an interrupted fetch leaves no partial cache
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not all((target / name).is_file() for name in NEEDED):  # else another test process cached it meanwhile
            raise
    return target


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins for the modules the source distribution's test files import but does not ship.


def common_config_kwargs() -> dict:
    """A value other than the default for each attribute every `PreTrainedConfig` has, derived from the class.

    Stands in for `tests/utils/test_configuration_utils.config_common_kwargs` (not in the source distribution), which
    `ConfigTester.check_config_arguments_init` passes to a config class and reads back. The attributes are the
    dataclass fields of `PreTrainedConfig` and its settable properties that store their own value
    (`output_attentions`); `transformers_version` is left out, as `save_pretrained` writes it.
    """
    default = PreTrainedConfig()
    kwargs: dict = {}
    for field in dataclasses.fields(PreTrainedConfig):
        if field.name == "transformers_version":
            continue
        kwargs[field.name] = _other_value(field.name, str(field.type), getattr(default, field.name))
    for name, member in vars(PreTrainedConfig).items():
        if isinstance(member, property) and member.fset is not None and f"_{name}" in vars(default):
            value = getattr(default, name)
            kwargs[name] = _other_value(name, type(value).__name__, value)
    return kwargs


def _other_value(name: str, annotation: str, default):
    if annotation.startswith("Literal["):
        choices = [choice.strip(" '\"") for choice in annotation[len("Literal[") :].split("]")[0].split(",")]
        return next(choice for choice in choices if choice != default)
    if "torch.dtype" in annotation:
        return "float16"  # ConfigTester reads it back as torch.float16
    if annotation.startswith("bool"):
        return not default
    if annotation.startswith("str"):
        return f"{name}_value"
    if annotation.startswith("int"):
        return default + 5
    if annotation.startswith("list[str]"):
        return [f"{name}_value"]
    if annotation.startswith("dict[int, str]"):
        return {0: f"{name}_value"}
    if annotation.startswith("dict[str, int]"):
        return {f"{name}_value": 0}
    raise TypeError(f"No non-default value known for PreTrainedConfig.{name}: {annotation}")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **members) -> types.ModuleType:
        made = types.ModuleType(name)
        made.__dict__.update(members)
        return made

    class ExportTesterMixin:
        """Empty stand-in for `tests/exporters/test_export.ExportTesterMixin`, which the source distribution does not
        ship and `ModelTesterMixin` inherits. Export by `torch.export` is tested by this project's own
        `test_torch_export_dynamic_batch` (tests/test_modeling_vit_accel_common.py), on ours and on the control."""

    class GenerationTesterMixin:
        """Empty stand-in for `tests/generation/test_utils.GenerationTesterMixin` (not shipped either). A ViT cannot
        generate, and `test_generation_tester_mixin_inheritance` checks that no ViT test class inherits it."""

    return {
        f"{PACKAGE}.exporters": module(f"{PACKAGE}.exporters"),
        f"{PACKAGE}.exporters.test_export": module(
            f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin
        ),
        f"{PACKAGE}.generation": module(f"{PACKAGE}.generation"),
        f"{PACKAGE}.generation.test_utils": module(
            f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin
        ),
        f"{PACKAGE}.utils": module(f"{PACKAGE}.utils"),
        f"{PACKAGE}.utils.test_configuration_utils": module(
            f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs=common_config_kwargs()
        ),
        # `PipelineTesterMixin` resolves these dotted paths when a pipeline test runs.
        "tests.pipelines.test_pipelines_image_classification": module(
            "tests.pipelines.test_pipelines_image_classification",
            ImageClassificationPipelineTests=ImageClassificationPipelineTests,
        ),
        "tests.pipelines.test_pipelines_image_feature_extraction": module(
            "tests.pipelines.test_pipelines_image_feature_extraction",
            ImageFeatureExtractionPipelineTests=ImageFeatureExtractionPipelineTests,
        ),
    }


def sample_images() -> list:
    """Small seeded images of several sizes and modes (RGB, greyscale, RGBA), as a pipeline meets them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L"),
        Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), mode="RGBA"),
    ]


def _tolerance(model) -> float:
    return 1e-5 if next(model.parameters()).dtype == torch.float32 else 2e-3


class ImageClassificationPipelineTests(unittest.TestCase):
    """Our own stand-in for `tests/pipelines/test_pipelines_image_classification.ImageClassificationPipelineTests`
    (not in the source distribution): `get_test_pipeline` and `run_pipeline_test` on images made here."""

    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        from transformers import ImageClassificationPipeline

        classifier = ImageClassificationPipeline(
            model=model, tokenizer=tokenizer, image_processor=image_processor, top_k=2, dtype=dtype
        )
        return classifier, sample_images()

    def run_pipeline_test(self, classifier, examples):
        model, processor = classifier.model, classifier.image_processor
        labels = set(model.config.id2label.values())
        for image in examples:
            outputs = classifier(image)
            self.assertEqual(len(outputs), 2)
            for output in outputs:
                self.assertEqual(set(output), {"score", "label"})
                self.assertIsInstance(output["score"], float)
                self.assertIn(output["label"], labels)
            self.assertGreaterEqual(outputs[0]["score"], outputs[1]["score"])
            # The pipeline's scores are the softmax of the model's own logits.
            pixels = processor(image.convert("RGB"), return_tensors="pt").pixel_values.to(model.device, model.dtype)
            with torch.no_grad():
                probabilities = model(pixels).logits.float().softmax(-1)[0]
            expected = probabilities.topk(2)
            for output, score, index in zip(outputs, expected.values.tolist(), expected.indices.tolist()):
                self.assertAlmostEqual(output["score"], score, delta=_tolerance(model) * 10)
                self.assertEqual(output["label"], model.config.id2label[index])
        batched = classifier(examples, top_k=len(labels) + 3)
        self.assertEqual(len(batched), len(examples))
        self.assertTrue(all(len(outputs) == len(labels) for outputs in batched))


class ImageFeatureExtractionPipelineTests(unittest.TestCase):
    """Our own stand-in for `tests/pipelines/test_pipelines_image_feature_extraction`'s test class (not in the
    source distribution): token features, the pooled output with `pool=True`, tensors and batches."""

    def get_test_pipeline(
        self, model, tokenizer=None, image_processor=None, feature_extractor=None, processor=None, dtype="float32"
    ):
        from transformers import ImageFeatureExtractionPipeline

        extractor = ImageFeatureExtractionPipeline(
            model=model, tokenizer=tokenizer, image_processor=image_processor, dtype=dtype
        )
        return extractor, sample_images()

    def run_pipeline_test(self, extractor, examples):
        model, processor = extractor.model, extractor.image_processor
        tolerance = _tolerance(model)
        for image in examples:
            pixels = processor(image.convert("RGB"), return_tensors="pt").pixel_values.to(model.device, model.dtype)
            with torch.no_grad():
                expected = model(pixels)
            features = torch.tensor(extractor(image))
            self.assertEqual(tuple(features.shape), tuple(expected.last_hidden_state.shape))
            torch.testing.assert_close(features, expected.last_hidden_state.float().cpu(), atol=tolerance, rtol=0)
            # pool=True returns the model's pooled output (its pooler on the CLS token).
            self.assertIsNotNone(expected.pooler_output)
            pooled = torch.tensor(extractor(image, pool=True))
            self.assertEqual(tuple(pooled.shape), tuple(expected.pooler_output.shape))
            torch.testing.assert_close(pooled, expected.pooler_output.float().cpu(), atol=tolerance, rtol=0)
            tensors = extractor(image, return_tensors=True)
            self.assertIsInstance(tensors, torch.Tensor)
            self.assertEqual(tuple(tensors.shape), tuple(expected.last_hidden_state.shape))
        batched = extractor(examples, pool=True)
        self.assertEqual(len(batched), len(examples))


# ---------------------------------------------------------------------------------------------------------------------
# The model tester (ours) and the tiny models the pipeline tests load.


class ViTFamilyModelTester:
    """Tiny ViT configurations and inputs for the common tests, for ViTAccel's and for transformers' ViT config.

    16-px images in 4-px patches (17 tokens), width 32, 2 blocks of 4 heads: the common tests stay fast on a CPU.
    """

    def __init__(
        self,
        parent,
        config_class: type,
        batch_size: int = 5,
        image_size: int = 16,
        patch_size: int = 4,
        num_channels: int = 3,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 37,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        type_sequence_label_size: int = 10,
        initializer_range: float = 0.02,
        mask_ratio: float = 0.5,
        is_training: bool = True,
        use_labels: bool = True,
    ):
        self.parent = parent
        self.config_class = config_class
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_sequence_label_size = type_sequence_label_size
        self.initializer_range = initializer_range
        self.is_training = is_training
        self.use_labels = use_labels
        num_patches = (image_size // patch_size) ** 2
        self.seq_length = num_patches + 1  # the CLS token
        # Read by the sdpa/eager comparison for models whose forward takes `bool_masked_pos` (transformers' ViTModel).
        self.num_masks = int(mask_ratio * self.seq_length)
        self.mask_length = num_patches

    def get_config(self):
        fields = dict(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            initializer_range=self.initializer_range,
        )
        if self.config_class.model_type == "vit":
            fields["encoder_stride"] = self.patch_size  # transformers' ViT config only (masked image modelling)
        return self.config_class(**fields)

    def prepare_config_and_inputs(self):
        common = load()
        pixel_values = common.floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = common.ids_tensor([self.batch_size], self.type_sequence_label_size) if self.use_labels else None
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_model(self, model_class, config, pixel_values):
        model = model_class(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def create_and_check_for_image_classification(self, model_class, config, pixel_values, labels):
        config.num_labels = self.type_sequence_label_size
        model = model_class(config).eval()
        with torch.no_grad():
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))
        self.parent.assertEqual(result.loss.shape, ())
        # Other resolutions through interpolated position embeddings, and greyscale images (1 channel).
        with torch.no_grad():
            bigger = model(
                torch.randn(2, self.num_channels, 2 * self.image_size, self.image_size), interpolate_pos_encoding=True
            )
        self.parent.assertEqual(bigger.logits.shape, (2, self.type_sequence_label_size))
        config.num_channels = 1
        model = model_class(config).eval()
        with torch.no_grad():
            result = model(torch.randn(self.batch_size, 1, self.image_size, self.image_size))
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.type_sequence_label_size))


def architectures() -> dict[str, list[type]]:
    """Model type -> the model classes under test: ours, and transformers' ViT as the control."""
    from transformers import ViTForImageClassification, ViTModel

    from vit_accel import ViTAccelForImageClassification, ViTAccelModel

    return {
        "vit_accel": [ViTAccelModel, ViTAccelForImageClassification],
        "vit": [ViTModel, ViTForImageClassification],
    }


def write_tiny_models(root: Path) -> None:
    """The folder `TRANSFORMERS_TINY_MODEL_PATH` points to: `<root>/<model_type>/<Architecture>/` holding a tiny
    random model and its image processor, and `<root>/reports/tiny_model_summary.json` listing them."""
    from transformers import ViTImageProcessor

    summary = {}
    for classes in architectures().values():
        for model_class in classes:
            tester = ViTFamilyModelTester(None, model_class.config_class)
            config = tester.get_config()
            config.id2label = {i: f"class_{i}" for i in range(3)}
            config.label2id = {name: i for i, name in config.id2label.items()}
            torch.manual_seed(0)
            directory = root / config.model_type / model_class.__name__
            model_class(config).save_pretrained(directory)
            ViTImageProcessor(size={"height": tester.image_size, "width": tester.image_size}).save_pretrained(directory)
            summary[model_class.__name__] = {
                "tokenizer_classes": [],
                "processor_classes": ["ViTImageProcessor"],
                "model_classes": [model_class.__name__],
            }
    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "tiny_model_summary.json").write_text(json.dumps(summary, indent=2))


@contextlib.contextmanager
def listed_in_transformers_tables():
    """List our classes in transformers' model-name tables for the duration, as its own models are listed there.

    `ModelTesterMixin` reads a class's role from these tables (`MODEL_MAPPING_NAMES`: a base model, whose output has no
    loss; `MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES`: a classifier, which gets labels). `AutoModel.register`, how
    vit_accel registers itself, fills the Auto classes' mappings but not these tables.
    """
    from transformers.models.auto import modeling_auto

    tables = [
        (modeling_auto.MODEL_MAPPING_NAMES, "ViTAccelModel"),
        (modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "ViTAccelForImageClassification"),
    ]
    for table, name in tables:
        table["vit_accel"] = name
    try:
        yield
    finally:
        for table, _ in tables:
            table.pop("vit_accel", None)


@functools.cache
def load() -> types.SimpleNamespace:
    """Import the three common test files (fetching them once) and return what the tests use from them."""
    import atexit

    import transformers.utils

    folder = fetch_common_tests()
    tiny_models = Path(tempfile.mkdtemp(prefix="vit-accel-tiny-models-"))
    atexit.register(shutil.rmtree, tiny_models, True)
    write_tiny_models(tiny_models)

    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    sys.modules.update(_stand_in_modules())
    # The files load "the transformers of this source tree" by path (`direct_transformers_import`); the installed
    # package is that very version, so they get it. The tiny-model summary is read when test_pipeline_mixin imports.
    saved = os.environ.get("TRANSFORMERS_TINY_MODEL_PATH")
    os.environ["TRANSFORMERS_TINY_MODEL_PATH"] = str(tiny_models)
    original_import = transformers.utils.direct_transformers_import
    transformers.utils.direct_transformers_import = lambda path, file="__init__.py": transformers
    try:
        modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
        pipelines = importlib.import_module(f"{PACKAGE}.test_pipeline_mixin")
    finally:
        transformers.utils.direct_transformers_import = original_import
        if saved is None:
            os.environ.pop("TRANSFORMERS_TINY_MODEL_PATH", None)
        else:
            os.environ["TRANSFORMERS_TINY_MODEL_PATH"] = saved
    return types.SimpleNamespace(
        folder=folder,
        tiny_models=tiny_models,
        ModelTesterMixin=modeling.ModelTesterMixin,
        ConfigTester=configuration.ConfigTester,
        PipelineTesterMixin=pipelines.PipelineTesterMixin,
        floats_tensor=modeling.floats_tensor,
        ids_tensor=modeling.ids_tensor,
    )
