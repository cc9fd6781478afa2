"""Stable node names for saved OpenVINO models.

OpenVINO names a node that nobody named after a process-wide counter (``Constant_60949``):
the same graph, built in two processes that created a different number of nodes before
it, saves to different XML. Renaming those nodes by their place in the graph makes the
saved IR a function of the graph alone, so a replayed recipe gives the same bytes.
"""

from __future__ import annotations

__all__ = ["canonical_names"]


def canonical_names(model) -> int:
    """Rename every auto-named node of the ``openvino.Model`` after its topological index;
    returns how many were renamed. Names that someone chose are kept."""
    ops = list(model.get_ordered_ops())
    taken = {op.get_friendly_name() for op in ops}
    renamed = 0
    for index, op in enumerate(ops):
        if op.get_friendly_name() != op.get_name():     # named by the model or NNCF
            continue
        name = f"{op.get_type_name()}_n{index}"
        while name in taken:
            name += "_"
        op.set_friendly_name(name)
        taken.add(name)
        renamed += 1
    return renamed
