"""A synthetic data set in the own-data contract, at any size, with structure a model can learn.

    python bench/synthetic_data.py --output_dir=/tmp/synthetic_10k --users=100000 --items=10000 \
        --interactions=2000000 [--seed=0]

MovieLens-1M stops at 6,040 users and 3,706 items; the scale benchmarks need the shape of a large
service (100K items, millions of users) and an answer to "how good could any model be here?". The
generating process, seeded and the same at every size:

  - **items** fall into categories; their popularity is long-tailed (Zipf over a random order), and
    each has a text title (words of its category's vocabulary), its category and a numeric price
    (lognormal around its category's level): ``items.csv``;
  - **users** have latent tastes over categories (a sparse Dirichlet draw) and features: a region
    that reveals their favourite category most of the time, and an age that reveals nothing: ``users.csv``;
  - **sequences**: a user's first item comes from their taste (a category, then an item of it by
    popularity); every later one, with probability ``transition_share``, is one of a few fixed
    successors of the previous item (the habit "after A, B"; mostly in A's category), otherwise
    again from the taste. Nobody takes an item twice (a draw of a taken item is drawn again), which
    matches the evaluation, which never ranks what a user already has;
  - history lengths are long-tailed too (2 + geometric, mean ``interactions / users``).

A popularity ranking sees only the first part; a model that reads histories and user features can
learn the rest. Because the process is known, the best any model can do on each user's last item
(the leave-last-out test item) is computable: the Bayes-optimal top-10 of the true next-item
distribution given the user's taste, their previous item and what they already took. Its expected
HR@10 (the top-10's probability mass, averaged over a sample of users) is written to
``generator.json`` beside the data with the same figure for the true-popularity ranking, so a
model's HR@10 at scale is judged against both. ``generator.json`` is not part of the contract: the
pipeline's reader ignores it.

Users are generated and written in chunks (numpy, vectorised over the chunk's users, one position
at a time), so memory stays flat and 20M interactions take minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

GENERATOR_FILE = "generator.json"
TOP_K = 10
SUCCESSOR_PROBABILITIES = np.array([0.35, 0.25, 0.2, 0.12, 0.08])  # of an item's successors, in order
TASTE_FLOOR = 0.05
START_TIME = 1_700_000_000  # Unix seconds; users start within a year after it


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """The size and the knobs of the generating process (see the module docstring).

    Attributes:
      users, items: how many of each (every user takes at least 3 items).
      interactions: the target total; the actual total is close to it (lengths are random).
      categories: item categories (default: about sqrt(items) / 4, at least 4).
      taste_concentration: Dirichlet concentration of a user's taste; small means few favourite categories.
      popularity_exponent: Zipf exponent of item popularity.
      transition_share: probability that the next item follows the previous one's successors.
      successors_in_category: share of an item's successors drawn from its own category.
      oracle_users: users whose last item the oracle scores (over the whole catalog each).
      chunk_users: users generated and written per chunk.
      seed: seeds everything.
    """

    users: int
    items: int
    interactions: int
    categories: int | None = None
    taste_concentration: float = 0.1
    popularity_exponent: float = 1.0
    transition_share: float = 0.5
    successors_in_category: float = 0.8
    oracle_users: int = 2000
    chunk_users: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2 * len(SUCCESSOR_PROBABILITIES):
            raise ValueError(f"need at least 1 user and {2 * len(SUCCESSOR_PROBABILITIES)} items")
        if self.interactions < 3 * self.users:
            raise ValueError(f"interactions ({self.interactions}) must be at least 3 per user ({3 * self.users})")

    @property
    def num_categories(self) -> int:
        return self.categories or max(4, round(self.items ** 0.5 / 4))

    @property
    def mean_length(self) -> float:
        return self.interactions / self.users

    @property
    def max_length(self) -> int:
        """Histories are capped so that a user never needs more than a quarter of the catalog."""
        return int(max(3, min(20 * self.mean_length, self.items // 4)))


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The items' hidden parameters: what the generator draws from and the oracle scores with.

    Attributes:
      category: [N] each item's category.
      popularity: [N] each item's popularity weight (sums to 1).
      within_category: [N] popularity normalised within the item's category.
      successors: [N, S] each item's successors, most likely first.
      sampling_keys, sampling_items: items ordered by category; key = category + cumulative share
        within it, so that ``category + uniform`` finds an item of that category by popularity.
    """

    category: np.ndarray
    popularity: np.ndarray
    within_category: np.ndarray
    successors: np.ndarray
    sampling_keys: np.ndarray
    sampling_items: np.ndarray


