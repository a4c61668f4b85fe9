"""Per-row transforms of the streamed examples: what training rows leave out (their own pin in
their user's sequences, their own label in their pin's counts), rows shown as a new user's, and
the users an evaluation keeps (:func:`sampled_users`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinrank.data.examples import (
    EVENT_DERIVED_USER_COLUMNS,
    INTEREST_BAGS,
    TRAIN_ENGAGED,
    TRAIN_EVENTS,
)
from pinrank.features.spec import FeatureSpec
from pinrank.features.transforms import hash_ids, hash_params

# the features' id hash (the one the graphs compute), with its own multipliers
EVAL_USERS_HASH, EVAL_USERS_BUCKETS = hash_params("eval_users"), 1_000_000
UNKNOWN_USER_ID = -1  # stands for "an id the model has never seen" in simulated cold-start rows


def sampled_users(user_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Bool mask: the users kept when evaluating on ``fraction`` of them. A user is in or out
    by a hash of its id alone, so a sample is the same in every split, run and process, and a
    larger fraction keeps every user a smaller one keeps.

    Example::

        >>> mask = sampled_users(np.arange(100_000), 0.1)
        >>> round(float(mask.mean()), 2), bool(sampled_users(np.arange(10), 1.0).all())
        (0.1, True)
        >>> ids = np.arange(1000)
        >>> bool((sampled_users(ids, 0.05) <= sampled_users(ids, 0.2)).all())
        True
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"eval user fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.ones(len(user_ids), bool)
    bucket = hash_ids(np.asarray(user_ids), *EVAL_USERS_HASH, buckets=EVAL_USERS_BUCKETS)
    return bucket <= round(fraction * EVAL_USERS_BUCKETS)


def item_sequences(spec: FeatureSpec) -> list[str]:
    """User columns holding item ids: sources of user features that share the vocabulary of the
    item-side ``item_id`` feature (history, seen, ...)."""
    return sorted(
        {
            f.source
            for f in spec.side("user", sparse=True)
            if f.shares and spec[f.shares].side == "item" and spec[f.shares].source == "item_id"
        }
    )


def interest_profiles(spec: FeatureSpec) -> list[str]:
    """User columns holding interest profiles (:data:`~pinrank.data.examples.INTEREST_BAGS`)
    that the spec's user features read."""
    return sorted({f.source for f in spec.side("user")} & set(INTEREST_BAGS))


def leave_target_out(users: pa.Table, targets: np.ndarray, columns: list[str]) -> pa.Table:
    """Remove row ``r``'s target item from its list ``columns``.

    The history columns hold the whole training period, so a training impression's own item is
    in its user's history: a model would learn to find the item in the history, a situation that
    never occurs when scoring later events (whose items are new to the user). Leaving the target
    out makes training rows look like scoring rows.

    Example::

        >>> users = pa.table({"history": [[1, 2, 3], [4], None]})
        >>> leave_target_out(users, np.array([2, 5, 1]), ["history"])["history"].to_pylist()
        [[1, 3], [4], None]
    """
    for name in columns:
        col = users.column(name).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        row = np.repeat(np.arange(len(col)), lengths)
        values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        keep = values != targets[row]
        offsets = np.r_[0, np.cumsum(np.bincount(row[keep], minlength=len(col)))].astype(np.int32)
        new = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values[keep], col.type.value_type), mask=col.is_null()
        )
        users = users.set_column(users.schema.get_field_index(name), name, new)
    return users


def leave_event_out(items: pa.Table, engaged: np.ndarray, real: int) -> pa.Table:
    """Remove each training impression from its own pin's train counts.

    ``train_events`` and ``train_engaged`` count every train impression, the row's own included:
    a row would see its own label in its features (strongly so for pins with few events), which
    never happens when scoring later events. The first ``real`` rows are train impressions; rows
    after them (sampled negatives) are not counted in the statistics and keep them.

    Example::

        >>> items = pa.table({"train_events": [3, 1, 2], "train_engaged": [2, 1, 0]})
        >>> leave_event_out(items, np.array([True, True, False]), real=2).to_pylist()
        [{'train_events': 2, 'train_engaged': 1}, {'train_events': 0, 'train_engaged': 0}, \
{'train_events': 2, 'train_engaged': 0}]
    """
    own = np.zeros(items.num_rows, np.int64)
    own[:real] = 1
    label = np.where(own == 1, np.asarray(engaged, np.int64), 0)
    for name, minus in ((TRAIN_EVENTS, own), (TRAIN_ENGAGED, label)):
        if name not in items.column_names:
            continue
        col = items.column(name)
        new = pc.max_element_wise(
            pc.subtract(col, pa.array(minus, col.type)), pa.scalar(0, col.type)
        )
        items = items.set_column(items.schema.get_field_index(name), name, new)
    return items


def as_cold_start(users: pa.Table, rows: np.ndarray) -> pa.Table:
    """Users at ``rows`` (bool mask) made to look like new users: the columns derived from train
    events (:data:`~pinrank.data.examples.EVENT_DERIVED_USER_COLUMNS`) become null, as for a user
    without train events, and the id becomes :data:`UNKNOWN_USER_ID`, out of every vocabulary.
    Sign-up attributes (demographics, stated interests) stay.

    Example::

        >>> users = pa.table({"user_id": [7, 8], "gender": ["F", "M"], "history": [[1], [2, 3]]})
        >>> new = as_cold_start(users, np.array([False, True]))
        >>> new.to_pylist()  # doctest: +NORMALIZE_WHITESPACE
        [{'user_id': 7, 'gender': 'F', 'history': [1]},
         {'user_id': -1, 'gender': 'M', 'history': None}]
    """
    if not rows.any():
        return users
    mask = pa.array(rows)
    for name in (*EVENT_DERIVED_USER_COLUMNS, "user_id"):
        if name not in users.column_names:
            continue
        col = users.column(name)
        fill = (
            pa.scalar(UNKNOWN_USER_ID, col.type) if name == "user_id" else pa.scalar(None, col.type)
        )
        new = pc.if_else(mask, fill, col)
        users = users.set_column(users.schema.get_field_index(name), name, new)
    return users
