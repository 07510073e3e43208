"""transformers' own common model tests (ModelTesterMixin, ConfigTester, PipelineTesterMixin, from the installed
version's source distribution) on ViTAccel, with transformers' ViT run alongside through the same tester as the
control. A test failing for ours fails; a test skipped for ours but passed by the control fails too
(tests/common_tests_rule.py). Setup and stand-ins: tests/transformers_common_tests.py.
"""

import unittest

import pytest
import torch
import transformers_common_tests as harness
from torch import nn
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel

common = harness.load()  # skips this module only when nothing is cached and the package index is unreachable


@pytest.fixture(scope="module", autouse=True)
def _listed_in_transformers_tables():
    with harness.listed_in_transformers_tables():
        yield


class ViTFamilyCommonTests(common.ModelTesterMixin, common.PipelineTesterMixin):
    """The common tests with the settings transformers' own ViT test uses, for any ViT-shaped model."""

    config_class: type
    test_resize_embeddings = False  # no token embeddings to resize
    # transformers runs this check only on models added since 2023 (by their files' copyright year); run it on both.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = harness.ViTFamilyModelTester(self, self.config_class)
        self.config_tester = common.ConfigTester(
            self, config_class=self.config_class, has_text_modality=False, hidden_size=37
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        # The mixin's version expects token embeddings (nn.Embedding); a ViT's input embedding is its patch projection.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    def test_model(self):
        config, pixel_values, _ = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_model(self.all_model_classes[0], config, pixel_values)

    def test_for_image_classification(self):
        config, pixel_values, labels = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_for_image_classification(
            self.all_model_classes[1], config, pixel_values, labels
        )

    def test_torch_export_dynamic_batch(self):
        # Stands in for the ExportTesterMixin the source distribution does not ship: torch.export with a dynamic
        # batch, the exported program giving the eager outputs at another batch size.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            batch = torch.export.Dim("batch", min=1, max=64)
            exported = torch.export.export(
                model, args=(), kwargs=dict(inputs), dynamic_shapes={"pixel_values": {0: batch}}, strict=False
            )
            pixels = torch.randn(3, *inputs["pixel_values"].shape[1:])
            with torch.no_grad():
                expected = model(pixels)
            got = exported.module()(pixel_values=pixels)
            key = "logits" if "logits" in expected else "last_hidden_state"
            self.assertEqual(got[key].shape[0], 3)
            torch.testing.assert_close(got[key], expected[key])


class ViTControlCommonTest(ViTFamilyCommonTests, unittest.TestCase):
    """The control: transformers' own ViT through the same tester."""

    config_class = ViTConfig
    all_model_classes = (ViTModel, ViTForImageClassification)
    pipeline_model_mapping = {"image-feature-extraction": ViTModel, "image-classification": ViTForImageClassification}


class ViTAccelCommonTest(ViTFamilyCommonTests, unittest.TestCase):
    config_class = ViTAccelConfig
    all_model_classes = (ViTAccelModel, ViTAccelForImageClassification)
    pipeline_model_mapping = {
        "image-feature-extraction": ViTAccelModel,
        "image-classification": ViTAccelForImageClassification,
    }
    control = ViTControlCommonTest
