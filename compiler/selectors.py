"""Label selector semantics (metav1.LabelSelector), evaluated against label maps.

matchLabels and matchExpressions are AND-ed; the empty selector matches everything.
``NotIn`` and ``DoesNotExist`` match objects that lack the key, as in
k8s.io/apimachinery/pkg/labels (a missing key is "not in" any set).
"""

from __future__ import annotations

from collections.abc import Mapping

from .model import LabelSelector, Requirement


def requirement_matches(req: Requirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    raise ValueError(f"unknown label selector operator {req.operator!r}")


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True iff every matchLabels pair and every matchExpressions requirement holds."""
    for key, value in selector.match_labels:
        if labels.get(key) != value:
            return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions)
