"""ImageShardLoader: Petastorm ndarray fields decoded exactly, sharded by rank, shuffled
deterministically; broken input named."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.image_loader import ImageShardLoader


def _write(root, n: int, files: int = 3, shape=(8, 8)) -> np.ndarray:
    """``files`` Parquet files of images in Petastorm's NdarrayCodec encoding; the images."""
    from petastorm.codecs import NdarrayCodec
    from petastorm.unischema import UnischemaField

    field = UnischemaField("image", np.float64, shape, NdarrayCodec(), False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 17, size=(n, *shape)).astype(np.float64)
    root.mkdir(parents=True, exist_ok=True)
    for f, rows in enumerate(np.array_split(np.arange(n), files)):
        table = pa.table({"image_id": pa.array(rows, pa.int32()),
                          "image": pa.array([bytes(NdarrayCodec().encode(field, images[i])) for i in rows]),
                          "label": pa.array(rows % 10, pa.int32())})
        pq.write_table(table, root / f"part-{f:05d}.parquet")
    return images


def test_every_image_once_across_ranks_decoded_exactly(tmp_path):
    images = _write(tmp_path / "train", 90)
    seen = {}
    for rank in range(2):
        loader = ImageShardLoader(f"file://{tmp_path / 'train'}", "image", "label", rank=rank, size=2,
                                  batch_size=16, shuffle=False, scale=16.0)
        for x, y in loader.epoch(0):
            assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
            for img, label in zip(x, y):
                key = img.numpy().tobytes()
                assert key not in seen
                seen[key] = int(label)
    assert len(seen) == 90
    expected = {(images[i] / 16.0).astype(np.float32).tobytes(): i % 10 for i in range(90)}
    assert seen == expected


def test_shuffle_is_fixed_by_seed_epoch_and_rank(tmp_path):
    _write(tmp_path / "train", 60, files=2)
    url = f"file://{tmp_path / 'train'}"

    def order(seed: int, epoch: int) -> list[int]:
        loader = ImageShardLoader(url, "image", "label", batch_size=7, seed=seed)
        return [int(v) for _, y in loader.epoch(epoch) for v in y]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == sorted(order(2, 3))  # the same rows, another order
    # the stream is the one ShardLoader draws its row-group order from, kept across numpy releases
    from training.scatter import permutation

    expected = permutation(np.random.Generator(np.random.PCG64([1, 0, 0])), 60) % 10  # label = row % 10
    assert order(1, 0) == expected.tolist()


def test_mixed_image_shapes_are_refused_with_the_field_named(tmp_path):
    _write(tmp_path / "train", 10, files=1)
    _write(tmp_path / "other", 10, files=1, shape=(4, 4))
    (tmp_path / "other" / "part-00000.parquet").rename(tmp_path / "train" / "part-00001.parquet")
    loader = ImageShardLoader(f"file://{tmp_path / 'train'}", "image", "label")
    assert loader.num_rows == 20  # from the footers: nothing is read before the first epoch
    with pytest.raises(ValueError, match=r"'image': expected 2-D images of one shape"):
        next(loader.epoch(0))


def test_digits_model_predict_accepts_the_usual_shapes_and_names_a_wrong_one():
    """scikit-learn's flat ``digits.data`` and its ``digits.images`` give the same classes; an
    image of another size is refused with the argument, its shape and the shapes accepted, not
    a torch error from deep inside the network."""
    import numpy as np
    import pytest
    import torch

    from training.digits_model import DigitsModel, build_cnn

    torch.manual_seed(0)
    model = DigitsModel(build_cnn(8, [4], [8], 10), side=8, scale=16.0, channels=[4], hidden=[8], classes=10)
    images = np.random.default_rng(0).integers(0, 17, size=(5, 8, 8)).astype(np.float64)
    expected = model.predict(images)
    assert expected.shape == (5,)
    assert torch.equal(model.predict(images.reshape(5, 64)), expected)
    assert torch.equal(model.predict(images[:, None]), expected)
    for bad in (np.zeros((3, 16, 16)), np.zeros((8, 8)), np.zeros((2, 63))):
        with pytest.raises(ValueError, match=r"images: shape \[.*\] is not a batch of 8x8 grey images; pass"):
            model.predict(bad)


def test_wrong_or_mistyped_columns_are_refused_when_the_loader_is_made(tmp_path):
    """A wrong field name failed only at the first batch (after horovodrun, bind and the
    checkpoint set-up), as a bare KeyError or TypeError."""
    _write(tmp_path / "train", 12, files=1)
    url = f"file://{tmp_path / 'train'}"
    for image, label, said in (("img", "label", r"columns \['img'\] are not in the dataset"),
                               ("image", "digit", r"columns \['digit'\] are not in the dataset"),
                               ("image_id", "label", r"column 'image_id' is int32: the image must be a column of "
                                                     r"encoded images"),
                               ("image", "image", r"name one column"),
                               ("image", "image", r"image='image' and label='image'")):
        with pytest.raises(ValueError, match=said):
            ImageShardLoader(url, image, label)
    (tmp_path / "s").mkdir()
    pq.write_table(pa.table({"image": pa.array([b"x"]), "label": pa.array(["seven"])}), tmp_path / "s" / "p.parquet")
    with pytest.raises(ValueError, match=r"column 'label' is string: the label must be an integer class column"):
        ImageShardLoader(f"file://{tmp_path / 's'}", "image", "label")
