"""The built-in synthetic WiSe data: deterministic, imbalanced, with both thin and blob structures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.synthesize import SynthesizeParams, empty_indices, make_sample


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    a_img, a_mask = make_sample(7, 3, 64)
    b_img, b_mask = make_sample(7, 3, 64)
    c_img, _ = make_sample(8, 3, 64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)
    assert a_img.dtype == np.uint8 and a_img.shape == (64, 64, 3)


def test_foreground_is_a_small_minority() -> None:
    shares = [make_sample(7, i, 96)[1].mean() for i in range(30)]
    assert 0.02 < float(np.mean(shares)) < 0.2
    assert all(s > 0 for s in shares)


def test_foreground_differs_from_background_on_average() -> None:
    img, mask = make_sample(7, 0, 96)
    assert abs(img[mask].mean() - img[~mask].mean()) > 10


def test_empty_images_are_the_share_asked_for_and_change_nothing_else() -> None:
    params = SynthesizeParams(n_images=20, image_size=32, seed=7, mask_values=[0, 255], empty_share=0.25)
    empty = empty_indices(params)
    assert len(empty) == 5 and empty == empty_indices(params)
    assert not empty_indices(dataclasses.replace(params, empty_share=0.0))
    index = min(empty)
    image, mask = make_sample(7, index, 32, empty=True)
    drawn_image, drawn_mask = make_sample(7, index, 32)
    assert not mask.any() and drawn_mask.any()
    assert np.array_equal(image[~drawn_mask], drawn_image[~drawn_mask])


def test_empty_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"empty_share must be in \[0, 1\], got 1.5"):
        SynthesizeParams(n_images=20, image_size=32, seed=7, mask_values=[0, 255], empty_share=1.5).validate()
