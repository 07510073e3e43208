import os
import subprocess
import sys
import textwrap

import pytest
import torch
from factories import tiny_config_kwargs
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from vit_accel import (
    ViTAccelConfig,
    ViTAccelForImageClassification,
    ViTAccelModel,
    ViTAccelPreTrainedModel,
    resample_position_embeddings,
)

ATOL = 1e-4


def hf_pair(**overrides):
    """A random transformers ViT and ours holding the very same weights (no renaming needed)."""
    kwargs = tiny_config_kwargs(**overrides)
    torch.manual_seed(0)
    reference = ViTForImageClassification(
        ViTConfig(**kwargs, layer_norm_eps=1e-6, hidden_act="gelu", attn_implementation="eager")
    ).eval()
    ours = ViTAccelForImageClassification(ViTAccelConfig(**kwargs)).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    return reference, ours


@pytest.mark.parametrize("patch_size, image_size", [(8, 32), (16, 64), (32, 64)])
@pytest.mark.parametrize("interpolate", [False, True])
def test_matches_transformers_vit(patch_size, image_size, interpolate):
    reference, ours = hf_pair(patch_size=patch_size, image_size=image_size)
    size = image_size * 3 // 2 if interpolate else image_size
    pixels = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = reference(pixels, interpolate_pos_encoding=interpolate, output_hidden_states=True)
        got = ours(pixels, interpolate_pos_encoding=interpolate, output_hidden_states=True)
    assert got.logits.shape == (3, 5)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_base_model_matches_transformers_last_hidden_state():
    reference, ours = hf_pair()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.vit(pixels).last_hidden_state
        got = ours.vit(pixels).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_output_attentions_returns_real_maps():
    reference, ours = hf_pair()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(pixels, output_attentions=True).attentions
        got = ours(pixels, output_attentions=True)
    assert len(got.attentions) == 2
    for mine, theirs in zip(got.attentions, expected):
        assert mine.shape == (2, 4, 17, 17)
        torch.testing.assert_close(mine.sum(-1), torch.ones(2, 4, 17))
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    # The explicit path and SDPA give the same logits.
    with torch.no_grad():
        torch.testing.assert_close(got.logits, ours(pixels).logits, atol=1e-5, rtol=0)


def test_pre_logits_is_dense_tanh_on_cls():
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(representation_size=24))).eval()
    assert model.classifier.in_features == 24
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.vit(pixels)
        cls = out.last_hidden_state[:, 0]
        torch.testing.assert_close(out.pooler_output, torch.tanh(model.vit.pooler.dense(cls)))
        torch.testing.assert_close(model(pixels).logits, model.classifier(out.pooler_output))


def test_tanh_gelu_option_changes_the_mlp():
    config = ViTAccelConfig(**tiny_config_kwargs(hidden_act="gelu_pytorch_tanh"))
    model = ViTAccelModel(config)
    x = torch.linspace(-3, 3, 96)
    torch.testing.assert_close(model.layers[0].mlp.activation_fn(x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert not torch.allclose(model.layers[0].mlp.activation_fn(x), torch.nn.functional.gelu(x))


def test_save_and_load_round_trip_bit_exact(tmp_path):
    torch.manual_seed(0)
    labels = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}
    model = ViTAccelForImageClassification(
        ViTAccelConfig(**tiny_config_kwargs(id2label=labels, label2id={v: k for k, v in labels.items()}))
    ).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "configuration_vit_accel.py", "modeling_vit_accel.py"} <= files
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels).logits
    for loader in (ViTAccelForImageClassification, AutoModelForImageClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is ViTAccelForImageClassification
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        with torch.no_grad():
            assert torch.equal(loaded(pixels).logits, expected)
        assert loaded.config.id2label == labels
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ViTAccelConfig)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is ViTAccelModel


def test_fresh_process_without_vit_accel_loads_with_remote_code(tmp_path):
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(model(pixels).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["vit_accel"] = None  # any import of vit_accel now fails
        import torch
        # The same thread count as this process, so that the CPU kernels reduce in the same order (bit-exact).
        torch.set_num_threads({torch.get_num_threads()})
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True).eval()
        assert "vit_accel" not in type(model).__module__.split(".")[0], type(model).__module__
        pixels = torch.load({str(tmp_path / "pixels.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            diff = (model(pixels).logits - expected).abs().max().item()
        print("MAXDIFF", diff, type(model).__module__)
        assert diff == 0.0, diff
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MAXDIFF 0.0 transformers_modules" in result.stdout


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).train()
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def grads():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.vit.layers)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_losses_follow_problem_type():
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    labels = torch.tensor([0, 4, 2, 1])
    out = model(pixels, labels=labels)
    assert model.config.problem_type == "single_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))

    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    multi_hot = torch.randint(0, 2, (4, 5)).float()
    out = model(pixels, labels=multi_hot)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, multi_hot))

    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_labels=1))).eval()
    target = torch.randn(4)
    out = model(pixels, labels=target)
    assert model.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))


