"""The shipped data loads, and the damage functions do what they say."""

import numpy as np
import pytest

from autodiff_lab.data import (
    add_gaussian_noise,
    extract_patches,
    load_digits,
    load_gray_images,
    mask_pixels,
    psnr,
)
from autodiff_lab.errors import InputError


def test_digits_are_balanced_and_scaled():
    x, y = load_digits("train")
    assert x.shape == (6000, 28, 28) and x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [600] * 10
    xt, yt = load_digits("test", scale=False)
    assert xt.dtype == np.uint8 and np.bincount(yt).tolist() == [100] * 10
    with pytest.raises(InputError):
        load_digits("validation")


def test_gray_images_and_patches():
    images = load_gray_images(("camera", "coins"))
    assert images["camera"].shape == (512, 512) and 0 <= images["camera"].min() <= images["camera"].max() <= 1
    patches = extract_patches(images["camera"], 40, 5)
    assert patches.shape == (5, 40, 40)
    with pytest.raises(InputError, match="no image"):
        load_gray_images(("lena",))


def test_masks_noise_and_psnr():
    img = np.ones((4, 10, 10))
    masked, mask = mask_pixels(img, 0.5)
    assert set(np.unique(mask)) == {0.0, 1.0} and 0.3 < 1 - mask.mean() < 0.7
    np.testing.assert_array_equal(masked, img * mask)
    _, block = mask_pixels(img, 0.25, kind="block")
    assert block[0, 5, 5] == 0 and block[0, 0, 0] == 1
    noisy = add_gaussian_noise(np.zeros((200, 200)), sigma=0.1)
    assert abs(noisy.std() - 0.1) < 0.005
    assert psnr(noisy, np.zeros((200, 200))) == pytest.approx(20.0, abs=0.5)
