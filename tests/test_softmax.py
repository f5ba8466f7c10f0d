"""The retrieval losses: the hand-fused whole-catalog softmax against TensorFlow's, and the sampled corrections."""
import numpy as np
import pytest
import tensorflow as tf

from tfrs_pipeline.models.sampled_softmax import MixedNegativeSoftmax, ReadHistory, full_softmax_cross_entropy
from tfrs_pipeline.models.session import PrefixRepeats


def _loss_and_gradients(loss_fn, *inputs):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = loss_fn(*inputs)
    return loss, tape.gradient(loss, inputs)


@pytest.mark.parametrize("with_bonus", [False, True])
def test_fused_loss_equals_the_library_op(with_bonus):
    rng = np.random.default_rng(0)
    queries = tf.constant(rng.normal(size=(40, 8)) * 3, tf.float32)  # large logits: must stay finite
    items = tf.constant(rng.normal(size=(25, 8)) * 3, tf.float32)
    labels = tf.constant(rng.integers(0, 25, 40))
    bonus = tf.constant(rng.normal(size=(40, 25)), tf.float32) if with_bonus else tf.zeros([40, 25])

    def library(queries, items, bonus):
        logits = tf.matmul(queries, items, transpose_b=True) + bonus
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def fused(queries, items, bonus):
        return full_softmax_cross_entropy(queries, items, labels, bonus if with_bonus else None)

    expected_loss, expected_gradients = _loss_and_gradients(library, queries, items, bonus)
    loss, gradients = _loss_and_gradients(fused, queries, items, bonus)
    assert np.isfinite(loss.numpy()) and np.isclose(loss.numpy(), expected_loss.numpy(), rtol=1e-5)
    compared = gradients if with_bonus else gradients[:2]
    for gradient, expected in zip(compared, expected_gradients):
        np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    if not with_bonus:
        assert gradients[2] is None  # an absent bonus is not an input of the loss


def test_whole_catalog_loss_skips_the_unknown_item_row():
    rng = np.random.default_rng(1)
    catalog = tf.constant(rng.normal(size=(11, 4)), tf.float32)  # row 0: the unknown item
    queries = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    positives = tf.constant([1, 2, 3, 10, 10, 5], tf.int64)
    softmax = MixedNegativeSoftmax(np.r_[0, np.ones(10)], num_negatives=None)
    logits = tf.matmul(queries, catalog[1:], transpose_b=True)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives - 1, logits=logits)
    assert np.isclose(softmax.loss(queries, positives, catalog).numpy(), tf.reduce_mean(expected).numpy(), rtol=1e-6)


def test_the_popularity_adjustment_adds_its_log_counts_to_each_training_logit():
    rng = np.random.default_rng(2)
    counts = np.r_[0, rng.integers(0, 500, 10)]
    catalog = tf.constant(rng.normal(size=(11, 4)), tf.float32)
    queries = tf.constant(rng.normal(size=(6, 4)), tf.float32)
    positives = tf.constant([1, 2, 3, 10, 10, 5], tf.int64)

    def library(queries, catalog):
        logits = tf.matmul(queries, catalog[1:], transpose_b=True) + 0.5 * np.log1p(counts[1:]).astype(np.float32)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives - 1, logits=logits))

    def adjusted(queries, catalog):
        return MixedNegativeSoftmax(counts, None, popularity_adjustment=0.5).loss(queries, positives, catalog)

    expected_loss, expected_gradients = _loss_and_gradients(library, queries, catalog)
    loss, gradients = _loss_and_gradients(adjusted, queries, catalog)
    assert np.isclose(loss.numpy(), expected_loss.numpy(), rtol=1e-6)
    for gradient, expected in zip(gradients, expected_gradients):
        np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    unadjusted = MixedNegativeSoftmax(counts, None).loss(queries, positives, catalog)
    assert not np.isclose(unadjusted.numpy(), loss.numpy())


