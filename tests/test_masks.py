"""Mask codings decoded against hand-made arrays (data/masks.py)."""

import numpy as np
import PIL.Image
import pytest

from data.masks import INVALID, VOID, MaskCoding, decode, raw_values, read_mask


def test_index_masks_keep_classes_and_void_and_flag_the_rest():
    raw = np.array([[0, 1, 2], [255, 3, 7]], dtype=np.uint8)
    got = decode(raw, MaskCoding(num_classes=3))
    assert got.tolist() == [[0, 1, 2], [VOID, INVALID, INVALID]]


def test_reduce_zero_label_is_mmsegmentations():
    raw = np.array([[0, 1, 150], [255, 151, 2]], dtype=np.uint8)
    got = decode(raw, MaskCoding(num_classes=150, reduce_zero_label=True))
    assert got.tolist() == [[VOID, 0, 149], [VOID, INVALID, 1]]


def test_a_class_map_names_every_raw_value_it_accepts():
    coding = MaskCoding(num_classes=2, class_map=((7, 0), (9, 1), (4, VOID)))
    raw = np.array([[7, 9, 4, 255, 8, 30]], dtype=np.uint8)
    assert decode(raw, coding).tolist() == [[0, 1, VOID, VOID, INVALID, INVALID]]


def test_binary_masks_of_0_1_and_of_0_255():
    coding = MaskCoding(num_classes=2, encoding="binary")
    assert decode(np.array([[0, 1, 255, 128]]), coding).tolist() == [[0, 1, 1, INVALID]]


def test_rgb_masks_decode_through_the_class_colours():
    coding = MaskCoding(
        num_classes=2, encoding="rgb", colours=((0, 0, 0), (255, 0, 0)), void_colours=((9, 9, 9),)
    )
    raw = np.array([[[0, 0, 0], [255, 0, 0], [9, 9, 9], [0, 255, 0]]], dtype=np.uint8)
    assert decode(raw, coding).tolist() == [[0, 1, VOID, INVALID]]
    with pytest.raises(ValueError, match="one channel"):
        decode(raw, MaskCoding(num_classes=2))
    values, counts = raw_values(raw)
    assert values.tolist() == [0, 0x00FF00, 0x090909, 0xFF0000] and counts.tolist() == [1] * 4


def test_read_mask_gives_palette_indices_and_rgb_channels(tmp_path):
    index = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    palette = PIL.Image.fromarray(index, mode="L")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    palette.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == index.tolist()  # the indices, not colours
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    PIL.Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png").shape == (2, 2, 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read mask .*broken.png"):
        read_mask(tmp_path / "broken.png")