def make_catalog(settings: GeneratorSettings, rng: np.random.Generator) -> Catalog:
    """Draws the categories, popularity and successors of every item."""
    num_items, num_categories = settings.items, settings.num_categories
    category = rng.integers(0, num_categories, num_items)
    popularity = 1.0 / np.arange(1, num_items + 1) ** settings.popularity_exponent
    popularity = popularity[rng.permutation(num_items)]
    popularity /= popularity.sum()
    category_mass = np.bincount(category, weights=popularity, minlength=num_categories)
    within_category = popularity / category_mass[category]
    order = np.lexsort((np.arange(num_items), category))
    cumulative = np.cumsum(within_category[order])
    first_of_category = np.searchsorted(category[order], np.arange(num_categories))
    category_start = np.concatenate([[0.0], cumulative])[first_of_category]
    keys = category[order] + (cumulative - category_start[category[order]])
    # Successors: mostly items of the same category, uniformly (popularity plays no part in a habit).
    successors = np.empty((num_items, len(SUCCESSOR_PROBABILITIES)), np.int64)
    members = np.split(order, first_of_category[1:])
    for item in range(num_items):
        own = members[category[item]]
        same = rng.random(successors.shape[1]) < settings.successors_in_category
        successors[item] = np.where(same, own[rng.integers(0, len(own), successors.shape[1])],
                                    rng.integers(0, num_items, successors.shape[1]))
    return Catalog(category, popularity, within_category, successors, keys, order)


def draw_next(catalog: Catalog, settings: GeneratorSettings, rng: np.random.Generator, taste_cdf: np.ndarray,
              previous: np.ndarray | None) -> np.ndarray:
    """[n] one next item per user: from the previous item's successors or from the taste."""
    uniforms = rng.random(len(taste_cdf))[:, np.newaxis]
    categories = (uniforms < taste_cdf).argmax(axis=1)
    within = np.minimum(rng.random(len(taste_cdf)), 1 - 1e-9)
    position = np.searchsorted(catalog.sampling_keys, categories + within, side="right")
    items = catalog.sampling_items[np.minimum(position, len(catalog.sampling_items) - 1)]
    if previous is None:
        return items
    follows = rng.random(len(items)) < settings.transition_share
    successor = np.searchsorted(np.cumsum(SUCCESSOR_PROBABILITIES), rng.random(len(items)), side="right")
    successor = np.minimum(successor, len(SUCCESSOR_PROBABILITIES) - 1)
    return np.where(follows, catalog.successors[previous, successor], items)


def generate_sequences(catalog: Catalog, settings: GeneratorSettings, rng: np.random.Generator, tastes: np.ndarray,
                       lengths: np.ndarray) -> np.ndarray:
    """[n, max(lengths)] each user's items in order, -1 after their last; no user takes an item twice."""
    taste_cdf = np.cumsum(tastes, axis=1)
    taste_cdf[:, -1] = 1.0
    sequences = np.full((len(lengths), int(lengths.max())), -1, np.int64)
    for position in range(sequences.shape[1]):
        pending = np.flatnonzero(lengths > position)
        while len(pending):
            previous = sequences[pending, position - 1] if position else None
            drawn = draw_next(catalog, settings, rng, taste_cdf[pending], previous)
            repeated = (sequences[pending, :position] == drawn[:, np.newaxis]).any(axis=1)
            sequences[pending[~repeated], position] = drawn[~repeated]
            pending = pending[repeated]
    return sequences