def test_return_dict_false_gives_tuples():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        loss, logits = model(pixels, labels=torch.tensor([1]), return_dict=False)
        torch.testing.assert_close(logits, model(pixels).logits)


def test_dropout_and_drop_path_are_settable_and_off_in_eval():
    torch.manual_seed(0)
    config = ViTAccelConfig(**tiny_config_kwargs(hidden_dropout_prob=0.1, drop_path_rate=0.2))
    model = ViTAccelForImageClassification(config)
    assert model.vit.layers[0].drop_path.drop_prob == 0.0
    assert model.vit.layers[-1].drop_path.drop_prob == pytest.approx(0.2)
    pixels = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, model(pixels).logits)
        model.train()
        assert not torch.allclose(model(pixels).logits, model(pixels).logits)


def test_resample_position_embeddings_keeps_cls_and_matches_forward_interpolation():
    reference, ours = hf_pair()
    pos = ours.vit.embeddings.position_embeddings.detach()
    resampled = resample_position_embeddings(pos, (6, 6))
    assert resampled.shape == (1, 37, 48)
    assert torch.equal(resampled[:, 0], pos[:, 0])
    assert resample_position_embeddings(pos, (4, 4)) is pos
    with torch.no_grad():
        torch.testing.assert_close(ours.vit.embeddings.interpolate_pos_encoding(48, 48), resampled)
    # Loading the resampled table into a 48-px model is the same as interpolating at forward time.
    big = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(image_size=48))).eval()
    state = ours.state_dict()
    state["vit.embeddings.position_embeddings"] = resampled
    big.load_state_dict(state)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(big(pixels).logits, ours(pixels, interpolate_pos_encoding=True).logits)


def test_resample_position_embeddings_matches_timm_bilinear():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 7 * 7, 16)
    ours = resample_position_embeddings(pos, (12, 12), mode="bilinear", antialias=False)
    theirs = resample_abs_pos_embed(pos, [12, 12], num_prefix_tokens=1, interpolation="bilinear", antialias=False)
    torch.testing.assert_close(ours, theirs)
    half = resample_position_embeddings(pos.half(), (12, 12), mode="bilinear")
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="old_grid"):
        resample_position_embeddings(torch.randn(1, 1 + 10, 16), (4, 4))


def test_bad_inputs_give_clear_errors():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    with pytest.raises(ValueError, match=r"Input image size \(48x48\) doesn't match config.image_size \(32x32\)"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="pixel_values has 1 channels but the model expects config.num_channels=3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D tensor"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize(
    "variant, timm_name",
    [(f"vit-{s}-p{p}-{r}", f"vit_{s}_patch{p}_{r}") for s in ("base", "large") for p in (16, 32) for r in (224, 384)],
)
def test_parameter_counts_match_timm(variant, timm_name):
    import timm

    with torch.device("meta"):
        ours = ViTAccelForImageClassification(ViTAccelConfig.from_variant(variant, num_labels=1000))
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert count > 80_000_000


def vit_model_pair(**overrides):
    """A random transformers `ViTModel` (with its pooler) and our bare model holding the same weights."""
    pooler_fields = {k: overrides.pop(k) for k in ("pooler_output_size", "pooler_act") if k in overrides}
    kwargs = tiny_config_kwargs(**overrides)
    torch.manual_seed(0)
    reference = ViTModel(
        ViTConfig(**kwargs, **pooler_fields, layer_norm_eps=1e-6, hidden_act="gelu", attn_implementation="eager")
    ).eval()
    ours = ViTAccelModel(ViTAccelConfig(**kwargs, **pooler_fields)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("pooler_fields", [{}, {"pooler_output_size": 24, "pooler_act": "relu"}])
def test_bare_model_has_vit_models_pooler(pooler_fields):
    reference, ours = vit_model_pair(**pooler_fields)
    assert set(ours.state_dict()) == set(reference.state_dict())
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(ours.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(pixels), ours(pixels)
    assert got.pooler_output.shape == (2, pooler_fields.get("pooler_output_size", 48))
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)


def test_add_pooling_layer_false_and_the_classifier_keep_todays_names():
    config = ViTAccelConfig(**tiny_config_kwargs())
    bare = ViTAccelModel(config, add_pooling_layer=False)
    assert bare.pooler is None and not any(key.startswith("pooler.") for key in bare.state_dict())
    with torch.no_grad():
        assert bare(torch.randn(1, 3, 32, 32)).pooler_output is None
    # The classifier reads the CLS token: no pooler unless representation_size (Google's pre_logits) asks for one.
    classifier = ViTAccelForImageClassification(config)
    assert classifier.vit.pooler is None and classifier.classifier.in_features == 48
    with_pre_logits = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(representation_size=24)))
    assert {"vit.pooler.dense.weight", "vit.pooler.dense.bias"} <= set(with_pre_logits.state_dict())
    assert with_pre_logits.classifier.in_features == 24
    # representation_size also sets the bare model's pooler width.
    assert ViTAccelModel(with_pre_logits.config).pooler.dense.out_features == 24


