"""Masks, patches, batches, classical filters, image files and confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff_lab.data import (
    batches,
    best_gaussian_filter,
    confusion_matrix,
    gaussian_filter,
    load_digits,
    median_filter,
    psnr,
    random_block_mask,
    random_patches,
    read_image,
    write_image,
)
from autodiff_lab.errors import InputError, NonFiniteError

# -- random_block_mask ----------------------------------------------------------------------------


def test_block_mask_hides_one_12x12_square_per_image():
    x, _ = load_digits("test")
    masked, mask = random_block_mask(x[:50], rng=3)
    assert masked.shape == mask.shape == (50, 28, 28) and mask.dtype == x.dtype
    np.testing.assert_array_equal(masked, x[:50] * mask)
    corners = set()
    for m in mask:
        rows, cols = np.nonzero(m == 0)
        assert rows.size == 144
        assert rows.max() - rows.min() == 11 and cols.max() - cols.min() == 11  # one solid square
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 25  # positions vary from image to image
    again, _ = random_block_mask(x[:50], rng=3)
    np.testing.assert_array_equal(again, masked)


def test_block_mask_flattened_images():
    x = np.random.default_rng(0).random((7, 784))
    masked, mask = random_block_mask(x, block=5, rng=np.random.default_rng(1))
    assert masked.shape == (7, 784) and np.all((mask == 0).sum(axis=1) == 25)
    assert random_block_mask(x.astype(np.float32))[0].dtype == np.float32


@pytest.mark.parametrize("images,kw,match", [
    (np.zeros((2, 10, 10)), {"block": 11}, "does not fit"),
    (np.zeros((2, 780)), {}, "square"),
    (np.zeros(784), {}, "images must be"),
    (np.zeros((2, 28, 28)), {"block": 0}, "block"),
    (np.zeros((2, 28, 28)), {"rng": "seed"}, "rng"),
])
def test_block_mask_errors(images, kw, match):
    with pytest.raises(InputError, match=match):
        random_block_mask(images, **kw)


# -- random_patches -------------------------------------------------------------------------------

def dihedral(p):
    """The 8 images of a square under rotations and mirroring."""
    return [np.rot90(q, k) for q in (p, p[:, ::-1]) for k in range(4)]


def occurs_in(patch, image):
    s = patch.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(image, (s, s))
    return bool(np.any(np.all(windows == patch, axis=(-2, -1))))


def test_patches_come_from_the_images():
    rng = np.random.default_rng(0)
    images = {"a": rng.random((12, 15)), "b": rng.random((9, 9))}
    plain = random_patches(images, size=4, count=40, rng=1, augment=False)
    assert plain.shape == (40, 1, 4, 4) and plain.dtype == np.float32
    small = {k: v.astype(np.float32) for k, v in images.items()}
    for p in plain[:, 0]:
        assert any(occurs_in(p, img) for img in small.values())
    aug = random_patches(list(images.values()), size=4, count=60, rng=2)
    found = set()
    for p in aug[:, 0]:
        hits = [m for m, q in enumerate(dihedral(p)) if any(occurs_in(q, img) for img in small.values())]
        assert hits
        found.update(hits)
    assert len(found) > 4  # several symmetries were used
    np.testing.assert_array_equal(aug, random_patches(list(images.values()), size=4, count=60, rng=2))


def test_patches_sample_images_by_area():
    images = [np.zeros((40, 40)), np.ones((80, 40))]  # 1 vs 41 positions
    p = random_patches(images, size=40, count=200, rng=0, augment=False)
    assert (p[:, 0, 0, 0] == 1).mean() > 0.9


@pytest.mark.parametrize("images,match", [
    ([], "at least one"),
    ([np.zeros((30, 50))], "smaller"),
    ({"rgb": np.zeros((50, 50, 3))}, "'rgb' must be 2-D"),
])
def test_patch_errors(images, match):
    with pytest.raises(InputError, match=match):
        random_patches(images, size=40, count=2)


# -- batches --------------------------------------------------------------------------------------

def test_batches_cover_every_index_once_per_epoch():
    rng = np.random.default_rng(0)
    epoch1 = list(batches(10, 4, rng))
    epoch2 = list(batches(10, 4, rng))
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(np.concatenate(epoch1)) == list(range(10)) == sorted(np.concatenate(epoch2))
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))  # reshuffled
    rerun = np.random.default_rng(0)
    assert all(np.array_equal(a, b) for a, b in zip(epoch1, batches(10, 4, rerun)))
    assert [len(b) for b in batches(10, 4, 1, drop_last=True)] == [4, 4]
    assert np.array_equal(np.concatenate(list(batches(5, 2, shuffle=False))), np.arange(5))
    assert list(batches(0, 3)) == []
    with pytest.raises(InputError, match="batch_size"):
        list(batches(10, 0))


# -- filters --------------------------------------------------------------------------------------

def reference_gaussian(img, sigma, truncate=4.0):
    """Direct 2-D convolution with the outer-product kernel, pixel by pixel."""
    r = max(1, int(truncate * sigma + 0.5))
    x = np.arange(-r, r + 1)
    k1 = np.exp(-0.5 * (x / sigma) ** 2)
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    padded = np.pad(img, r, mode="symmetric")
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            out[i, j] = np.sum(padded[i:i + 2 * r + 1, j:j + 2 * r + 1] * k2)
    return out


def test_gaussian_filter_against_direct_convolution():
    img = np.random.default_rng(0).random((9, 11))
    for sigma in (0.5, 1.3, 3.0):  # 3.0: the radius (12) exceeds the image
        np.testing.assert_allclose(gaussian_filter(img, sigma), reference_gaussian(img, sigma), rtol=1e-12)
    np.testing.assert_allclose(gaussian_filter(np.full((6, 6), 0.3), 2.0), 0.3, rtol=1e-14)
    assert gaussian_filter(img.astype(np.float32), 1.0).dtype == np.float32
    np.testing.assert_array_equal(gaussian_filter(img, 0), img)
    stack = np.stack([img, img[::-1]])
    np.testing.assert_allclose(gaussian_filter(stack, 1.0)[1], gaussian_filter(img[::-1], 1.0), rtol=1e-15)


def test_gaussian_filter_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    img = np.random.default_rng(1).random((30, 25))
    np.testing.assert_allclose(gaussian_filter(img, 1.7), ndimage.gaussian_filter(img, 1.7, mode="reflect"),
                               rtol=1e-10)


def test_median_filter():
    rng = np.random.default_rng(2)
    img = rng.random((8, 7))
    padded = np.pad(img, 1, mode="symmetric")
    ref = np.array([[np.median(padded[i:i + 3, j:j + 3]) for j in range(7)] for i in range(8)])
    np.testing.assert_array_equal(median_filter(img), ref)
    flat = np.full((9, 9), 0.5)
    flat[4, 4] = 1.0  # an impulse is removed
    np.testing.assert_array_equal(median_filter(flat, 3), np.full((9, 9), 0.5))
    assert median_filter(np.stack([img, img]), 5).shape == (2, 8, 7)
    with pytest.raises(InputError, match="odd"):
        median_filter(img, 4)


def test_best_gaussian_filter_picks_the_best_sigma_per_image():
    rng = np.random.default_rng(3)
    clean = gaussian_filter(rng.random((48, 48)), 2.0)  # smooth
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    img, sigma, score = best_gaussian_filter(noisy, clean, sigmas=(0.5, 1.0, 2.0, 3.0))
    scores = {s: psnr(gaussian_filter(noisy, s), clean) for s in (0.5, 1.0, 2.0, 3.0)}
    assert sigma == max(scores, key=scores.get) and score == pytest.approx(max(scores.values()))
    np.testing.assert_allclose(img, gaussian_filter(noisy, sigma))
    less_noisy = clean + rng.normal(0, 0.01, clean.shape)
    stack, sigmas, scores2 = best_gaussian_filter(np.stack([noisy, less_noisy]), np.stack([clean, clean]))
    assert stack.shape == (2, 48, 48) and sigmas.shape == scores2.shape == (2,)
    assert sigmas[0] > sigmas[1]  # more noise, more smoothing
    with pytest.raises(InputError, match="same shape"):
        best_gaussian_filter(noisy, clean[:10])


# -- image files ------------------------------------------------------------------------------------

def test_png_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    for shape in ((5, 6), (5, 6, 3), (5, 6, 4)):
        u8 = rng.integers(0, 256, shape).astype(np.uint8)
        path = write_image(tmp_path / "sub" / f"img{len(shape)}{shape[-1]}.png", u8)
        np.testing.assert_array_equal(read_image(path, scale=False), u8)
        np.testing.assert_array_equal(read_image(path), u8 / 255.0)
    x = rng.random((4, 4))
    write_image(tmp_path / "f.png", x)
    np.testing.assert_allclose(read_image(tmp_path / "f.png"), x, atol=0.5 / 255 + 1e-12)
    write_image(tmp_path / "clip.png", np.array([[-0.2, 1.3]]))
    np.testing.assert_array_equal(read_image(tmp_path / "clip.png", scale=False), [[0, 255]])


def test_palette_and_16_bit_images(tmp_path):
    from PIL import Image
    Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="L").convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (2, 2, 3)
    Image.fromarray(np.array([[0, 40000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(InputError, match=r"deep\.png.*8-bit"):
        read_image(tmp_path / "deep.png")


def test_image_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"no image file at .*missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path)
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InputError, match=r"notes\.png.*not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(InputError, match="PNG"):
        write_image(tmp_path / "x.jpg", np.zeros((2, 2)))
    with pytest.raises(InputError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="0..255"):
        write_image(tmp_path / "x.png", np.array([[300]]))
    with pytest.raises(NonFiniteError):
        write_image(tmp_path / "x.png", np.array([[np.nan]]))


# -- confusion matrix -------------------------------------------------------------------------------

def test_confusion_matrix():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.sum() == 6 and confusion_matrix([], [], 2).sum() == 0
    with pytest.raises(InputError, match="0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(InputError, match="same length"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(InputError, match="integer"):
        confusion_matrix([0.5], [0], 3)
