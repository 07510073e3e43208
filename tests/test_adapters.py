"""LoRA/DoRA through peft: target checks, merge against peft's own, saving, and loading in fresh processes."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from factories import ROOT, tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.adapters import (
    ADAPTER_CONFIG,
    CLASSIFIER_CONFIG,
    apply_lora,
    base_model_reference,
    check_target_modules,
    count_parameters,
    load_adapter_classifier,
    merged_copy,
    parse_target_modules,
    save_adapter,
)
from vit_accel.errors import UserError

pytest.importorskip("peft")


def _base(num_labels=5, seed=0):
    torch.manual_seed(seed)
    return ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_labels=num_labels)))


def _train_a_little(model, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=generator)
        model(pixel_values=x, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_equals_the_adapted_model_and_the_lora_formula(use_dora):
    model = _train_a_little(apply_lora(_base(), r=4, alpha=8, dropout=0.0, use_dora=use_dora))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
        merged = merged_copy(model)
        torch.testing.assert_close(merged(pixel_values=x).logits, adapted, atol=1e-5, rtol=1e-5)
        assert type(merged) is ViTAccelForImageClassification
        # The model itself keeps its adapter (a copy was merged).
        assert any("lora_A" in n for n, _ in model.named_parameters())
        if not use_dora:
            layer = model.base_model.model.vit.layers[0].attention.q_proj
            delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * (8 / 4)
            expected = layer.base_layer.weight + delta
            torch.testing.assert_close(merged.vit.layers[0].attention.q_proj.weight, expected)


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapted_training_step_compiles_with_activation_checkpointing(use_dora):
    # What train.py builds for --peft lora --gradient_checkpointing --torch_compile: checkpointing switched on before
    # peft wraps the model, then the step compiled. For LoRA with fullgraph=True, which raises on any graph break;
    # peft's DoRA caches its weight norm in a dict, a side effect torch does not trace inside checkpointing, so it
    # compiles with breaks. "aot_eager" traces the forward and the backward through AOTAutograd as inductor does,
    # without its C++ code generation.
    def adapted(checkpointing: bool):
        model = _base()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        torch.manual_seed(1)
        return apply_lora(model, r=4, dropout=0.0, use_dora=use_dora).train()

    reference, checkpointed = adapted(False), adapted(True)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient to compare
        for name, param in reference.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    checkpointed.load_state_dict(reference.state_dict())
    pixel_values, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    reference(pixel_values=pixel_values, labels=labels).loss.backward()
    torch._dynamo.reset()
    step = torch.compile(
        lambda: checkpointed(pixel_values=pixel_values, labels=labels).loss, fullgraph=not use_dora, backend="aot_eager"
    )
    step().backward()
    trained = [(name, param) for name, param in reference.named_parameters() if param.requires_grad]
    assert any("lora_A" in name for name, _ in trained) and any(param.grad.abs().sum() > 0 for _, param in trained)
    got = dict(checkpointed.named_parameters())
    for name, param in trained:
        torch.testing.assert_close(got[name].grad, param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_only_adapter_and_classifier_train_and_the_base_is_untouched():
    base = _base()
    before = {n: p.detach().clone() for n, p in base.state_dict().items()}
    model = _train_a_little(apply_lora(base, r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier.modules_to_save" in n for n in trainable)
    for name, value in model.get_base_model().state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        key = name.replace(".base_layer", "").replace("classifier.original_module", "classifier")
        assert torch.equal(value, before[key]), name
    trained, total = count_parameters(model)
    assert total == sum(p.numel() for p in _base().parameters()) + trained - sum(
        p.numel() for p in _base().classifier.parameters()
    )


def test_target_that_matches_no_module_names_the_flag_and_lists_the_layers():
    with pytest.raises(UserError, match=r"--lora_target_modules: 'qkv' matches no linear layer.*q_proj"):
        check_target_modules(_base(), ["q_proj", "qkv"])
    assert parse_target_modules(None) == ["q_proj", "v_proj"]
    assert parse_target_modules("q_proj, k_proj,fc1") == ["q_proj", "k_proj", "fc1"]
    with pytest.raises(UserError, match="--lora_r"):
        apply_lora(_base(), r=0)


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A 5-class base on disk and an adapter trained on top of it for 7 classes (the base's head does not fit)."""
    root = tmp_path_factory.mktemp("adapter")
    _base(num_labels=5).save_pretrained(root / "base")
    model = ViTAccelForImageClassification.from_pretrained(root / "base", num_labels=7, ignore_mismatched_sizes=True)
    model = _train_a_little(apply_lora(model, r=4, base_model_name_or_path=base_model_reference(str(root / "base"))))
    save_adapter(model, root / "adapter")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.save({"x": x, "logits": model(pixel_values=x).logits}, root / "expected.pt")
    # The same adapter over a base whose head already has 7 classes: what peft's and transformers' auto-loading need.
    _base(num_labels=7).save_pretrained(root / "base7")
    model7 = _train_a_little(
        apply_lora(
            ViTAccelForImageClassification.from_pretrained(root / "base7"),
            r=4,
            base_model_name_or_path=str(root / "base7"),
        )
    )
    save_adapter(model7, root / "adapter7")
    with torch.no_grad():
        torch.save({"x": x, "logits": model7(pixel_values=x).logits}, root / "expected7.pt")
    return root


