"""The Beam preprocessing (DirectRunner, several workers) gives the examples the in-memory path trains on.

Two data sets: the MovieLens slice, which goes through the adapter into the own-data contract first,
and the made-up shop of the own-data tests (renamed columns, a filter, a time cut, items nobody
bought), read straight from its folder in pieces. Both are compared, read back from TFRecords, with
the windows the in-memory path builds; a run trained from the shop's TFRecords is the same run.
"""
import json

import numpy as np
import pytest

from tfrs_pipeline.config import TwoStageConfig
from tfrs_pipeline.data import beam_pipeline, tfrecords
from tfrs_pipeline.data.dataset import load_dataset
from tfrs_pipeline.data.errors import DataError
from tfrs_pipeline.data.sequence_examples import training_windows
from tfrs_pipeline.data.split import user_sequences
from tfrs_pipeline.pipelines import two_stage
from test_own_data_pipeline import SHOP_RUN, _write_shop

MAX_USERS = 100
MAX_LENGTH = 30  # short windows: most users get several, so their order is tested too
SETTINGS = {"max_length": MAX_LENGTH, "holdout": "test", "max_users": MAX_USERS}
WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]


@pytest.fixture(scope="module")
def beam_output(shared_data_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("beam_examples")
    beam_pipeline.run([f"--data_dir={shared_data_dir / 'ml-1m'}", f"--output_dir={output_dir}",
                       "--runner=DirectRunner", f"--max_users={MAX_USERS}", f"--max_length={MAX_LENGTH}",
                       "--num_shards=3", "--chunk_bytes=1000000", *WORKERS])  # several pieces of the file
    return output_dir


@pytest.fixture(scope="module")
def movielens_slice(shared_data_dir):
    return load_dataset(shared_data_dir / "ml-1m", max_users=MAX_USERS)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop") / "data"
    _write_shop(folder)
    output_dir = tmp_path_factory.mktemp("shop_examples")
    beam_pipeline.run([f"--data_dir={folder}", f"--output_dir={output_dir}", f"--max_length={SHOP_RUN['max_length']}",
                       "--num_shards=2", "--chunk_bytes=2000", *WORKERS])
    return folder, output_dir


def _in_memory_windows(data, max_length):
    train = beam_pipeline.retrieval_training_sequences(user_sequences(data.interactions), "test", data.schema.split)
    return training_windows(train.user_ids, train.item_ids, max_length, train.timestamps)


def _assert_same_examples(from_beam, in_memory):
    assert list(from_beam) == list(in_memory)
    for name, values in in_memory.items():
        assert from_beam[name].dtype == values.dtype, name
        np.testing.assert_array_equal(from_beam[name], values, err_msg=name)


def test_beam_and_in_memory_paths_give_identical_examples(beam_output, movielens_slice):
    from_beam = tfrecords.read_training_examples(beam_output, SETTINGS, timestamps=True)
    assert len(from_beam["user_id"]) > 2 * MAX_USERS  # many users span several windows
    _assert_same_examples(from_beam, _in_memory_windows(movielens_slice, MAX_LENGTH))


def test_held_out_items_never_reach_the_training_examples(beam_output, movielens_slice):
    sequences = user_sequences(movielens_slice.interactions)
    from_beam = tfrecords.read_training_examples(beam_output, SETTINGS)
    for user_id, items in zip(sequences.user_ids, sequences.item_ids):
        rows = from_beam["user_id"] == user_id
        assert from_beam["target_item_ids"][rows][0, -1] == items[-3]  # test and ranking items held out


def test_manifest_and_vocabularies_describe_the_output(beam_output, movielens_slice, shared_data_dir):
    manifest = json.loads((beam_output / tfrecords.MANIFEST).read_text())
    assert manifest["settings"] == SETTINGS
    assert manifest["source"] == str(shared_data_dir / "ml-1m")
    assert len(manifest["shards"]) == 3
    user_ids = (beam_output / tfrecords.USER_VOCABULARY).read_text().splitlines()
    item_ids = (beam_output / tfrecords.ITEM_VOCABULARY).read_text().splitlines()
    assert user_ids == [str(user_id) for user_id in range(1, MAX_USERS + 1)]
    assert item_ids == list(movielens_slice.items["item_id"])  # the catalog, rated or not
    assert (manifest["num_users"], manifest["num_items"]) == (len(user_ids), len(item_ids))


def test_own_data_in_pieces_gives_the_in_memory_examples_and_catalog(shop):
    folder, output_dir = shop
    data = load_dataset(folder)
    manifest = json.loads((output_dir / tfrecords.MANIFEST).read_text())
    settings = {"max_length": SHOP_RUN["max_length"], "holdout": "test", "max_users": None}
    _assert_same_examples(tfrecords.read_training_examples(output_dir, settings, timestamps=True),
                          _in_memory_windows(data, SHOP_RUN["max_length"]))
    assert manifest["num_interactions"] == len(data.interactions)  # after the dataset.yaml filter
    catalog = two_stage.TwoStageInputs.from_data(data).catalog
    assert (output_dir / tfrecords.ITEM_VOCABULARY).read_text().splitlines() == list(catalog.item_ids)


def test_training_from_the_shops_tfrecords_is_the_in_memory_run(shop, tmp_path):
    folder, output_dir = shop
    settings = dict(SHOP_RUN, epochs=1, new_users_share=0.2)  # the set-aside users are in the files, unused
    runs = [two_stage.run(TwoStageConfig(data_dir=str(folder), export_dir=str(tmp_path / name), **settings,
                                         examples_dir=examples_dir))
            for name, examples_dir in (("in_memory", None), ("from_tfrecords", str(output_dir)))]
    assert runs[0]["training"]["retrieval"] == runs[1]["training"]["retrieval"]
    assert runs[0]["evaluation"] == runs[1]["evaluation"]
    assert runs[0]["cold_start"] == runs[1]["cold_start"]


def test_train_refuses_examples_made_with_other_settings(beam_output):
    with pytest.raises(DataError, match="max_length=30 but this run uses 50"):
        tfrecords.read_training_examples(beam_output, {**SETTINGS, "max_length": 50})


def test_train_refuses_examples_written_before_they_held_the_times_and_says_what_to_do(beam_output, tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    manifest = json.loads((beam_output / tfrecords.MANIFEST).read_text())
    (older / tfrecords.MANIFEST).write_text(json.dumps({**manifest, "format": "tfrs_pipeline.training_windows/2"}))
    with pytest.raises(DataError, match=r"format.*/2.*is not.*/3.*preprocess the data again"):
        tfrecords.read_training_examples(older, SETTINGS)


def test_a_bad_line_is_named_by_its_line_in_the_whole_file(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "interactions.csv").write_text("user_id,item_id,timestamp\n1,a,10\n1,b,11\n2,a,12\n2,b,yesterday\n"
                                               "1,c,14\n")
    with pytest.raises(DataError, match=r"interactions.csv:5: field 'timestamp': 'yesterday' is not a time"):
        beam_pipeline.run([f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'out'}", "--chunk_bytes=16"])
    assert not (tmp_path / "out" / tfrecords.MANIFEST).exists()


def test_a_movielens_error_is_the_adapters(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (data_dir / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adventure\n")
    (data_dir / "ratings.dat").write_text("1::1::5::10\n1::2::3::11\n2::1::4::12\n2::2::x::13\n1::2::4::14\n")
    with pytest.raises(DataError, match=r"ratings.dat:4: field 'user_rating': 'x' is not an integer"):
        beam_pipeline.run([f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'out'}"])


def test_a_time_cut_by_share_is_refused_with_the_fix(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "interactions.csv").write_text("user_id,item_id,timestamp\n1,a,10\n1,b,11\n")
    (data_dir / "dataset.yaml").write_text("split: {kind: time_cut, test_share: 0.2}\n")
    with pytest.raises(DataError, match="a time_cut needs its test_start"):
        beam_pipeline.run([f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'out'}"])
