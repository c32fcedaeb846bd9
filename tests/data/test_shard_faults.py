"""A shard deleted, cut or changed while training reads it: an error naming the shard and the sample,
never a silently different sample. Every member carries its CRC-32 in a pax header record."""

from __future__ import annotations

import tarfile
import zlib

import pytest
from test_loader import detection_record, loader_config, write_shard_set

from ovdet.data.loader import ShardSampleDataset, TrainLoader, open_shard_sets
from ovdet.data.shards import CRC_RECORD, index_tar
from ovdet.errors import OvdetError


@pytest.fixture
def shards(tmp_path):
    return write_shard_set(tmp_path / "shards", {"a": (1.0, [detection_record("a", i) for i in range(10)])})


def dataset_of(shard_dir) -> ShardSampleDataset:
    cfg = loader_config()
    return ShardSampleDataset(open_shard_sets([shard_dir], cfg), cfg)


def first_shard(shard_dir):
    return shard_dir / "a" / "a-000000.tar"


def stream_index_of(dataset: ShardSampleDataset, key: str) -> int:
    """The first global stream position that reads sample ``key``."""
    return next(k for k in range(10 * len(dataset)) if dataset.locations[0][dataset.stream.locate(k)[1]][1].key == key)


def test_every_member_carries_its_crc32_and_plain_tar_readers_still_read_the_shard(shards):
    with tarfile.open(first_shard(shards)) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    assert [info.name for info, _ in members][:2] == ["a-0.jpg", "a-0.json"] and len(members) == 10
    assert all(info.pax_headers[CRC_RECORD] == f"{zlib.crc32(data):08x}" for info, data in members)
    import webdataset

    keys = [sample["__key__"] for sample in webdataset.WebDataset(str(first_shard(shards)), shardshuffle=False)]
    assert keys == [f"a-{i}" for i in range(5)]


@pytest.mark.parametrize("member", ["jpg", "json"])
def test_a_byte_changed_in_a_read_sample_is_an_error_naming_the_shard_and_the_sample(shards, member):
    dataset = dataset_of(shards)
    location = index_tar(first_shard(shards))[2]
    offset = location.jpg_offset + 100 if member == "jpg" else location.json_offset + 3
    with open(first_shard(shards), "r+b") as stream:  # in place, same size: as a bad disk or a rewrite would
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(OvdetError, match=f"a-000000.tar: sample a-2: a-2.{member} does not match its CRC-32"):
        dataset[stream_index_of(dataset, "a-2")]
    dataset[stream_index_of(dataset, "a-3")]  # the other samples still read


def test_a_shard_cut_short_after_indexing_is_an_error(shards):
    dataset = dataset_of(shards)
    path = first_shard(shards)
    path.write_bytes(path.read_bytes()[: index_tar(path)[3].jpg_offset + 10])
    with pytest.raises(OvdetError, match=r"sample a-4: a-4.jpg is cut short \(0 of"):
        dataset[stream_index_of(dataset, "a-4")]


def test_a_shard_deleted_before_this_process_opened_it_is_an_error(shards):
    dataset = dataset_of(shards)
    first_shard(shards).unlink()
    with pytest.raises(OvdetError, match="a-000000.tar: sample a-0: cannot read the shard: No such file"):
        dataset[stream_index_of(dataset, "a-0")]


def test_a_shard_deleted_after_it_was_opened_still_gives_its_own_samples(shards):
    """Linux keeps an open file's bytes until it is closed: the samples read are the right ones."""
    dataset = dataset_of(shards)
    k = stream_index_of(dataset, "a-1")
    before = dataset[k]
    first_shard(shards).unlink()
    after = dataset[k]
    assert before["image"].equal(after["image"]) and before["texts"] == after["texts"]


def test_a_shard_missing_when_training_starts_is_an_error_naming_it(shards):
    first_shard(shards).unlink()
    with pytest.raises(OvdetError, match="a-000000.tar: cannot index shard: No such file"):
        dataset_of(shards)


def test_a_worker_process_error_reaches_the_trainer_as_the_workers_one_line(shards):
    loader = TrainLoader([shards], loader_config(num_workers=1, batch_size=10))
    with open(first_shard(shards), "r+b") as stream:
        stream.seek(index_tar(first_shard(shards))[0].jpg_offset + 50)
        stream.write(b"\x00\x01\x02")
    with pytest.raises(OvdetError) as caught:
        list(loader.iterate(1))
    assert "\n" not in str(caught.value) and "a-000000.tar: sample a-0: a-0.jpg does not match its CRC-32" in str(
        caught.value
    )
