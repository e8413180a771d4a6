"""A curriculum over GRPO's initial states (``curriculum.layouts`` > 0).

Without it, every group is a new initial state (seed ``train_seed_start + group``), so a start that
succeeds on a few layouts meets each of them once. With it, training draws from a fixed pool of
``layouts`` initial states and keeps each one's last ``window`` outcomes. A layout is drawn with
probability proportional to p (1 - p), p its success estimate (Laplace: (successes + 1) /
(rollouts + 2)): the layouts where the policy sometimes succeeds, whose groups carry advantage,
come up most; a layout never tried counts as p = 1/2; one that always fails (or always succeeds)
fades but is never ruled out, since the policy moves. Where success is rare, a group grows from
``n_samples`` toward ``max_samples`` rollouts, as many as give an even chance of one success (or
one failure, where failure is the rare one). The pool lies below the validation seeds.

The histories live in the trainer state (saved with every checkpoint) and the draw's randomness
is a function of ``seed`` and the group counter, so a resumed run draws what the uninterrupted one
would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def success_estimate(outcomes: Sequence[int]) -> float:
    """Laplace's estimate of a layout's success from its recent outcomes (1 success, 0 failure)."""
    return (sum(outcomes) + 1.0) / (len(outcomes) + 2.0)


def draw_weights(histories: dict[str, list[int]], layouts: int) -> np.ndarray:
    """Each layout's probability of being drawn: p (1 - p), normalised."""
    p = np.array([success_estimate(histories.get(str(i), ())) for i in range(layouts)])
    w = p * (1.0 - p)
    return w / w.sum()


def group_size(p: float, n_samples: int, max_samples: int) -> int:
    """Rollouts for a layout of success estimate ``p``: enough that the rarer outcome turns up with
    probability 1/2, at least ``n_samples`` and at most ``max_samples``."""
    rare = min(p, 1.0 - p)
    need = math.ceil(math.log(0.5) / math.log1p(-rare)) if rare < 0.5 else 1
    return int(min(max(need, n_samples), max_samples))


def draw(histories: dict[str, list[int]], need: int, layouts: int, n_samples: int, max_samples: int,
         seed: int, next_group: int) -> list[tuple[int, int]]:
    """``need`` distinct layouts (indices into the pool), each with its group size."""
    rng = np.random.default_rng([seed, next_group])
    picked = rng.choice(layouts, size=min(need, layouts), replace=False, p=draw_weights(histories, layouts))
    picked = list(picked) + list(rng.choice(layouts, size=need - len(picked)))  # more groups than layouts
    return [(int(i), group_size(success_estimate(histories.get(str(int(i)), ())), n_samples, max_samples))
            for i in picked]


def record(histories: dict[str, list[int]], outcomes: dict[int, list[int]], window: int) -> None:
    """Append each layout's new outcomes to its history, keeping the last ``window``."""
    for layout, res in outcomes.items():
        histories[str(layout)] = (histories.get(str(layout), []) + list(res))[-window:]


def summary(histories: dict[str, list[int]], layouts: int) -> dict[str, float]:
    """Logged per iteration: layouts tried so far, and of those how many are neither all failures nor
    all successes in their window."""
    seen = [h for h in histories.values() if h]
    mixed = sum(0 < sum(h) < len(h) for h in seen)
    return {"curriculum_tried": float(len(seen)), "curriculum_mixed": float(mixed),
            "curriculum_tried_frac": len(seen) / layouts}