def test_fresh_pooler_is_initialised_by_init_weights(tmp_path):
    torch.manual_seed(0)
    config = ViTAccelConfig(**tiny_config_kwargs(hidden_size=128, initializer_range=0.01))
    dense = ViTAccelModel(config).pooler.dense
    # torch's own Linear init would give std ~0.05 and a non-zero bias.
    assert dense.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(dense.bias) == 0
    # Loading a classifier checkpoint (no pooler) into the bare model: the missing pooler goes through _init_weights.
    ViTAccelForImageClassification(config).save_pretrained(tmp_path)
    loaded = ViTAccelModel.from_pretrained(tmp_path)
    assert loaded.pooler.dense.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(loaded.pooler.dense.bias) == 0


def test_output_hidden_states_selects_layers():
    reference, ours = hf_pair(num_hidden_layers=3)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = ours(pixels, output_hidden_states=True).hidden_states
        selected = ours(pixels, output_hidden_states=[0, 2]).hidden_states
        penultimate = ours.vit(pixels, output_hidden_states=[-2]).hidden_states
        theirs = reference(pixels, output_hidden_states=[0, 2]).hidden_states
    assert len(every) == 4
    # As transformers: the unselected states are left out (None), the selected ones are the full run's.
    assert [state is None for state in selected] == [False, True, False, True]
    assert [state is None for state in selected] == [state is None for state in theirs]
    torch.testing.assert_close(selected[0], every[0], atol=0, rtol=0)
    torch.testing.assert_close(selected[2], every[2], atol=0, rtol=0)
    assert [state is None for state in penultimate] == [True, True, False, True]
    torch.testing.assert_close(penultimate[2], every[2], atol=0, rtol=0)


def test_outputs_are_recorded_by_hooks_on_our_layers():
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    assert _CAN_RECORD_REGISTRY.get(model.vit) == {
        "hidden_states": type(model.vit.layers[0]),
        "attentions": type(model.vit.layers[0].attention),
    }
    # A hook on a block sees what output_hidden_states returns: the block's output is its recorded state.
    seen = []
    model.vit.layers[1].register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert len(seen) == 1 and seen[0] is out.hidden_states[2]
    assert getattr(model.vit, "_output_capturing_hooks_installed", False)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 17, 17)


def test_loss_goes_through_transformers_loss_function_in_float32():
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 32, 32)
    cases = [
        (5, torch.tensor([0, 4, 2, 1]), lambda logits, y: torch.nn.functional.cross_entropy(logits.float(), y)),
        (
            5,
            torch.randint(0, 2, (4, 5)).float(),
            lambda logits, y: torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y),
        ),
        (1, torch.randn(4), lambda logits, y: torch.nn.functional.mse_loss(logits.float().squeeze(-1), y)),
    ]
    for num_labels, labels, expected_loss in cases:
        for dtype in (torch.float32, torch.bfloat16):
            model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_labels=num_labels)))
            model = model.to(dtype).eval()
            calls = []

            def spy(*args, _original=model.loss_function, _calls=calls, **kwargs):
                _calls.append(args[1].dtype)
                return _original(*args, **kwargs)

            model.loss_function = spy
            with torch.no_grad():
                out = model(pixels, labels=labels)
            assert calls == [torch.float32], (num_labels, dtype)
            assert out.logits.dtype == dtype and out.loss.dtype == torch.float32
            torch.testing.assert_close(out.loss, expected_loss(out.logits, labels), atol=1e-6, rtol=1e-6)


def test_loss_honours_num_items_in_batch():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        out = model(pixels, labels=labels, num_items_in_batch=torch.tensor(8))
    expected = torch.nn.functional.cross_entropy(out.logits, labels, reduction="sum") / 8
    torch.testing.assert_close(out.loss, expected)


def legacy_named_directory(tmp_path):
    """transformers' own ViT saved to disk (its older parameter names), with our config.json beside the weights."""
    reference, _ = hf_pair()
    reference.save_pretrained(tmp_path / "theirs")
    directory = tmp_path / "legacy"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes((tmp_path / "theirs" / "model.safetensors").read_bytes())
    ViTAccelConfig(**tiny_config_kwargs()).save_pretrained(directory)
    return reference, directory


