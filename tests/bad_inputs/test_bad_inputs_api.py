"""The Python API: mistakes raise UserError naming the culprit."""

from __future__ import annotations

import pytest

from vit_accel.errors import UserError

# --- the Python API ----------------------------------------------------------------------------------------------


def test_api_mistakes_raise_user_errors_naming_the_culprit(world):
    from vit_accel import ViTAccelConfig
    from vit_accel.data import DataArguments, load_image_dataset

    with pytest.raises(ValueError, match="Unknown ViT variant 'vit-bse-p16-224'"):
        ViTAccelConfig.from_variant("vit-bse-p16-224")
    with pytest.raises(UserError, match="single class"):
        load_image_dataset(DataArguments(dataset_name=str(world / "one_class")), seed=0)
    with pytest.raises(UserError, match="--max_eval_samples"):
        DataArguments(dataset_name="x", max_eval_samples=-2)
