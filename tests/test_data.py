"""Dataset parsers on small files in the real formats, checksums, splits, augmentation."""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest
import torch

from jfb.data import DATASETS, Augmentation, Normalizer, augment_batch, batches, dataset_info, load_splits
from jfb.data.checksum import ChecksumError, md5sum, verify_md5
from jfb.data.cifar10 import parse_cifar_archive
from jfb.data.download import fetch
from jfb.data.mnist import read_idx
from jfb.data.svhn import parse_svhn_mat


def test_svhn_mat_parser(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [9], [10]], dtype=np.uint8)  # SVHN stores the digit 0 as 10
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    images, labels = parse_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 9, 0]
    assert torch.equal(images[3], torch.from_numpy(X[:, :, :, 3].transpose(2, 0, 1)))


def _cifar_records(labels, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1), pixels


def test_cifar_binary_parser(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    expected = {}
    with tarfile.open(path, "w:gz") as archive:
        for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
            records, pixels = _cifar_records([i % 10, (i + 3) % 10], seed=i)
            expected[name] = pixels
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = records.nbytes
            archive.addfile(info, io.BytesIO(records.tobytes()))
    images, labels = parse_cifar_archive(path, "train")
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [0, 3, 1, 4, 2, 5, 3, 6, 4, 7]
    assert torch.equal(images[2].reshape(-1), torch.from_numpy(expected["data_batch_2.bin"][0]))
    test_images, test_labels = parse_cifar_archive(path, "test")
    assert test_images.shape == (2, 3, 32, 32) and test_labels.tolist() == [5, 8]


def test_idx_parser_and_truncation(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + data.tobytes())
    assert np.array_equal(read_idx(tmp_path / "x.gz"), data)
    (tmp_path / "bad").write_bytes(header + data.tobytes()[:-1])
    with pytest.raises(ValueError, match="IDX header promises"):
        read_idx(tmp_path / "bad")


def test_checksum_mismatch_names_file_and_expected_sum(tmp_path):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(b"not the real file")
    with pytest.raises(
        ChecksumError, match=r"train_32x32.mat: MD5 checksum mismatch \(expected e26dedcc434d2e4c54c9b2d4a06d8373"
    ):
        verify_md5(path, "e26dedcc434d2e4c54c9b2d4a06d8373")


def test_missing_file_offline_says_what_to_put_where(tmp_path):
    url = (tmp_path / "nowhere" / "test_32x32.mat").as_uri()  # a URL that cannot be fetched, no network involved
    with pytest.raises(FileNotFoundError, match=r"test_32x32.mat is not in .*svhn.*put it there.*JFB_DATA_DIR"):
        fetch(url, "0" * 32, tmp_path / "svhn")


def test_fetch_uses_present_file_and_checks_it(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"abc")
    assert fetch("file:///unused/f.bin", md5sum(tmp_path / "f.bin"), tmp_path) == tmp_path / "f.bin"


def test_mnist_splits_are_deterministic_and_disjoint():
    train, val, test = load_splits("mnist", seed=0)
    assert (len(train), len(val), len(test)) == (55_000, 5_000, 10_000)
    _, val2, _ = load_splits("mnist", seed=0)
    assert torch.equal(val.labels, val2.labels) and torch.equal(val.images[:50], val2.images[:50])
    assert train.images.dtype == torch.uint8

    def images(split):
        return {image.numpy().tobytes() for image in split.images}

    seen = [images(train), images(val), images(test)]  # MNIST holds no duplicate image (70,000 distinct)
    assert [len(s) for s in seen] == [55_000, 5_000, 10_000]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    _, other_val, _ = load_splits("mnist", seed=1)
    assert images(other_val) != seen[1]  # the seed chooses the validation set


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of mnist, svhn, cifar10"):
        dataset_info("imagenet")


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_shifts_and_optionally_flips_whole_batches(flip):
    g = torch.Generator().manual_seed(0)
    images = torch.arange(64 * 3 * 8 * 8, dtype=torch.int64).reshape(64, 3, 8, 8).to(torch.uint8)
    out = augment_batch(images, g, Augmentation(2, flip=flip))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # each output is a shifted (and, only with flip, possibly mirrored) window of the zero-padded input
    padded = torch.nn.functional.pad(images, (2,) * 4)
    mirrored = 0
    for i in range(64):
        windows = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirror = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or (flip and mirror)
        mirrored += not plain
    assert (mirrored > 10) if flip else mirrored == 0


def test_digits_are_never_mirrored():
    assert not DATASETS["mnist"].augmentation.flip and not DATASETS["svhn"].augmentation.flip
    assert DATASETS["cifar10"].augmentation == Augmentation(4, flip=True)  # the paper's


def test_normalised_batches_and_no_test_augmentation(monkeypatch):
    info = DATASETS["mnist"]
    _, _, test = load_splits("mnist")
    x1, _ = next(batches(test.subset(200), 100, Normalizer(info.mean, info.std)))
    x2, _ = next(batches(test.subset(200), 100, Normalizer(info.mean, info.std)))
    assert torch.equal(x1, x2) and x1.shape == (100, 1, 28, 28)
    assert abs(float(x1.mean())) < 0.2 and 0.8 < float(x1.std()) < 1.3
    # the evaluation path itself: evaluate() of an augmented run asks for unaugmented, unshuffled batches
    from training import config_of

    import jfb.train.evaluation as evaluation
    from jfb.train.setup import build_from_config, input_normalizer

    calls = []
    monkeypatch.setattr(evaluation, "batches", lambda *args, **kwargs: calls.append(kwargs) or batches(*args, **kwargs))
    config = config_of(augment=True, limit_test=200, batch_size=100, solver="picard", tol=None, max_iter=2)
    model = build_from_config(config)
    evaluation.evaluate(model, test.subset(200), config, input_normalizer(config))
    assert len(calls) == 1 and calls[0].get("augment") is None and calls[0].get("shuffle_seed") is None
    assert not model.training


def test_rotation_augmentation_turns_images_about_their_centre():
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 13:15, 4:24] = 255  # a horizontal bar through the centre
    out = augment_batch(images, torch.Generator().manual_seed(0), Augmentation(0, flip=False, rotation=30))
    again = augment_batch(images, torch.Generator().manual_seed(0), Augmentation(0, flip=False, rotation=30))
    assert out.dtype == torch.uint8 and torch.equal(out, again)  # reproducible from the batch's seed
    assert (out[:, :, 13:15, 13:15] > 200).all()  # the centre stays put
    mass = out.float().sum(dim=(1, 2, 3)) / images.float().sum(dim=(1, 2, 3))
    assert ((mass > 0.9) & (mass < 1.1)).all()  # nothing falls off the image
    rows_hit = (out[:, 0] > 100).any(dim=2).sum(dim=1)  # a tilted bar spans more rows than the 2 of a flat one
    assert (rows_hit > 2).float().mean() > 0.8 and rows_hit.max() <= 12  # |angle| <= 30 degrees: tan(30) * 20 < 12
    assert torch.equal(augment_batch(images, torch.Generator().manual_seed(0), Augmentation(0, flip=False)), images)