def test_legacy_vit_names_load_through_the_standard_path(tmp_path, monkeypatch):
    from safetensors import safe_open

    reference, directory = legacy_named_directory(tmp_path)
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        on_disk = set(handle.keys())
    assert "vit.encoder.layer.0.attention.attention.query.weight" in on_disk
    # transformers' own from_pretrained alone: vit_accel's converting loader is switched off.
    import vit_accel.modeling_vit_accel as modeling

    monkeypatch.setattr(modeling, "_converted", lambda *args, **kwargs: None)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.eval()(pixels).logits
    for loader in (ViTAccelForImageClassification, AutoModelForImageClassification):
        model, info = loader.from_pretrained(directory, output_loading_info=True)
        assert type(model) is ViTAccelForImageClassification
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(pixels).logits, expected, atol=ATOL, rtol=0)
    base, info = ViTAccelModel.from_pretrained(directory, output_loading_info=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}  # a classifier has none
    assert not info["unexpected_keys"] or set(info["unexpected_keys"]) <= {"classifier.weight", "classifier.bias"}


def test_save_pretrained_writes_transformers_on_disk_names_and_reads_both(tmp_path):
    from safetensors.torch import load_file

    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).eval()
    model.save_pretrained(tmp_path / "on_disk")
    model.save_pretrained(tmp_path / "in_memory", save_original_format=False)
    reference, _ = hf_pair()
    reference.save_pretrained(tmp_path / "theirs")
    # The same names on disk as transformers' ViT writes.
    assert set(load_file(tmp_path / "on_disk" / "model.safetensors")) == set(
        load_file(tmp_path / "theirs" / "model.safetensors")
    )
    assert set(load_file(tmp_path / "in_memory" / "model.safetensors")) == set(model.state_dict())
    for name in ("on_disk", "in_memory"):
        loaded = ViTAccelForImageClassification.from_pretrained(tmp_path / name)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)


def test_image_feature_extraction_pipeline_pools(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor, pipeline

    torch.manual_seed(0)
    model = ViTAccelModel(ViTAccelConfig(**tiny_config_kwargs())).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
    image = Image.fromarray(torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8).numpy())
    pooled = torch.tensor(extractor(image, pool=True))
    with torch.no_grad():
        expected = model(processor(image, return_tensors="pt").pixel_values).pooler_output
    assert pooled.shape == (1, 48)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)


REMOTE_COPY = """
import importlib.util, sys, types
from pathlib import Path

import torch

if {block}:
    sys.modules["vit_accel"] = None  # not installed: as on a machine that loads the model as remote code
package = types.ModuleType("remote_copy")
package.__path__ = []
sys.modules["remote_copy"] = package
for name in ("configuration_vit_accel", "modeling_vit_accel"):
    path = Path({root!r}) / "vit_accel" / f"{{name}}.py"
    spec = importlib.util.spec_from_file_location(f"remote_copy.{{name}}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
from remote_copy.modeling_vit_accel import ViTAccelForImageClassification

model = ViTAccelForImageClassification.from_pretrained({saved!r})
assert type(model).__module__ == "remote_copy.modeling_vit_accel"
assert torch.equal(model.classifier.weight, torch.load({weights!r}))
try:
    ViTAccelForImageClassification.from_pretrained("vit-tiny-p16-224")  # converted only by vit_accel's own class
except OSError as error:
    print("transformers' path:", type(error).__name__)
"""


@pytest.mark.parametrize("installed", [False, True])
def test_the_remote_code_copy_takes_transformers_path_with_or_without_vit_accel(installed, tmp_path):
    """One behaviour, whatever was imported: the copy of the model file that travels with a saved model reads a
    directory of ours through transformers alone; vit_accel's converting loader serves vit_accel's own classes."""
    from factories import ROOT

    import vit_accel.modeling_vit_accel as modeling

    assert "_checkpoint_resolver" not in vars(ViTAccelPreTrainedModel)  # importing vit_accel set nothing up
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path / "saved")
    torch.save(model.classifier.weight.detach(), tmp_path / "head.pt")
    script = REMOTE_COPY.format(
        block=not installed, root=str(ROOT), saved=str(tmp_path / "saved"), weights=str(tmp_path / "head.pt")
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "transformers' path: OSError" in result.stdout, result.stdout + result.stderr[-2000:]
    # vit_accel's own class finds the converting loader by itself, which leaves a directory of ours to transformers.
    assert modeling._converted(ViTAccelForImageClassification, str(tmp_path / "saved")) is None