def test_sampled_positive_is_corrected_for_sampling_unless_it_is_one_of_the_rows_own_items():
    """A repeat is always scored (the row's own items compete exactly), so like them it gets no logQ term.

    Correcting it anyway lifts every repeat by -log P(drawn) during training only, which taught the
    repeat bonus to be too small for serving (DIGINETICA P@20 0.5025 -> 0.5065 once fixed).
    """
    rng = np.random.default_rng(2)
    catalog = tf.constant(rng.normal(size=(6, 4)), tf.float32)  # items 1..5; row 0 is the unknown item
    queries = tf.constant(rng.normal(size=(2, 4)), tf.float32)
    counts = np.array([0.0, 50, 30, 10, 5, 5])
    softmax = MixedNegativeSoftmax(counts, num_negatives=4)  # 2 in-batch draws, 2 uniform
    history = tf.constant([[0, 2, 3]], tf.int64)  # one left-padded window: item 2, then item 3
    has_target = tf.constant([[False, True, True]])  # two queries: after item 2, after items 2 and 3
    bonus = tf.constant([0.5, 0.25, 0.0])  # by clicks ago
    repeats = PrefixRepeats(history, has_target, bonus)
    positives = tf.constant([4, 2], tf.int64)  # a new item, then a repeat of item 2 (clicked 1 ago)
    logits, labels = softmax.sampled_logits(queries, positives, catalog, repeats)
    dot = tf.reduce_sum(queries * tf.gather(catalog, positives), axis=1).numpy()
    draw_probability_of_4 = 1 - (1 - 5 / 100) ** 2 * (1 - 1 / 5) ** 2
    np.testing.assert_allclose(logits[:, 0].numpy(), [dot[0] - np.log(draw_probability_of_4), dot[1] + 0.25],
                               rtol=1e-5)
    assert labels.numpy().tolist() == [0, 0]


def test_a_sampled_step_embeds_only_the_rows_it_reads_and_trains_as_the_whole_catalog_would(shared_data_dir):
    """The retrieval step embeds its histories', targets' and negatives' items only (the catalog's embedding
    per step grew with the catalog); its loss and every gradient equal those of the whole catalog's embedding."""
    from tfrs_pipeline.data.dataset import load_dataset
    from tfrs_pipeline.data.sequence_examples import training_windows
    from tfrs_pipeline.data.split import leave_last_out, user_sequences
    from tfrs_pipeline.features.arrays import examples_as_tensors
    from tfrs_pipeline.models.item_tower import ItemTower
    from tfrs_pipeline.models.query_tower import QueryTower
    from tfrs_pipeline.models.retrieval import RetrievalModel
    from tfrs_pipeline.pipelines.two_stage import TwoStageInputs

    inputs = TwoStageInputs.from_data(load_dataset(shared_data_dir / "ml-1m", max_users=30))
    train, _ = leave_last_out(user_sequences(inputs.data.interactions))
    examples = training_windows(train.user_ids, train.item_ids, 16)
    batch = examples_as_tensors({**{name: values[:24] for name, values in examples.items()},
                                 **inputs.users.lookup(examples["user_id"][:24])})
    schema = inputs.data.schema.features
    item_tower = ItemTower(list(inputs.catalog.item_ids), inputs.item_features, schema.item_features, 8)
    query_tower = QueryTower(item_tower, 16, 8, schema.user_features, inputs.users.lookup(train.user_ids),
                             num_blocks=1, num_heads=2, dropout=0.0)
    model = RetrievalModel(query_tower, inputs.catalog.counts(train.item_ids), num_negatives=64)

    read_rows = tf.constant([0, 5, 5, 17, 3000])
    rows = item_tower.embed_catalog_rows(read_rows).numpy()
    whole = item_tower.embed_catalog().numpy()
    np.testing.assert_allclose(rows[[0, 5, 17, 3000]], whole[[0, 5, 17, 3000]], rtol=1e-6)
    assert not rows[np.setdiff1d(np.arange(len(rows)), [0, 5, 17, 3000])].any()

    def whole_catalog_loss():  # the step as it was: every catalog row embedded, the same negatives drawn first
        targets = batch["target_item_ids"]
        has_target = tf.not_equal(targets, "")
        positives = tf.boolean_mask(item_tower.indices(targets), has_target)
        negatives = model._softmax.draw_negatives(positives)
        catalog = item_tower.embed_catalog()
        queries = tf.boolean_mask(query_tower.sequence_embeddings(batch, True, catalog), has_target)
        return model._softmax.loss(queries, positives, catalog, negatives=negatives)

    results = []
    for loss_fn in (lambda: model.compute_loss(batch, training=True), whole_catalog_loss):
        tf.random.set_seed(7)  # the same negatives in both
        with tf.GradientTape() as tape:
            loss = loss_fn()
        gradients = tape.gradient(loss, model.trainable_variables)
        results.append((loss.numpy(), [tf.convert_to_tensor(gradient).numpy() for gradient in gradients]))
    (loss, gradients), (expected_loss, expected_gradients) = results
    assert np.isclose(loss, expected_loss, rtol=1e-5)
    assert len(gradients) == len(expected_gradients) > 5
    for gradient, expected in zip(gradients, expected_gradients):
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)



