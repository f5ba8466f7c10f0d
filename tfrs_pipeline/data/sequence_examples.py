"""Turns per-user chronological sequences into fixed-length training and evaluation examples.

Every example is left-padded with "" so the most recent item sits in the last slot (what the causal
encoder expects); given the items' timestamps, an example holds them slot for slot (0 where it
pads). Training examples pair each history position with the item that came next, so one
example trains every prefix of its window at once; a history longer than the window is cut into
consecutive windows from the most recent end, so no rating is wasted.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfrs_pipeline.contracts import HISTORY_TIMESTAMPS_INPUT

WIDTH_STEP = 32


def _left_pad(rows: Sequence[np.ndarray], length: int, padding: str | int = "") -> np.ndarray:
    """Item ids ("" padded, object), or timestamps (``padding`` 0: int64)."""
    padded = np.full((len(rows), length), padding, dtype=object if padding == "" else np.int64)
    for row, items in enumerate(rows):
        if len(items):
            padded[row, length - len(items):] = items
    return padded


def trimmed_left_padded(rows: Sequence[np.ndarray], max_length: int, width_step: int = WIDTH_STEP,
                        padding: str | int = "") -> np.ndarray:
    """[len(rows), W] rows of at most ``max_length`` items left-padded with "" (timestamps: ``padding`` 0),
    W their longest length rounded up to ``width_step`` (at most ``max_length``): what
    `length_sorted_batches` gives a batch."""
    longest = max([1, *map(len, rows)])
    return _left_pad(rows, min(max_length, -(-longest // width_step) * width_step), padding)


def training_windows(user_ids: np.ndarray, item_sequences: Sequence[np.ndarray], max_length: int,
                     timestamp_sequences: Sequence[np.ndarray] | None = None) -> dict:
    """Examples ``user_id`` [E], ``history_item_ids`` [E, L], ``target_item_ids`` [E, L], and with
    ``timestamp_sequences`` (per user, aligned with its items) ``history_timestamps`` [E, L].

    ``target_item_ids[e, t]`` is the item that followed ``history_item_ids[e, t]``; "" marks padding
    (no target). Users with a single item give no example: there is no "next" to learn.
    """
    example_users, histories, targets, times = [], [], [], []
    for row, (user_id, items) in enumerate(zip(user_ids, item_sequences)):
        for end in range(len(items) - 1, 0, -max_length):
            start = max(0, end - max_length)
            example_users.append(user_id)
            histories.append(items[start:end])
            targets.append(items[start + 1: end + 1])
            if timestamp_sequences is not None:
                times.append(timestamp_sequences[row][start:end])
    examples = {
        "user_id": np.asarray(example_users, dtype=object),
        "history_item_ids": _left_pad(histories, max_length),
        "target_item_ids": _left_pad(targets, max_length),
    }
    if timestamp_sequences is not None:
        examples[HISTORY_TIMESTAMPS_INPUT] = _left_pad(times, max_length, padding=0)
    return examples


def next_item_examples(user_ids: np.ndarray, item_sequences: Sequence[np.ndarray], next_item_ids: np.ndarray,
                       max_length: int, timestamp_sequences: Sequence[np.ndarray] | None = None) -> dict:
    """One example per user: the most recent ``max_length`` items (and their timestamps, given
    ``timestamp_sequences``), and the next item in the last slot only."""
    target_item_ids = np.full((len(user_ids), max_length), "", dtype=object)
    target_item_ids[:, -1] = next_item_ids
    examples = {
        "user_id": np.asarray(user_ids, dtype=object),
        "history_item_ids": _left_pad([items[-max_length:] for items in item_sequences], max_length),
        "target_item_ids": target_item_ids,
    }
    if timestamp_sequences is not None:
        examples[HISTORY_TIMESTAMPS_INPUT] = _left_pad([times[-max_length:] for times in timestamp_sequences],
                                                       max_length, padding=0)
    return examples


def length_bucketed_batches(examples: dict, batch_size: int, rng: np.random.Generator, width_step: int = WIDTH_STEP):
    """Yields shuffled batches of similar history length, trimmed of the slots all of them pad.

    Most histories are far shorter than the window, so batching by length and trimming the leading
    padding (left padding keeps the most recent item in the last slot, so trimming is safe) spares
    the transformer most of its work on padding. Widths are rounded up to a multiple of
    ``width_step`` so that only a few distinct shapes reach TensorFlow (each new shape costs kernel
    set-up); short sequences such as sessions want a small step. The order is reshuffled at every call.
    """
    lengths = (examples["history_item_ids"] != "").sum(axis=1)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for batch in rng.permutation(len(batches)):
        yield _trimmed(examples, batches[batch], lengths, width_step)


def length_sorted_batches(examples: dict, batch_size: int, width_step: int = WIDTH_STEP):
    """Yields (rows, batch): every example once, shortest histories first, trimmed as for training.

    For inference over many users (evaluation, export): the same saving, in a fixed order; ``rows``
    says where each batch's results belong.
    """
    lengths = (examples["history_item_ids"] != "").sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        yield rows, _trimmed(examples, rows, lengths, width_step)


def _trimmed(examples: dict, rows: np.ndarray, lengths: np.ndarray, width_step: int) -> dict:
    """``rows`` of every column, sequence columns cut to the batch's longest history (rounded up)."""
    max_length = examples["history_item_ids"].shape[1]
    width = min(max_length, -(-max(1, int(lengths[rows].max())) // width_step) * width_step)
    return {name: (values[rows, -width:] if values.ndim == 2 else values[rows]) for name, values in examples.items()}
