"""Data poisoning: backdoors (dirty-label, label-consistent), spectral-signature detection,
targeted poisoning of single predictions (feature collision).

    from jaxrobust import poison
    trig = poison.make_trigger((8, 8, 1), size=3)
    p = poison.dirty_label(key, x, y, target=0, rate=0.03, trigger=trig, num_classes=10)
    scores = poison.spectral_scores(reps, p.y, 10)
"""

from jaxrobust.poison.backdoor import (
    BackdoorMetrics,
    Poisoned,
    backdoor_metrics,
    dirty_label,
    label_consistent,
    poison_count,
    triggered_test_split,
    write_poisoned_dataset,
)
from jaxrobust.poison.spectral import (
    Detection,
    detection,
    removal_counts,
    remove_top,
    spectral_scores,
)
from jaxrobust.poison.triggers import (
    LOCATIONS,
    PATTERNS,
    Trigger,
    make_trigger,
    stamp,
    trigger_mask,
)

__all__ = [
    "LOCATIONS",
    "PATTERNS",
    "BackdoorMetrics",
    "Detection",
    "Poisoned",
    "Trigger",
    "backdoor_metrics",
    "detection",
    "dirty_label",
    "label_consistent",
    "make_trigger",
    "poison_count",
    "removal_counts",
    "remove_top",
    "spectral_scores",
    "stamp",
    "trigger_mask",
    "triggered_test_split",
    "write_poisoned_dataset",
]