def test_each_row_reads_the_items_of_its_window_up_to_its_slot():
    history = tf.constant([[0, 0, 4, 7, 4], [3, 5, 6, 2, 9]], tf.int64)  # left-padded windows of catalog indices
    has_target = tf.constant([[False, False, True, True, True], [True, True, False, True, True]])
    read = ReadHistory(history, has_target)
    # The whole catalog (indices 1..9 are columns 0..8). Rows are the slots with a target, row-major.
    mask = read.mask(tf.range(-1, 9, dtype=tf.int64), 9).numpy()
    assert [(np.flatnonzero(row) + 1).tolist() for row in mask] == [
        [4], [4, 7], [4, 7],  # the first window's slots 2, 3 and 4 (4 read twice)
        [3], [3, 5], [2, 3, 5, 6], [2, 3, 5, 6, 9]]  # the second's slots 0, 1, 3, 4 (slot 2 has no row)
    # Drawn negatives 4 and 2 as columns 0 and 1: only they are masked.
    column_of_item = tf.constant([-1, -1, 1, -1, 0, -1, -1, -1, -1, -1], tf.int64)
    assert read.mask(column_of_item, 2).numpy().astype(int).tolist() == [
        [1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 1], [0, 1]]


@pytest.mark.parametrize("with_bonus", [False, True])
def test_read_items_do_not_compete_in_the_whole_catalog_loss_but_a_row_s_own_label_does(with_bonus):
    rng = np.random.default_rng(3)
    queries = tf.constant(rng.normal(size=(6, 4)) * 3, tf.float32)
    items = tf.constant(rng.normal(size=(9, 4)) * 3, tf.float32)
    labels = tf.constant([0, 3, 3, 8, 1, 5])
    bonus = tf.constant(rng.normal(size=(6, 9)), tf.float32)
    excluded = np.zeros((6, 9), bool)
    excluded[[0, 0, 1, 1, 4, 5, 5, 5], [1, 2, 0, 8, 0, 1, 2, 4]] = True
    excluded[2, 3] = excluded[3, 8] = True  # their labels: a repeat still competes as the positive
    # The largest logit of row 1 is an excluded one: the loss must not lean on it.
    items = tf.tensor_scatter_nd_update(items, [[8]], queries[1:2] * 5)
    competes = ~excluded
    competes[np.arange(6), labels.numpy()] = True

    def library(queries, items, bonus):
        logits = tf.matmul(queries, items, transpose_b=True) + (bonus if with_bonus else 0)
        logits = tf.where(competes, logits, -np.inf)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def fused(queries, items, bonus):
        return full_softmax_cross_entropy(queries, items, labels, bonus if with_bonus else None,
                                          tf.constant(excluded))

    expected_loss, expected_gradients = _loss_and_gradients(library, queries, items, bonus)
    loss, gradients = _loss_and_gradients(fused, queries, items, bonus)
    assert np.isfinite(loss.numpy()) and np.isclose(loss.numpy(), expected_loss.numpy(), rtol=1e-5)
    for gradient, expected in zip(gradients if with_bonus else gradients[:2], expected_gradients):
        np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)


def test_read_items_drawn_as_negatives_do_not_compete():
    rng = np.random.default_rng(4)
    catalog = tf.constant(rng.normal(size=(8, 4)), tf.float32)  # items 1..7
    queries = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    positives = tf.constant([1, 2, 3], tf.int64)
    softmax = MixedNegativeSoftmax(np.r_[0, np.ones(7)], num_negatives=6)
    negatives = tf.constant([5, 2, 7, 6], tf.int64)
    # Rows: slot 0 read 5; slot 1 read 5 and 4 (4 was not drawn); slot 3 read 5, 4, 7 and 6.
    read = ReadHistory(tf.constant([[5, 4, 7, 6]], tf.int64), tf.constant([[True, True, False, True]]))
    logits, labels = softmax.sampled_logits(queries, positives, catalog, negatives=negatives)
    competes = tf.constant([[1, 0, 1, 1, 1], [1, 0, 1, 1, 1], [1, 0, 1, 0, 0]]) > 0
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.where(competes, logits, tf.float32.min)))
    loss = softmax.loss(queries, positives, catalog, negatives=negatives, read=read)
    assert np.isclose(loss.numpy(), expected.numpy(), rtol=1e-6)
    assert not np.isclose(loss.numpy(), softmax.loss(queries, positives, catalog, negatives=negatives).numpy())
    # The whole catalog: item i is column i - 1.
    whole = MixedNegativeSoftmax(np.r_[0, np.ones(7)], num_negatives=None)
    competes = tf.constant([[1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0, 0]]) > 0
    logits = tf.where(competes, tf.matmul(queries, catalog[1:], transpose_b=True), tf.float32.min)
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives - 1, logits=logits))
    assert np.isclose(whole.loss(queries, positives, catalog, read=read).numpy(), expected.numpy(), rtol=1e-6)


def test_the_popularity_adjustment_is_refused_with_sampled_negatives():
    """The sampled loss has no place for the item bias; the softmax refuses it rather than train without it."""
    with pytest.raises(ValueError, match="popularity_adjustment adjusts the whole-catalog softmax"):
        MixedNegativeSoftmax(np.array([0, 3, 1]), 1024, popularity_adjustment=0.25)