def next_item_distribution(catalog: Catalog, settings: GeneratorSettings, tastes: np.ndarray, previous: np.ndarray,
                           taken: Sequence[np.ndarray]) -> np.ndarray:
    """[n, N] the true probability of each item being a user's next one, given the taste, the previous
    item and what the user took (zero; the rest renormalised: the rejection in `generate_sequences`)."""
    from_taste = tastes[:, catalog.category] * catalog.within_category
    probabilities = (1 - settings.transition_share) * from_taste
    rows = np.arange(len(previous))
    for successor, share in enumerate(SUCCESSOR_PROBABILITIES):
        np.add.at(probabilities, (rows, catalog.successors[previous, successor]), settings.transition_share * share)
    for row, items in enumerate(taken):
        probabilities[row, items] = 0.0
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def oracle_hit_rates(catalog: Catalog, settings: GeneratorSettings, tastes: np.ndarray,
                     sequences: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, on their last item: the expected HR@10 of the Bayes-optimal top-10 and of the
    true-popularity top-10 (their probability mass), and whether the optimal top-10 held the item drawn."""
    last = lengths - 1
    rows = np.arange(len(lengths))
    taken = [sequences[row, :last[row]] for row in rows]
    probabilities = next_item_distribution(catalog, settings, tastes, sequences[rows, last - 1], taken)
    top = np.argpartition(-probabilities, TOP_K, axis=1)[:, :TOP_K]
    by_popularity = np.argsort(-catalog.popularity)[:TOP_K + settings.max_length]
    popularity_mass = np.empty(len(rows))
    for row in rows:  # the ten most popular items the user has not taken
        untaken = by_popularity[~np.isin(by_popularity, taken[row])][:TOP_K]
        popularity_mass[row] = probabilities[row, untaken].sum()
    return {"optimal": np.take_along_axis(probabilities, top, axis=1).sum(axis=1),
            "popularity": popularity_mass,
            "optimal_hit": (top == sequences[rows, last][:, np.newaxis]).any(axis=1)}


def write_items(catalog: Catalog, settings: GeneratorSettings, rng: np.random.Generator,
                folder: pathlib.Path) -> None:
    """``items.csv``: id, title (text), category, price (numeric)."""
    category = catalog.category
    words = rng.integers(0, 6, (len(category), 2))
    titles = [f"c{c}w{first} c{c}w{second} item {item}" for item, (c, (first, second))
              in enumerate(zip(category, words))]
    level = rng.lognormal(3, 0.7, settings.num_categories)
    price = np.round(level[category] * rng.lognormal(0, 0.3, len(category)), 2)
    pd.DataFrame({"item_id": np.arange(len(category)), "title": titles,
                  "category": [f"c{c}" for c in category], "price": price}).to_csv(folder / "items.csv", index=False)


def user_tastes(settings: GeneratorSettings, rng: np.random.Generator, count: int) -> np.ndarray:
    """[count, C] taste over categories: a sparse Dirichlet draw, with a floor (a twentieth spread
    evenly) so that no category is out of reach and a heavy user never runs out of items to draw."""
    sparse = rng.dirichlet(np.full(settings.num_categories, settings.taste_concentration), count)
    return (1 - TASTE_FLOOR) * np.nan_to_num(sparse) + TASTE_FLOOR / settings.num_categories


def user_features(tastes: np.ndarray, first_user: int, rng: np.random.Generator) -> pd.DataFrame:
    """A chunk's users: the region names the favourite category 70% of the time; age is noise."""
    favourite = tastes.argmax(axis=1)
    region = np.where(rng.random(len(tastes)) < 0.7, favourite, rng.integers(0, tastes.shape[1], len(tastes)))
    return pd.DataFrame({"user_id": np.arange(first_user, first_user + len(tastes)),
                         "region": [f"r{value}" for value in region], "age": rng.integers(16, 80, len(tastes))})


def generate(settings: GeneratorSettings, folder: str | pathlib.Path) -> dict:
    """Writes the data set and ``generator.json`` into ``folder`` (created); returns the summary written.

    Raises:
      FileExistsError: ``folder`` holds files already.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    catalog = make_catalog(settings, rng)
    write_items(catalog, settings, rng, folder)
    dataset_config = {"items": {"title": "title", "features": {"title": "text", "category": "categorical",
                                                               "price": "numeric"}},
                      "users": {"features": {"region": "categorical", "age": "numeric"}},
                      "split": {"kind": "leave_last_out"}}
    (folder / "dataset.json").write_text(json.dumps(dataset_config, indent=2) + "\n")
    oracle: dict[str, list] = {"optimal": [], "popularity": [], "optimal_hit": []}
    total = 0
    for first_user in range(0, settings.users, settings.chunk_users):
        count = min(settings.chunk_users, settings.users - first_user)
        tastes = user_tastes(settings, rng, count)
        lengths = np.minimum(2 + rng.geometric(1 / max(1.0, settings.mean_length - 2), count), settings.max_length)
        lengths = np.maximum(lengths, 3)
        sequences = generate_sequences(catalog, settings, rng, tastes, lengths)
        scored = max(0, min(count, settings.oracle_users - first_user))
        for start in range(0, scored, 250):  # [250, N] probabilities at a time
            rows = slice(start, min(scored, start + 250))
            for name, values in oracle_hit_rates(catalog, settings, tastes[rows], sequences[rows],
                                                 lengths[rows]).items():
                oracle[name].append(values)
        taken = sequences >= 0
        user_ids = np.repeat(np.arange(first_user, first_user + count), lengths)
        gaps = 60 + rng.exponential(6 * 3600, sequences.shape).astype(np.int64)
        times = START_TIME + rng.integers(0, 365 * 86400, count)[:, np.newaxis] + np.cumsum(gaps, axis=1)
        chunk = pd.DataFrame({"user_id": user_ids, "item_id": sequences[taken], "timestamp": times[taken]})
        chunk.to_csv(folder / "interactions.csv", mode="a", header=not first_user, index=False)
        user_features(tastes, first_user, rng).to_csv(folder / "users.csv", mode="a", header=not first_user,
                                                      index=False)
        total += len(chunk)
    summary = {
        "settings": {**dataclasses.asdict(settings), "categories": settings.num_categories,
                     "max_length": settings.max_length},
        "users": settings.users, "items": settings.items, "interactions": total,
        "seconds": round(time.perf_counter() - started, 1),
        "ceiling": _ceiling(oracle),
    }
    (folder / GENERATOR_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ceiling(oracle: dict[str, list]) -> dict:
    """The oracle's figures on the scored users' last items, with standard errors."""
    values = {name: np.concatenate(parts).astype(np.float64) for name, parts in oracle.items()}
    users = len(values["optimal"])

    def mean_and_error(name: str) -> dict:
        return {"mean": round(float(values[name].mean()), 4),
                "stderr": round(float(values[name].std() / max(1, users) ** 0.5), 4)}

    return {"users_scored": users, "test_item": "each user's last (leave_last_out)",
            f"optimal_hr@{TOP_K}": mean_and_error("optimal"),
            f"true_popularity_hr@{TOP_K}": mean_and_error("popularity"),
            f"optimal_hr@{TOP_K}_realised": mean_and_error("optimal_hit")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/synthetic_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="folder to create (must not hold files)")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--interactions", type=int, default=2_000_000, help="target total (about)")
    parser.add_argument("--categories", type=int, default=None, help="default: about sqrt(items) / 4")
    parser.add_argument("--oracle_users", type=int, default=2000, help="users the ceiling is computed on")
    parser.add_argument("--seed", type=int, default=0)
    flags = parser.parse_args(argv)
    try:
        settings = GeneratorSettings(users=flags.users, items=flags.items, interactions=flags.interactions,
                                     categories=flags.categories, oracle_users=flags.oracle_users, seed=flags.seed)
    except ValueError as error:
        parser.error(str(error))
    summary = generate(settings, flags.output_dir)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