def test_saved_adapter_names_its_base_and_reloads_with_the_right_head(saved_adapter):
    config = json.loads((saved_adapter / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str((saved_adapter / "base").resolve())
    assert config["modules_to_save"] == ["classifier"] and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert len(json.loads((saved_adapter / "adapter" / CLASSIFIER_CONFIG).read_text())["id2label"]) == 7
    assert not (saved_adapter / "adapter" / "config.json").exists()
    expected = torch.load(saved_adapter / "expected.pt", weights_only=True)
    for merge in (True, False):
        model = load_adapter_classifier(saved_adapter / "adapter", merge=merge)
        with torch.no_grad():
            torch.testing.assert_close(
                model(pixel_values=expected["x"]).logits, expected["logits"], atol=1e-5, rtol=1e-5
            )


LOADERS = {
    "PeftModel.from_pretrained": """
        import vit_accel
        from peft import PeftModel
        from transformers import AutoModelForImageClassification
        base = AutoModelForImageClassification.from_pretrained(BASE)
        model = PeftModel.from_pretrained(base, ADAPTER)
    """,
    "AutoPeftModel": """
        from peft import AutoPeftModel
        model = AutoPeftModel.from_pretrained(ADAPTER, import_allowlist=["vit_accel"])
    """,
    "transformers adapter loading": """
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(ADAPTER, trust_remote_code=True)
    """,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_fresh_process_loads_the_adapter_directory(saved_adapter, loader):
    script = textwrap.dedent(LOADERS[loader]) + textwrap.dedent(
        """
        import torch
        expected = torch.load(EXPECTED, weights_only=True)
        with torch.no_grad():
            got = model.eval()(pixel_values=expected["x"]).logits
        print((got - expected["logits"]).abs().max().item())
        """
    )
    script = (
        script.replace("BASE", repr(str(saved_adapter / "base7")))
        .replace("ADAPTER", repr(str(saved_adapter / "adapter7")))
        .replace("EXPECTED", repr(str(saved_adapter / "expected7.pt")))
    )
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=saved_adapter, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5


def test_an_adapter_whose_base_was_retrained_in_place_is_refused_naming_both(
    trained_run, digit_images, run_train, tmp_path, capsys
):
    import shutil

    from launching import tiny_args

    from vit_accel.cli import main as vit_accel

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(trained_run, base, ignore=shutil.ignore_patterns("checkpoint-*"))
    argv = tiny_args(
        trained_run.parent / "digits", adapter, "--peft", "lora", "--lora_r", "4", "--max_train_steps", "2"
    )
    argv.remove("--from_scratch")
    argv[argv.index("--model_name_or_path") + 1] = str(base)
    code, err = run_train(argv)
    assert code == 0, err[-3000:]
    record = json.loads((adapter / "adapter_base.json").read_text())
    assert record["base"] == str(base.resolve()) and len(record["weights_xxh3_64"]) == 16
    image = str(digit_images[0])
    assert vit_accel(["predict", "--model", str(adapter), "--json", image]) == 0
    before = json.loads(capsys.readouterr().out)

    # The base retrained in place: same architecture, same files, other weights.
    retrained = ViTAccelForImageClassification.from_pretrained(base)
    with torch.no_grad():
        retrained.vit.layers[0].mlp.fc1.weight.add_(0.05)
    retrained.save_pretrained(base)
    for command in (["predict", "--model", str(adapter), image],
                    ["evaluate", "--model", str(adapter), "--validation_dir", str(tmp_path / "nowhere")]):  # fmt: skip
        if command[0] == "evaluate":
            (tmp_path / "nowhere" / "3").mkdir(parents=True)
            shutil.copy(image, tmp_path / "nowhere" / "3" / "a.png")
            command += ["--output_dir", str(tmp_path / "eval"), "--dataloader_num_workers", "0"]
        assert vit_accel(command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{adapter}: its base {base.resolve()} has other weights" in err, err
        assert record["weights_xxh3_64"] in err and "--allow_changed_base" in err
    assert not (tmp_path / "eval" / "eval_results.json").exists()
    with pytest.raises(UserError, match="has other weights than the ones the adapter was trained on"):
        load_adapter_classifier(adapter)
    with pytest.warns(UserWarning, match="used anyway"):
        load_adapter_classifier(adapter, allow_changed_base=True)
    assert vit_accel(["predict", "--model", str(adapter), "--json", "--allow_changed_base", image]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after[0]["predictions"] != before[0]["predictions"]  # the changed base does change the scores


def test_the_classifier_as_a_lora_target_is_refused_naming_the_layers_that_can_be(run_train, tmp_path):
    from launching import tiny_args

    for targets in ("classifier", "q_proj,classifier"):
        with pytest.raises(UserError, match=r"the classifier always trains in full .* targets are fc1, fc2, k_proj"):
            apply_lora(_base(), r=4, target_modules=parse_target_modules(targets))
    # train.py says so before reading the data (the dataset named here does not exist).
    argv = tiny_args(tmp_path / "no_such_dataset", tmp_path / "out", "--peft", "lora", "--lora_target_modules",
                     "classifier")  # fmt: skip
    argv.remove("--from_scratch")
    code, err = run_train(argv)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "--lora_target_modules classifier: the classifier always trains in full" in line, err
    assert "o_proj" in line and "q_proj" in line and not (tmp_path / "out").exists()


def test_an_adapter_whose_base_is_gone_says_so(tmp_path):
    from vit_accel.adapters import base_identity

    _base().save_pretrained(tmp_path / "base")
    model = apply_lora(ViTAccelForImageClassification.from_pretrained(tmp_path / "base"), r=2,
                       base_model_name_or_path=base_model_reference(str(tmp_path / "base")))  # fmt: skip
    save_adapter(model, tmp_path / "adapter", base=base_identity(str(tmp_path / "base")))
    load_adapter_classifier(tmp_path / "adapter")  # the base as trained on: loads
    (tmp_path / "base").rename(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=r"adapter: its base .*/base \(named in adapter_config.json\) no longer exists"):
        load_adapter_classifier(tmp_path / "adapter")


def test_adapter_of_a_base_given_by_relative_path_loads_from_another_directory(tmp_path, monkeypatch):
    # train.py loads the base by the path as given (often relative); peft names the base after the model's
    # name_or_path, so the adapter must still record the absolute path to load from anywhere.
    from PIL import Image
    from transformers import ViTImageProcessor

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _base(num_labels=5).save_pretrained("base")
    model = ViTAccelForImageClassification.from_pretrained("base")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _train_a_little(apply_lora(model, r=4, base_model_name_or_path=base_model_reference("base")))
    assert not [w for w in caught if "renamed" in str(w.message)]  # peft's warning when it replaces the name
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # peft reading a deprecated alias
    save_adapter(model, "adapter")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained("adapter")
    config = json.loads((work / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str((work / "base").resolve())

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(work / "x.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    adapter = str(work / "adapter")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({adapter!r}, trust_remote_code=True).eval()
        x = torch.load({str(work / "x.pt")!r}, weights_only=True)
        with torch.no_grad():
            print(model(pixel_values=x).logits.tolist())
        """
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.save(x, work / "x.pt")
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    loaded = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    got = torch.tensor(json.loads(loaded.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    command = [sys.executable, "-m", "vit_accel.cli", "predict", "--model", adapter, "--json", str(work / "x.png")]
    predicted = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(json.loads(predicted.stdout)[0]["predictions"]) == 5


@pytest.mark.parametrize("use_dora", [False, True])
def test_default_targets_adapt_the_attention_of_every_family_and_merge_exactly(use_dora):
    """The default targets (query and value) exist in every family, each block's and, for SigLIP, its attention
    pool's (a pretrained part of the backbone): training moves only the adapters and the classifier, and the merged
    model gives the adapted logits."""
    from test_modeling_vit_accel_families import FAMILY_OPTIONS, family_model

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for name in sorted(FAMILY_OPTIONS):
        model = apply_lora(family_model(name), r=4, alpha=8, dropout=0.0, use_dora=use_dora)
        adapted = {key for key, module in model.named_modules() if hasattr(module, "lora_A")}
        expected = {f"vit.layers.{i}.attention.{proj}" for i in range(2) for proj in ("q_proj", "v_proj")}
        if FAMILY_OPTIONS[name].get("pooling") == "map":
            expected |= {"vit.attention_pool.q_proj", "vit.attention_pool.v_proj"}
        assert adapted == {f"base_model.model.{key}" for key in expected}, name
        base = {key: p.detach().clone() for key, p in model.named_parameters() if not p.requires_grad}
        trained = {key for key, p in model.named_parameters() if p.requires_grad}
        assert trained and all("lora_" in key or ".classifier." in key for key in trained), name
        _train_a_little(model)
        moved = [key for key, p in model.named_parameters() if key in base and not torch.equal(p, base[key])]
        assert len(base) > 20 and not moved, (name, moved)
        with torch.no_grad():
            merged = merged_copy(model)(pixel_values=x).logits
            torch.testing.assert_close(merged, model(pixel_values=x).logits, atol=1e-5, rtol=1e-5, msg=name)


def test_lora_on_an_mae_encoder_trains_an_adapter_that_predict_and_evaluate_load(
    digits, digit_images, run_train, tmp_path, capsys
):
    from launching import tiny_args
    from safetensors.torch import load_file

    from vit_accel import ViTAccelForPreTraining, ViTAccelMAEConfig
    from vit_accel.cli import main as vit_accel

    torch.manual_seed(0)
    mae = tmp_path / "mae"
    encoder = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64)  # fmt: skip
    decoder = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                   decoder_intermediate_size=32)  # fmt: skip
    ViTAccelForPreTraining(ViTAccelMAEConfig(**encoder, **decoder)).save_pretrained(mae)
    before = load_file(mae / "model.safetensors")
    adapter = tmp_path / "adapter"
    argv = tiny_args(digits, adapter, "--peft", "lora", "--lora_r", "4", "--lora_alpha", "8", "--max_train_steps", "4")
    argv.remove("--from_scratch")
    del argv[argv.index("--config_overrides") : argv.index("--config_overrides") + 2]
    argv[argv.index("--model_name_or_path") + 1] = str(mae)
    argv[argv.index("--learning_rate") + 1] = "1e-2"
    code, err = run_train(argv)
    assert code == 0, err[-3000:]
    results = json.loads((adapter / "all_results.json").read_text())
    # LoRA on the query and value projections of both blocks (r=4) and the new 10-class head; the encoder is frozen.
    assert results["trainable_parameters"] == 2 * 2 * (4 * 32 + 32 * 4) + (32 * 10 + 10)
    assert json.loads((adapter / "classifier_config.json").read_text())["pooling"] == "mean"  # MAE's fine-tuning
    assert json.loads((adapter / ADAPTER_CONFIG).read_text())["r"] == 4
    lora_b = [t for k, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # the adapter did train
    after = load_file(mae / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # evaluate gives back the run's own evaluation; predict reads the adapter like any model.
    out = tmp_path / "eval"
    command = ["evaluate", "--model", str(adapter), "--dataset_name", str(digits), "--max_eval_samples", "64"]
    assert vit_accel([*command, "--output_dir", str(out), "--dataloader_num_workers", "0"]) == 0
    evaluated = json.loads((out / "eval_results.json").read_text())
    assert evaluated["loss"] == pytest.approx(results["eval_loss"], abs=1e-5)
    assert evaluated["num_examples"] == results["eval_num_examples"] == 64
    capsys.readouterr()
    assert vit_accel(["predict", "--model", str(adapter), "--json", "--top_k", "10", str(digit_images[0])]) == 0
    scores = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["label"] for p in scores) == [str(i) for i in range(10)]
    assert sum(p["score"] for p in scores) == pytest.approx(1.0, abs=1e-5)
