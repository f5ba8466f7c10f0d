"""The Beam preprocessing (DirectRunner) gives the examples the in-memory path trains on, read back from TFRecords."""
import json

import numpy as np
import pytest

from tfrs_pipeline.data import beam_pipeline, tfrecords
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.sequence_examples import training_windows
from tfrs_pipeline.data.split import user_sequences

MAX_USERS = 100
MAX_LENGTH = 30  # short windows: most users get several, so their order is tested too
SETTINGS = {"max_length": MAX_LENGTH, "holdout": "test", "max_users": MAX_USERS}


@pytest.fixture(scope="module")
def beam_output(shared_data_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("beam_examples")
    beam_pipeline.run([f"--data_dir={shared_data_dir / 'ml-1m'}", f"--output_dir={output_dir}",
                       "--runner=DirectRunner", f"--max_users={MAX_USERS}", f"--max_length={MAX_LENGTH}",
                       "--num_shards=3", "--chunk_bytes=1000000"])  # several chunks: line numbers cross them
    return output_dir


@pytest.fixture(scope="module")
def movielens_slice(shared_data_dir):
    return load_dataset(shared_data_dir / "ml-1m", max_users=MAX_USERS)


def test_beam_and_in_memory_paths_give_identical_examples(beam_output, movielens_slice):
    sequences = user_sequences(movielens_slice.interactions)
    train = beam_pipeline.retrieval_training_sequences(sequences, "test")
    in_memory = training_windows(train.user_ids, train.item_ids, MAX_LENGTH)

    from_beam = tfrecords.read_training_examples(beam_output, SETTINGS)

    assert list(from_beam) == list(in_memory)
    assert len(from_beam["user_id"]) > 2 * MAX_USERS  # many users span several windows
    for name, values in in_memory.items():
        assert from_beam[name].dtype == values.dtype, name
        np.testing.assert_array_equal(from_beam[name], values, err_msg=name)


def test_held_out_items_never_reach_the_training_examples(beam_output, movielens_slice):
    sequences = user_sequences(movielens_slice.interactions)
    from_beam = tfrecords.read_training_examples(beam_output, SETTINGS)
    for user_id, items in zip(sequences.user_ids, sequences.item_ids):
        rows = from_beam["user_id"] == user_id
        assert from_beam["target_item_ids"][rows][0, -1] == items[-3]  # test and ranking items held out


def test_manifest_and_vocabularies_describe_the_output(beam_output, movielens_slice):
    manifest = json.loads((beam_output / tfrecords.MANIFEST).read_text())
    assert manifest["settings"] == SETTINGS
    assert len(manifest["shards"]) == 3
    user_ids = (beam_output / tfrecords.USER_VOCABULARY).read_text().splitlines()
    item_ids = (beam_output / tfrecords.ITEM_VOCABULARY).read_text().splitlines()
    assert user_ids == [str(user_id) for user_id in range(1, MAX_USERS + 1)]
    rated = set(movielens_slice.interactions["item_id"])
    assert item_ids == [item_id for item_id in movielens_slice.items["item_id"] if item_id in rated]
    assert (manifest["num_users"], manifest["num_items"]) == (len(user_ids), len(item_ids))


def test_train_refuses_examples_made_with_other_settings(beam_output):
    with pytest.raises(DataError, match="max_length=30 but this run uses 50"):
        tfrecords.read_training_examples(beam_output, {**SETTINGS, "max_length": 50})


def test_a_bad_line_is_named_by_its_line_in_the_whole_file(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (data_dir / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adventure\n")
    (data_dir / "ratings.dat").write_text("1::1::5::10\n1::2::3::11\n2::1::4::12\n2::2::x::13\n1::2::4::14\n")
    with pytest.raises(DataError, match=r"ratings.dat:4: field 'user_rating': 'x' is not an integer"):
        beam_pipeline.run([f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'out'}", "--chunk_bytes=16"])
    assert not (tmp_path / "out" / tfrecords.MANIFEST).exists()
