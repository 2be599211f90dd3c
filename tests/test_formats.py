"""The readers of each real file format, on small files written here."""

import numpy as np
import pytest
import torch

from conftest import (class_pattern_images, save_png, write_cifar10, write_cifar100,
                      write_fashion_mnist)
from implicit_sparsity.data import formats, load_dataset
from implicit_sparsity.errors import DatasetNotFoundError


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_fashion_loader(tmp_path, gz):
    folder = write_fashion_mnist(tmp_path / "f", n_train=50, n_test=20, gz=gz)
    data = load_dataset("fashion-mnist", folder)
    assert (data.num_train, data.num_test, data.in_channels, data.image_size) == (50, 20, 1, 28)
    images, labels = class_pattern_images(50, 10, 1, 28, 0)
    assert np.array_equal(data.train_images.numpy(), images)
    assert np.array_equal(data.train_labels.numpy(), labels)


def test_idx_header_is_big_endian(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    array = np.arange(2 * 3 * 300, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 300)
    formats.write_idx(path, array)
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[12:16] == (300).to_bytes(4, "big")
    assert np.array_equal(formats.read_idx(path), array)


def test_idx_rejects_other_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX"):
        formats.read_idx(path)


def test_cifar10_pickles(tmp_path):
    write_cifar10(tmp_path, per_batch=8, n_test=10)
    data = load_dataset("cifar10", tmp_path)  # the parent folder is found too
    assert (data.num_train, data.num_test, data.in_channels) == (40, 10, 3)
    first, labels = class_pattern_images(8, 10, 3, 32, 1)
    assert np.array_equal(data.train_images[:8].numpy(), first)
    assert np.array_equal(data.train_labels[:8].numpy(), labels)


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path, n_train=30, n_test=10)
    data = load_dataset("cifar100", tmp_path / "cifar-100-python")
    _, labels = class_pattern_images(30, 100, 3, 32, 0)
    assert np.array_equal(data.train_labels.numpy(), (labels * 7) % 100)
    assert data.num_classes == 100


