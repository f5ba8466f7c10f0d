"""The baseline the session model must beat: sequential rules over item-to-item transitions.

"Sequential rules" (Ludewig & Jannach 2018) counts, in the training sessions, how often item j
follows item i within a few clicks, weighting a pair by 1 / (clicks between them); a session is
scored from its last item alone. It is a strong, transparent baseline on session data (close to
SR-GNN on some data sets at a fraction of the cost), so a transformer that does not beat it is not
worth serving. Items with no rule fall back to popularity (a tiny tie-break term).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_MAX_GAP = 10
MAX_PAIRS_PER_PASS = 50_000_000  # about 1.2 GB of pair arrays (sources, targets, weights) per pass
_POPULARITY_TIE_BREAK = 1e-3  # below the weakest rule (1 / DEFAULT_MAX_GAP)


class SequentialRules:
    """Weighted i -> j rules from sessions of catalog indices (1..N; 0 is never scored).

    Args:
      sessions: per session, catalog indices in click order.
      num_items: N.
      max_gap: the farthest pair counted (j at most ``max_gap`` clicks after i).
      source_range: count only the rules whose source index i lies in [low, high) (None: every source).
    """

    def __init__(self, sessions: Sequence[np.ndarray], num_items: int, max_gap: int = DEFAULT_MAX_GAP,
                 source_range: tuple[int, int] | None = None):
        self.num_items = num_items
        items = np.concatenate(sessions).astype(np.int64)
        session_of_click = np.repeat(np.arange(len(sessions)), [len(session) for session in sessions])
        sources, targets, weights = [], [], []
        for gap in range(1, max_gap + 1):
            counted = session_of_click[:-gap] == session_of_click[gap:]
            if source_range is not None:
                counted &= (items[:-gap] >= source_range[0]) & (items[:-gap] < source_range[1])
            sources.append(items[:-gap][counted])
            targets.append(items[gap:][counted])
            weights.append(np.full(counted.sum(), 1.0 / gap))
        pair_keys, pair_positions = np.unique(np.concatenate(sources) * (num_items + 1) + np.concatenate(targets),
                                              return_inverse=True)
        self._rule_weights = np.bincount(pair_positions, weights=np.concatenate(weights)).astype(np.float32)
        self._rule_targets = pair_keys % (num_items + 1)
        self._rule_starts = np.searchsorted(pair_keys // (num_items + 1), np.arange(num_items + 2))
        popularity = np.bincount(items, minlength=num_items + 1).astype(np.float32)
        self._tie_break = _POPULARITY_TIE_BREAK * popularity / max(1.0, popularity.max())

    def strongest_rules(self, per_item: int) -> tuple[np.ndarray, np.ndarray]:
        """Each item's ``per_item`` strongest rules as tables to gather from inside a model.

        Returns:
          ([N + 1, per_item] target indices, [N + 1, per_item] weights), strongest first; rows with
          fewer rules (and row 0) are padded with target 0 and weight 0, which match nothing.
        """
        targets = np.zeros((self.num_items + 1, per_item), np.int64)
        weights = np.zeros((self.num_items + 1, per_item), np.float32)
        sources = np.repeat(np.arange(self.num_items + 1), np.diff(self._rule_starts))
        # Strongest first within each source: sort by (source, -weight); then the rank within the source.
        order = np.lexsort((-self._rule_weights, sources))
        rank = np.arange(len(order)) - self._rule_starts[sources[order]]
        kept = rank < per_item
        targets[sources[order][kept], rank[kept]] = self._rule_targets[order][kept]
        weights[sources[order][kept], rank[kept]] = self._rule_weights[order][kept]
        return targets, weights

    def scores(self, last_items: np.ndarray) -> np.ndarray:
        """[batch, N + 1] scores of every item after sessions ending with ``last_items`` ([batch] indices)."""
        scores = np.tile(self._tie_break, (len(last_items), 1))
        for row, item in enumerate(last_items):
            rules = slice(self._rule_starts[item], self._rule_starts[item + 1])
            scores[row, self._rule_targets[rules]] += self._rule_weights[rules]
        scores[:, 0] = -np.inf
        return scores


def strongest_rules(sessions: Sequence[np.ndarray], num_items: int, per_item: int, max_gap: int = DEFAULT_MAX_GAP,
                    max_pairs: int = MAX_PAIRS_PER_PASS) -> tuple[np.ndarray, np.ndarray]:
    """``SequentialRules(sessions, num_items, max_gap).strongest_rules(per_item)``, in bounded memory.

    Counting holds every (source, target) pair within ``max_gap`` clicks at once: clicks x max_gap
    pairs, which at tens of millions of clicks no longer fits one machine's memory. The sources are
    therefore counted a range of item indices at a time, each pass holding at most about
    ``max_pairs`` pairs on average. A pair's weight is summed in the same order either way, so the
    tables are the same to the bit.
    """
    clicks = sum(len(session) for session in sessions)
    passes = max(1, int(np.ceil(clicks * max_gap / max_pairs)))
    targets = np.zeros((num_items + 1, per_item), np.int64)
    weights = np.zeros((num_items + 1, per_item), np.float32)
    # Ranges of equal click counts, not of equal width: popular items may sit anywhere in the catalog.
    clicks_up_to = np.cumsum(np.bincount(np.concatenate(sessions).astype(np.int64), minlength=num_items + 1))
    splits = np.searchsorted(clicks_up_to, np.linspace(0, clicks, passes + 1)[1:-1], side="right")
    bounds = np.unique(np.concatenate([[0], splits, [num_items + 1]]))
    for low, high in zip(bounds[:-1], bounds[1:]):
        rules = SequentialRules(sessions, num_items, max_gap, source_range=(low, high))
        pass_targets, pass_weights = rules.strongest_rules(per_item)
        targets[low:high], weights[low:high] = pass_targets[low:high], pass_weights[low:high]
    return targets, weights
