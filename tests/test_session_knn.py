"""Session kNN against a plain-Python reading of its definition, on real DIGINETICA sessions."""
import collections

import numpy as np
import pytest

from tfrs_pipeline.catalog import Catalog
from tfrs_pipeline.data.sessions import load_sessions
from tfrs_pipeline.models.session_knn import SessionNeighbours
from tfrs_pipeline.pipelines.session import left_padded_indices

TRAIN_SESSIONS = 3000
CASES = 300


@pytest.fixture(scope="module")
def sessions(shared_data_dir, tmp_path_factory):
    """(catalog, training sessions as catalog indices, test prefixes) of the first DIGINETICA sessions."""
    folder = tmp_path_factory.mktemp("diginetica_knn")
    for name, lines in (("train_sessions.txt", TRAIN_SESSIONS), ("test.tsv", 4 * CASES)):
        with open(shared_data_dir / "diginetica" / name) as file:
            (folder / name).write_text("".join(line for _, line in zip(range(lines), file)))
    data = load_sessions(folder, "srgnn")
    catalog = Catalog.by_popularity(data.train_sessions)
    prefixes = [prefix[catalog.indices(prefix) > 0] for prefix in data.test_prefixes]
    prefixes = [prefix for prefix in prefixes if len(prefix)][:CASES]
    return catalog, [catalog.indices(session) for session in data.train_sessions], prefixes


def by_definition(train: list[np.ndarray], prefix: np.ndarray, k: int, sessions_per_item: int, recency_scale: float,
                  position_scale: float):
    """(item -> score, k-th and (k+1)-th similarity) straight from the definition.

    Clicks weigh position / length (most recent 1) times log(sessions / sessions with the item), an
    item counts once at its last click; a training session is a candidate through the items whose
    ``sessions_per_item`` most recent sessions include it, and its similarity is the weight of those
    items, faded by the number of sessions after it; the k most similar (ties: the more recent
    session) give each of their items their similarity, faded by the clicks between the item and
    the shared item the prefix clicked last.
    """
    def last_click(session: np.ndarray, item: int) -> int:
        return max(position for position, clicked in enumerate(session) if clicked == item)

    weights = {item: (position + 1) / len(prefix) for position, item in enumerate(prefix)}
    similarity, shared = collections.defaultdict(float), {}
    for item, weight in weights.items():
        containing = [number for number, session in enumerate(train) if item in set(session)]
        for number in containing[-sessions_per_item:]:
            similarity[number] += weight * np.log(len(train) / len(containing))
            if weight > weights.get(shared.get(number), 0.0):
                shared[number] = item
    for number in similarity:
        if recency_scale:
            similarity[number] *= np.exp(-(len(train) - 1 - number) / (recency_scale * len(train)))
    ranked = sorted(similarity, key=lambda number: (-similarity[number], -number))
    boundary = [similarity[number] for number in ranked[k - 1:k + 1]] + [0.0, 0.0]
    scores = collections.defaultdict(float)
    for number in ranked[:k]:
        if similarity[number] <= 0:
            continue
        reference = last_click(train[number], shared[number])
        for item in set(train[number]):
            clicks_apart = abs(last_click(train[number], item) - reference)
            scores[item] += similarity[number] * (np.exp(-clicks_apart / position_scale) if position_scale else 1.0)
    return scores, boundary[:2]


@pytest.mark.parametrize("k, sessions_per_item, recency_scale, position_scale",
                         [(20, 1000, 0.0, 0.0), (5, 30, 0.0, 2.0), (20, 1000, 0.5, 4.0)])
def test_item_scores_follow_the_definition(sessions, k, sessions_per_item, recency_scale, position_scale):
    catalog, train, prefixes = sessions
    neighbours = SessionNeighbours(train, len(catalog), neighbours=k, sessions_per_item=sessions_per_item,
                                   recency_scale=recency_scale, position_scale=position_scale)
    rows, items, scores = (tensor.numpy() for tensor in neighbours.scores(left_padded_indices(catalog, prefixes, 20)))
    checked = 0
    for row, prefix in enumerate(prefixes):
        expected, (kth, next_best) = by_definition(train, catalog.indices(prefix[-20:]), k, sessions_per_item,
                                                   recency_scale, position_scale)
        if 0 < kth - next_best < 1e-4:
            continue  # float32 sums may order a near-tie differently; an exact tie goes to the recent session
        mine = rows == row
        assert dict(zip(items[mine].tolist(), scores[mine].tolist())) == pytest.approx(dict(expected), rel=1e-5)
        checked += 1
    assert checked > 0.9 * len(prefixes)


def test_padding_side_and_unknown_items_do_not_matter(sessions):
    catalog, train, prefixes = sessions
    neighbours = SessionNeighbours(train, len(catalog), neighbours=10)
    left = left_padded_indices(catalog, prefixes[:50], 12)
    right = np.zeros((50, 24), np.int64)  # right-padded, wider, with unknown items (index 0) in between
    for row, items in enumerate(left):
        known = items[items > 0]
        right[row, :2 * len(known):2] = known
    for expected, actual in zip(neighbours.scores(left), neighbours.scores(right)):
        np.testing.assert_array_equal(expected.numpy(), actual.numpy())


def test_a_session_of_no_known_item_has_no_scores_and_weight_zero_no_bonus(sessions):
    catalog, train, _ = sessions
    rows, items, scores = SessionNeighbours(train, len(catalog)).scores(np.zeros((3, 4), np.int64))
    assert rows.shape == items.shape == scores.shape == (0,)
    prefix = left_padded_indices(catalog, [np.asarray(catalog.item_ids[:3])], 4)
    _, _, bonus = SessionNeighbours(train, len(catalog), weight=0.0).bonus(prefix)
    assert bonus.shape[0] > 0 and not np.any(bonus.numpy())
