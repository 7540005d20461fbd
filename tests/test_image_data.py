"""Image datasets: bundled photos, the held-out split, rendered text and procedural shapes."""

import numpy as np
import pytest
import torch

from vqkit.data import text_images
from vqkit.data.images import EVAL_PHOTOS, PHOTO_NAMES, TRAIN_PHOTOS, PhotoCrops, eval_photos, load_photo
from vqkit.data.shapes import SHAPE_CLASSES, SHAPE_COLOURS, ShapeImages
from vqkit.data.text_images import TextImages

# ---- photographs ------------------------------------------------------------------------------


def test_photo_split_is_disjoint_and_complete():
    assert len(EVAL_PHOTOS) == 3
    assert set(TRAIN_PHOTOS).isdisjoint(EVAL_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(EVAL_PHOTOS) == set(PHOTO_NAMES)
    assert len(set(PHOTO_NAMES)) == len(PHOTO_NAMES)


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_photo_loads_as_rgb_uint8(name):
    photo = load_photo(name)

    assert photo.dtype == np.uint8
    assert photo.ndim == 3
    assert photo.shape[2] == 3
    assert min(photo.shape[:2]) >= 128
    assert not photo.flags.writeable


def test_photos_are_distinct_pictures():
    # A duplicate (such as skimage.data.cat, which is chelsea) would leak across the split.
    small = {name: load_photo(name)[:64, :64].astype(np.int16) for name in PHOTO_NAMES}
    for first in PHOTO_NAMES:
        for second in PHOTO_NAMES:
            if first < second:
                assert np.abs(small[first] - small[second]).mean() > 1.0, f"{first} and {second} look the same"


def test_unknown_photo_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown photo 'lena'.*astronaut"):
        load_photo("lena")


def test_eval_photos_are_whole_images():
    photos = eval_photos()

    assert list(photos) == list(EVAL_PHOTOS)
    for name, image in photos.items():
        height, width = load_photo(name).shape[:2]
        assert image.shape == (3, height, width)
        assert image.dtype == torch.float32
        assert float(image.min()) >= 0.0
        assert float(image.max()) <= 1.0


def test_crops_have_contract_shape_and_range():
    for config, side in (("small", 64), ("large", 128)):
        crop = PhotoCrops(config)[0]

        assert crop.shape == (3, side, side)
        assert crop.dtype == torch.float32
        assert float(crop.min()) >= 0.0
        assert float(crop.max()) <= 1.0


def test_crops_are_deterministic_by_seed():
    first = PhotoCrops(64, seed=3)
    again = PhotoCrops(64, seed=3)
    other = PhotoCrops(64, seed=4)

    # Item 7 does not depend on which items were read before it.
    _ = [first[i] for i in range(5)]
    assert torch.equal(first[7], again[7])
    assert first.crop_origin(7) == again.crop_origin(7)
    assert not torch.equal(first[7], other[7])


def test_crop_matches_its_origin():
    dataset = PhotoCrops(32, seed=0)
    for index in range(20):
        name, top, left, flipped = dataset.crop_origin(index)
        expected = load_photo(name)[top : top + 32, left : left + 32]
        if flipped:
            expected = expected[:, ::-1]
        expected = torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255

        assert torch.equal(dataset[index], expected)


def test_crops_cover_photos_and_flips():
    dataset = PhotoCrops(64, seed=0)
    origins = [dataset.crop_origin(i) for i in range(600)]

    assert {name for name, *_ in origins} == set(TRAIN_PHOTOS)
    assert {flipped for *_, flipped in origins} == {True, False}


def test_training_crops_exclude_held_out_photos():
    dataset = PhotoCrops(64, seed=0)

    assert set(dataset.photos).isdisjoint(EVAL_PHOTOS)
    sources = {dataset.crop_origin(i)[0] for i in range(2000)}
    assert sources.isdisjoint(EVAL_PHOTOS)


def test_crops_reject_held_out_photos():
    with pytest.raises(ValueError, match="held out"):
        PhotoCrops(64, photos=("astronaut", "coffee"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_size": "medium"}, "unknown crop configuration 'medium'"),
        ({"crop_size": 0}, "crop_size must be a positive integer"),
        ({"crop_size": 600, "photos": ("astronaut",)}, "does not fit inside astronaut"),
        ({"photos": ()}, "photos is empty"),
    ],
)
def test_crops_reject_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PhotoCrops(**kwargs)


def test_crop_index_out_of_range_raises():
    dataset = PhotoCrops(64, length=10)
    with pytest.raises(IndexError, match="index 10 is out of range"):
        dataset[10]


# ---- rendered text -------------------------------------------------------------------------------


def test_text_images_shape_and_text():
    dataset = TextImages(image_size=96, seed=0)
    for index in range(10):
        image, text = dataset[index]

        assert image.shape == (3, 96, 96)
        assert image.dtype == torch.float32
        assert text.strip()
        assert len(text.split("\n")) <= dataset.max_lines
        # Text pixels differ from the background colour.
        background = torch.tensor(dataset.sample(index).background, dtype=torch.float32) / 255
        assert (image - background[:, None, None]).abs().amax() > 0.3


def test_text_images_are_deterministic_by_seed():
    first, again, other = TextImages(seed=1), TextImages(seed=1), TextImages(seed=2)

    image, text = first[5]
    image_again, text_again = again[5]
    assert torch.equal(image, image_again)
    assert text == text_again
    assert [other[i][1] for i in range(5)] != [first[i][1] for i in range(5)]


def test_text_images_use_several_fonts():
    dataset = TextImages(seed=0)
    fonts = {dataset.sample(i).font.name for i in range(60)}

    assert len(fonts) >= 4
    assert all(name.startswith("DejaVu") for name in fonts)


def test_missing_fonts_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(text_images, "FONT_FOLDER", tmp_path)
    monkeypatch.setattr(text_images.shutil, "which", lambda name: None)

    with pytest.raises(FileNotFoundError, match="fonts-dejavu-core"):
        TextImages()


# ---- procedural shapes -----------------------------------------------------------------------------


def test_shape_images_shape_and_labels():
    dataset = ShapeImages(image_size=48, seed=0)
    labels = []
    for index in range(60):
        image, label = dataset[index]
        labels.append(label)

        assert image.shape == (3, 48, 48)
        assert image.dtype == torch.float32
        assert label == SHAPE_CLASSES.index(dataset.sample(index).shape)

    assert set(labels) == set(range(len(SHAPE_CLASSES)))


def test_shape_centre_has_fill_colour():
    dataset = ShapeImages(image_size=64, seed=0)
    for index in range(20):
        sample = dataset.sample(index)
        image = dataset.render(sample)
        x, y = (int(round(value)) for value in sample.centre)
        expected = torch.tensor(SHAPE_COLOURS[sample.colour], dtype=torch.float32) / 255

        assert torch.allclose(image[:, y, x], expected, atol=0.02), f"item {index} ({sample.shape})"


def test_shape_images_are_deterministic_by_seed():
    first, again, other = ShapeImages(seed=1), ShapeImages(seed=1), ShapeImages(seed=2)

    assert torch.equal(first[9][0], again[9][0])
    assert first[9][1] == again[9][1]
    assert [other.sample(i) for i in range(5)] != [first.sample(i) for i in range(5)]
