"""Keep the datasets cache of these tests in a temporary folder, not in the user's home."""

import datasets
import pytest


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    datasets.disable_progress_bars()