def write_tinyimagenet(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    images, labels = class_pattern_images(9, 3, 3, 64, 0)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(root / "train" / wnids[label] / "images" / f"{wnids[label]}_{i}.png", image)
    val_lines = []
    for i, (image, label) in enumerate(zip(images[:6], labels[:6])):
        save_png(root / "val" / "images" / f"val_{i}.png", image)
        val_lines.append(f"val_{i}.png\t{wnids[label]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(val_lines) + "\n")
    return root, images, labels


def test_tinyimagenet_layout(tmp_path):
    _, images, labels = write_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert (data.num_train, data.num_test, data.image_size) == (9, 6, 64)
    assert sorted(data.train_labels.tolist()) == sorted(labels.tolist())
    assert data.test_labels.tolist() == labels[:6].tolist()
    # PNG is lossless: the pixels come back exactly
    order = np.argsort(labels, kind="stable")
    assert np.array_equal(data.train_images.numpy(), images[order])


def test_decoded_images_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    from implicit_sparsity.data import image_cache

    root, images, labels = write_tinyimagenet(tmp_path)
    first = load_dataset("tinyimagenet", tmp_path)
    cached = sorted(image_cache.cache_dir().glob("*.npy"))
    assert [p.name.split("-")[:2] for p in cached] == [["tinyimagenet", "train"],
                                                       ["tinyimagenet", "val"]]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")
    with monkeypatch.context() as patch:
        patch.setattr(formats, "load_image", no_decoding)
        again = load_dataset("tinyimagenet", tmp_path)
        assert torch.equal(again.train_images, first.train_images)
        assert torch.equal(again.test_images, first.test_images)
        # a changed image is decoded afresh (the whole split: its key changed)
        changed = next((root / "val" / "images").glob("*.png"))
        save_png(changed, 255 - images[0])
        with pytest.raises(AssertionError, match="decoded although cached"):
            load_dataset("tinyimagenet", tmp_path)
    assert len(list(image_cache.cache_dir().glob("*.npy"))) == 2
    fresh = load_dataset("tinyimagenet", tmp_path)
    assert len(list(image_cache.cache_dir().glob("*.npy"))) == 3
    assert not torch.equal(fresh.test_images, first.test_images)


def test_an_unwritable_cache_still_serves_the_data(tmp_path, monkeypatch):
    from implicit_sparsity.data import image_cache

    write_tinyimagenet(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("IMPLICIT_SPARSITY_CACHE", str(blocker / "cache"))
    assert load_dataset("tinyimagenet", tmp_path).num_train == 9
    assert not image_cache.keep(np.zeros(3, np.uint8), blocker / "cache" / "x.npy")


def test_the_image_cache_can_be_turned_off(tmp_path, monkeypatch):
    from implicit_sparsity.data import image_cache

    write_tinyimagenet(tmp_path)
    monkeypatch.setenv("IMPLICIT_SPARSITY_CACHE", "off")
    assert image_cache.cache_dir() is None
    assert load_dataset("tinyimagenet", tmp_path).num_train == 9


def test_objectnet3d_class_folders_are_resized_to_64(tmp_path):
    root = tmp_path / "renders"
    images, labels = class_pattern_images(6, 2, 3, 80, 0)
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(root / ("train" if i < 4 else "val") / f"class{label}" / f"{i}.png", image)
    data = load_dataset("objectnet3d", root)
    assert (data.num_train, data.num_test, data.image_size) == (4, 2, 64)
    assert data.train_labels.tolist() == [0, 0, 1, 1]


def test_imagenet_class_folders_stream_224_crops(tmp_path):
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for label in ("n001", "n002"):
            for i in range(n):
                save_png(root / split / label / f"{i}.png",
                         rng.integers(0, 255, (3, 300, 260), dtype=np.uint8))
    data = load_dataset("imagenet", root, num_workers=0)
    from implicit_sparsity.data import Augmentation

    batches = list(data.train_batches(4, seed=0, aug=Augmentation()))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    test = list(data.test_batches(10))
    assert tuple(test[0][0].shape) == (4, 3, 224, 224)
    assert test[0][1].tolist() == [0, 0, 1, 1]


def test_missing_dataset_names_where_it_looked(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("cifar10", tmp_path / "nowhere")
    message = str(error.value)
    assert "nowhere" in message and "cifar-10-python.tar.gz" in message


def test_subsets_are_fixed_by_their_seed(tmp_path):
    folder = write_fashion_mnist(tmp_path / "f", n_train=100, n_test=40)
    a = load_dataset("fashion-mnist", folder, train_subset=30, test_subset=10)
    b = load_dataset("fashion-mnist", folder, train_subset=30, test_subset=10)
    c = load_dataset("fashion-mnist", folder, train_subset=30, subset_seed=1)
    assert a.num_train == 30 and a.num_test == 10
    assert np.array_equal(a.train_images.numpy(), b.train_images.numpy())
    assert not np.array_equal(a.train_images.numpy(), c.train_images.numpy())


def test_small_images_are_zero_padded_for_vgg(tmp_path):
    folder = write_fashion_mnist(tmp_path / "f", n_train=20, n_test=10)
    data = load_dataset("fashion-mnist", folder, min_size=32)
    assert data.image_size == 32
    images, _ = class_pattern_images(20, 10, 1, 28, 0)
    assert np.array_equal(data.train_images[:, :, 2:30, 2:30].numpy(), images)
    assert data.train_images[:, :, :2].sum() == 0 and data.train_images[:, :, :, 30:].sum() == 0


def test_a_class_subset_keeps_the_first_classes_only(tmp_path):
    from conftest import write_fashion_mnist
    from implicit_sparsity.data import load_dataset
    from implicit_sparsity.train import TrainConfig, train

    folder = write_fashion_mnist(tmp_path / "f", n_train=100, n_test=40)
    data = load_dataset("fashion-mnist", folder, classes=3)
    assert data.num_train == 30 and data.num_test == 12  # labels cycle through 10 classes
    run = train(TrainConfig(data_dir=str(folder), width="0.0625", epochs=[1], class_subset=3,
                            batch_size=10), tmp_path / "run", verbose=False)
    assert run.model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
