"""LIBERO the reference's way: gripper binarisation, the image pipeline and the init-state split,
against hand-computed examples."""

import numpy as np
import pytest

from pushcut.policy.preprocess import center_crop, preprocess_images
from pushcut.sim.libero import INIT_STATE_SPLIT, INIT_STATES, binarize_gripper, init_state, reference_image


def test_gripper_is_binarised_with_its_sign_and_the_arm_is_untouched():
    chunk = np.array([[0.1, -0.2, 0.3, 0.0, 0.5, -0.5, 0.37],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.01],
                      [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    out = binarize_gripper(chunk)
    assert out[:, -1].tolist() == [1.0, -1.0, 0.0]  # np.sign: 0 stays 0, as the reference's
    np.testing.assert_array_equal(out[:, :-1], chunk[:, :-1])
    assert chunk[0, -1] == 0.37  # a copy


def test_reference_image_rotates_jpegs_and_resizes():
    """A red top-left quadrant on black, 256 x 256: rotated 180 degrees it is the bottom-right one;
    at 64 x 64 its inside is still red and the opposite quadrant black (JPEG and Lanczos blur only
    the edge)."""
    raw = np.zeros((256, 256, 3), np.uint8)
    raw[:128, :128] = (200, 30, 30)
    img = reference_image(raw, (64, 64))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.abs(img[40:60, 40:60].astype(int) - (200, 30, 30)).max() <= 6
    assert img[4:24, 4:24].max() <= 6
    assert np.abs(img[4:24, 40:60]).max() <= 6  # top-right: black


def test_center_crop_keeps_the_central_area_share():
    """Area 0.64 of a 10 x 10 image is its central 8 x 8 (each side x 0.8); at the policy's 8 x 8
    input it is exactly that window; 0.9 of 64 x 64 is the central 61 x 61 (round(64 * 0.949))."""
    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    np.testing.assert_array_equal(center_crop(img, 1.0), img)
    np.testing.assert_array_equal(center_crop(img, 0.64), img[1:9, 1:9])
    assert center_crop(np.zeros((64, 64, 3), np.uint8), 0.9).shape == (61, 61, 3)
    pixels = preprocess_images({"agentview": img}, ["agentview"], 8, crop=0.64)
    expect = img[1:9, 1:9].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(pixels[0], expect.transpose(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("n_tasks", [1, 10])
def test_held_out_init_states_are_never_trained_or_validated_on(n_tasks):
    """Every seed training (0 on) or validation (90000 on) can draw starts from a state of the
    first 40; held-out seeds (100000 on) only from the last 10, each task's all of them."""
    train = {init_state(s, n_tasks) for s in range(5000)} | {init_state(s, n_tasks) for s in range(80_000, 89_999)}
    validation = {init_state(s, n_tasks) for s in range(90_000, 91_000)}
    held_out = {init_state(s, n_tasks) for s in range(100_000, 101_000)}
    assert {st for _, st in train} == set(INIT_STATE_SPLIT["train"])
    assert {st for _, st in validation} == set(INIT_STATE_SPLIT["validation"])
    assert held_out == {(t, st) for t in range(n_tasks) for st in INIT_STATE_SPLIT["held_out"]}
    assert not (train & held_out) and not (validation & held_out) and not (train & validation)
    # the reference's all-50 evaluation, labelled as such: held-out seeds reach every state
    assert {init_state(s, n_tasks, "all")[1] for s in range(100_000, 100_000 + 50 * n_tasks)} == set(range(INIT_STATES))
