"""A synthetic homefeed that looks like Pinterest, with a known ground truth.

Pins live on boards (a bipartite pin-board graph: an origin board plus saves to other boards of the
same interest); boards belong to creators; interests are heavily imbalanced (log-linear shares, the
largest about 100x the smallest: roughly 10% of pins down to 0.1% with the default 40 interests).
Users follow some of their hidden interests, and their hidden interests depend on demographics, so
both history and sign-up data carry signal. Impressions are drawn the way a feed would show them
(mostly from a user's interests, some from the popular catalogue) at a position, and engagement
comes from the hidden model in :mod:`pinrank.data.truth`.

Everything is deterministic by seed and generated in chunks of users, so memory is bounded by
one chunk and one output shard whatever the number of users. Real logs are dirty, so a fraction
``dirty`` of rows get null or out-of-range values (null age, age 0 or 150, null country, null
quality prior, empty embedding); the feature spec's policies must cope with them.

Example::

    >>> import tempfile
    >>> from pinrank.data.io import read_table
    >>> out = generate(SyntheticConfig(n_users=200, n_items=100, n_events=1000), tempfile.mkdtemp())
    >>> read_table(out / "events", "events").num_rows
    1000
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinrank.data.drift import drift_plan, drifted
from pinrank.data.io import ShardWriter, write_parquet
from pinrank.data.truth import TruthParams, affinity, examination, write_truth

COUNTRIES = ("US", "BR", "MX", "GB", "DE", "FR", "JP", "IN", "CA", "AU", "ES", "IT")
SURFACES = ("home", "search", "related")
ENGAGEMENTS = ("click", "save", "closeup")
AGE_BUCKETS = (18, 25, 35, 45, 55, 65)
TRUTH_USERS = pa.schema(
    [
        ("user_id", pa.int64()),
        ("interests", pa.list_(pa.int64())),
        ("weights", pa.list_(pa.float32())),
        ("bias", pa.float32()),
    ]
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic data set. The defaults are the small demo set."""

    n_users: int = 4000
    n_items: int = 3000
    n_events: int = 200_000
    n_boards: int = 400
    n_creators: int = 150
    n_interests: int = 40
    # more interests than interest_head: the first interest_head keep the head's shape (about
    # 10% of pins down to 0.1%) with 1 - tail_share of the pins, the rest a Zipf tail below
    interest_head: int = 40
    tail_share: float = 0.1
    n_countries: int = 8
    embedding_dim: int = 8
    max_hidden_interests: int = 6
    personal_share: float = 0.6  # impressions drawn from the user's interests (rest: popular)
    max_position: int = 50
    dirty: float = 0.01
    start_ts: int = 1_700_000_000
    days: int = 60
    # drift over the last drift_days days (0: none; the default data is unchanged): this share
    # of the pins is created then (each on a day of that period, shown only after it), and
    # rising_interests interests rise (the share rise of their earlier impressions moves into
    # the period): what daily retraining has to follow (pinrank retrain)
    drift_days: int = 0
    new_pin_share: float = 0.0
    rising_interests: int = 0
    rise: float = 0.5
    seed: int = 0
    users_per_chunk: int = 200_000
    rows_per_shard: int = 5_000_000
    truth: TruthParams = field(default_factory=TruthParams)

    def __post_init__(self) -> None:
        if self.drift_days < 0 or self.drift_days > self.days:
            raise ValueError(f"drift_days must be in [0, days={self.days}], got {self.drift_days}")
        if not 0.0 <= self.new_pin_share < 1.0 or not 0.0 <= self.rise <= 1.0:
            raise ValueError("new_pin_share must be in [0, 1) and rise in [0, 1]")
        if self.n_boards < self.n_interests:
            raise ValueError(
                f"n_boards ({self.n_boards}) must be >= n_interests ({self.n_interests}): every "
                "interest has a board"
            )


def interest_shares(n: int, head: int | None = None, tail_share: float = 0.1) -> np.ndarray:
    """Interest shares summing to 1: log-linear, largest / smallest = 100, for up to ``head``
    interests (every interest when ``head`` is None); beyond ``head``, those ``head`` keep that
    shape with ``1 - tail_share`` of the mass and the others share ``tail_share`` as a Zipf tail
    (``1 / (rank + offset)``, the offset chosen so that it starts at the head's smallest share).
    Raises ValueError when ``tail_share`` cannot be spread that thin (too few tail interests).

    Example::

        >>> s = interest_shares(40)
        >>> round(float(s[0]), 3), round(float(s[-1]), 4), round(float(s[0] / s[-1]))
        (0.112, 0.0011, 100)
        >>> s = interest_shares(20_000, head=40)
        >>> round(float(s[0]), 3), round(float(s[39]), 4), round(float(s[40]), 4)
        (0.101, 0.001, 0.001)
        >>> round(float(s[40:].sum()), 3), float(s[-1]) < 1e-5
        (0.1, True)
    """
    head = n if head is None else min(head, n)
    s = 0.01 ** (np.arange(head) / max(head - 1, 1))
    s /= s.sum()
    if head == n:
        return s
    if not 0.0 < tail_share < 1.0:
        raise ValueError(f"tail_share must lie in (0, 1), got {tail_share}")
    head_min = s[-1] * (1.0 - tail_share)
    rank = np.arange(1, n - head + 1, dtype=np.float64)

    def tail(offset: float) -> np.ndarray:  # Zipf from rank 1 + offset, tail_share in all
        t = 1.0 / (rank + offset)
        return t / t.sum() * tail_share

    lo, hi = 0.0, float(n) * 1e3  # the smallest offset whose first share is below head_min
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if tail(mid)[0] > head_min else (lo, mid)
    if tail(hi)[0] > head_min * (1.0 + 1e-6):
        raise ValueError(
            f"{n - head} tail interests cannot hold tail_share={tail_share} below the head's "
            f"smallest share ({head_min:.2g}): raise n_interests or lower tail_share"
        )
    return np.concatenate([s * (1.0 - tail_share), tail(hi)])


class _Catalogue:
    """Boards and pins: the fixed world every chunk of users is drawn against."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        k = cfg.n_interests
        self.shares = interest_shares(k, cfg.interest_head, cfg.tail_share)
        # every interest gets a board, the rest follow the shares
        self.board_interest = np.concatenate(
            [
                np.arange(min(k, cfg.n_boards)),
                rng.choice(k, max(cfg.n_boards - k, 0), p=self.shares),
            ]
        )
        creator_w = 1.0 / np.arange(1, cfg.n_creators + 1) ** 0.8
        self.board_creator = rng.choice(cfg.n_creators, cfg.n_boards, p=creator_w / creator_w.sum())
        board_size_w = rng.pareto(1.5, cfg.n_boards) + 1.0  # heavy-tailed board sizes
        primary = rng.choice(k, cfg.n_items, p=self.shares)
        self.board = self._pick_boards(primary, board_size_w, rng)
        secondary = np.where(
            rng.random(cfg.n_items) < 0.35, rng.choice(k, cfg.n_items, p=self.shares), -1
        )
        secondary[secondary == primary] = -1
        self.interests = np.stack([primary, secondary], axis=1)  # [I, 2], -1 padded
        self.quality = rng.normal(0.0, 1.0, cfg.n_items)
        centroids = rng.normal(0.0, 1.0, (k, cfg.embedding_dim))
        self.embedding = (
            centroids[primary] + rng.normal(0.0, 0.7, (cfg.n_items, cfg.embedding_dim))
        ).astype(np.float32)
        self.extra_boards = [self._pick_boards(primary, board_size_w, rng) for _ in range(2)]
        self.extra_mask = rng.random((2, cfg.n_items)) < np.array([[0.5], [0.2]])
        self._sampler_index(primary, rng)

    def _pick_boards(
        self, interest: np.ndarray, weight: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """For each pin, a board of its interest, chosen in proportion to board size."""
        order = np.lexsort((np.arange(len(self.board_interest)), self.board_interest))
        key = self.board_interest[order] + _within_cumsum(self.board_interest[order], weight[order])
        return order[
            np.searchsorted(key, interest + rng.random(len(interest)) * (1 - 1e-9), side="right")
        ]

    def _sampler_index(self, primary: np.ndarray, rng: np.random.Generator) -> None:
        """Pins sorted by primary interest with within-interest popularity, for fast sampling."""
        popularity = np.exp(0.8 * self.quality) * (rng.pareto(2.0, len(primary)) + 1.0)
        self.order = np.lexsort((np.arange(len(primary)), primary))
        self.key = primary[self.order] + _within_cumsum(primary[self.order], popularity[self.order])
        # P(pin | its interest was drawn): what the oracle needs to know exposure
        per_interest = np.bincount(primary, weights=popularity, minlength=len(self.shares))
        self.exposure = popularity / per_interest[primary]
        self.present = np.bincount(primary, minlength=len(self.shares)) > 0

    def sample_pins(self, interest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One pin per entry of ``interest``, by popularity within that interest."""
        u = rng.random(len(interest)) * (1 - 1e-9)
        idx = np.searchsorted(self.key, interest + u, side="right")
        return self.order[np.minimum(idx, len(self.order) - 1)]


def _within_cumsum(groups: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Cumulative share of ``weight`` within each run of equal (sorted) ``groups``, in (0, 1]."""
    cum = np.cumsum(weight)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(groups)]))
    before = np.r_[0.0, cum][starts][run]
    total = (cum[np.r_[starts[1:] - 1, len(groups) - 1]] - np.r_[0.0, cum][starts])[run]
    return (cum - before) / total


class _Demographics:
    """Interest preferences of demographic groups: what makes cold-start users predictable."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        k = cfg.n_interests
        self.gender = rng.normal(0, 1.0, (3, k))  # F, M, unspecified
        self.age = rng.normal(0, 0.8, (len(AGE_BUCKETS) + 1, k))
        self.country = rng.normal(0, 0.6, (cfg.n_countries, k))
        self.log_shares = np.log(interest_shares(k, cfg.interest_head, cfg.tail_share))

    def preference(
        self, gender: np.ndarray, age_bucket: np.ndarray, country: np.ndarray
    ) -> np.ndarray:
        """[N, K] probability of each interest for users of these groups."""
        z = self.log_shares + self.gender[gender] + self.age[age_bucket] + self.country[country]
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def sample(
        self,
        gender: np.ndarray,
        age_bucket: np.ndarray,
        country: np.ndarray,
        rng: np.random.Generator,
        draws: int,
    ) -> np.ndarray:
        """[N, draws] interests drawn from each user's :meth:`preference`, in blocks of users so
        that memory stays bounded with tens of thousands of interests."""
        u = rng.random((len(gender), draws))
        out = np.empty((len(gender), draws), np.int64)
        block = max(1, _SAMPLE_BLOCK // len(self.log_shares))
        for a in range(0, len(gender), block):
            rows = slice(a, a + block)
            out[rows] = _sample_rows(
                self.preference(gender[rows], age_bucket[rows], country[rows]), u[rows]
            )
        return out


_SAMPLE_BLOCK = 1 << 22  # (user, interest) probabilities held at once


def _sample_rows(prob: np.ndarray, u: np.ndarray) -> np.ndarray:
    """[N, draws] categorical draws, one row of probabilities per user and ``u`` [N, draws]
    uniforms in [0, 1): the number of cumulative probabilities below ``u`` times the row's total.
    """
    cum = np.cumsum(prob, axis=1)
    return (cum[:, None, :] < (u * cum[:, -1:])[:, :, None]).sum(axis=2)


def _users_chunk(
    cfg: SyntheticConfig, demo: _Demographics, ids: np.ndarray, rng: np.random.Generator
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Observed users table and hidden truth for the users ``ids``."""
    n, m = len(ids), cfg.max_hidden_interests
    gender = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    age = np.clip(np.rint(rng.normal(34, 12, n)), 13, 90).astype(np.int32)
    age_bucket = np.searchsorted(np.array(AGE_BUCKETS), age, side="right")
    cw = 1.0 / np.arange(1, cfg.n_countries + 1)
    country = rng.choice(cfg.n_countries, n, p=cw / cw.sum())
    region = rng.integers(0, 5, n)
    hidden = demo.sample(gender, age_bucket, country, rng, m)  # [N, M] with repeats
    n_hidden = np.minimum(1 + rng.poisson(1.5, n), m)
    keep = np.arange(m)[None, :] < n_hidden[:, None]
    dup = (hidden[:, :, None] == hidden[:, None, :]) & (np.tril(np.ones((m, m), bool), -1)[None])
    keep &= ~dup.any(axis=2)
    weights = np.where(keep, rng.exponential(1.0, (n, m)), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    hidden = np.where(keep, hidden, -1)
    followed_mask = keep & (rng.random((n, m)) < 0.6)
    truth = {
        "interests": hidden,
        "weights": weights,
        "bias": rng.normal(0, cfg.truth.user_bias_std, n),
    }

    countries = np.array(COUNTRIES[: cfg.n_countries], dtype=object)
    age_obs = _dirty_ints(age, cfg.dirty, rng)
    users = pa.table(
        {
            "user_id": ids,
            "country": _dirty_nulls(countries[country], cfg.dirty, rng),
            "region": pa.array(
                [f"{c}-{r}" for c, r in zip(countries[country], region, strict=True)]
            ),
            "location": pa.array(
                [
                    f"{c}-{r}-{loc}"
                    for c, r, loc in zip(
                        countries[country], region, rng.integers(0, 20, n), strict=True
                    )
                ]
            ),
            "gender": pa.array(np.array(["F", "M", "U"], dtype=object)[gender]),
            "age": age_obs,
            "occupation": pa.nulls(n, pa.string()),
            "signup_surface": pa.array(
                np.array(["ios", "android", "web"], dtype=object)[
                    rng.choice(3, n, p=[0.45, 0.35, 0.2])
                ]
            ),
            "signup_ts": cfg.start_ts - rng.integers(0, 3 * 365 * 86400, n),
            "interests": _list_array(np.where(followed_mask, hidden, -1)),
        }
    )
    return users, truth


def _dirty_nulls(values: np.ndarray, rate: float, rng: np.random.Generator) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < rate)


def _dirty_ints(values: np.ndarray, rate: float, rng: np.random.Generator) -> pa.Array:
    """Nulls at ``rate`` and out-of-range values (0 or 150) at ``rate / 4``."""
    values = values.copy()
    bad = rng.random(len(values)) < rate / 4
    values[bad] = rng.choice(np.array([0, 150], dtype=values.dtype), int(bad.sum()))
    return pa.array(values, mask=rng.random(len(values)) < rate)


def _list_array(padded: np.ndarray) -> pa.Array:
    """[N, W] -1-padded int array -> list<int64> without the padding."""
    valid = padded >= 0
    offsets = np.r_[0, np.cumsum(valid.sum(axis=1))].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(padded[valid].astype(np.int64)))


def _events_chunk(
    cfg: SyntheticConfig,
    cat: _Catalogue,
    ids: np.ndarray,
    counts: np.ndarray,
    truth: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> pa.Table:
    """Impressions of the users ``ids`` (``counts`` each) with labels from the hidden model."""
    p = cfg.truth
    row = np.repeat(np.arange(len(ids)), counts)  # user row of each event
    e = len(row)
    personal = rng.random(e) < cfg.personal_share
    # personal impressions: an interest drawn from the user's hidden weights
    cum = np.cumsum(truth["weights"][row], axis=1)
    pick = (cum < rng.random((e, 1)) * cum[:, -1:]).sum(axis=1)
    mine = truth["interests"][row, np.minimum(pick, cum.shape[1] - 1)]
    popular = rng.choice(len(cat.shares), e, p=cat.shares)
    interest = np.where(personal & (mine >= 0), mine, popular)
    interest = np.where(cat.present[interest], interest, popular)
    item = cat.sample_pins(interest, rng)
    position = np.minimum(rng.geometric(0.08, e) - 1, cfg.max_position - 1).astype(np.int32)
    aff = affinity(truth["interests"][row], truth["weights"][row], cat.interests[item])
    logit = (
        p.base_logit
        + truth["bias"][row]
        + p.affinity_weight * aff
        + p.quality_weight * cat.quality[item]
    )
    prob = examination(position, p.position_decay) / (
        1.0 + np.exp(-(logit + rng.normal(0, p.noise, e)))
    )
    engaged = rng.random(e) < prob
    kind = np.array(ENGAGEMENTS, dtype=object)[rng.choice(3, e, p=[0.5, 0.3, 0.2])]
    ts = cfg.start_ts + rng.integers(0, cfg.days * 86400, e)
    if cfg.drift_days:
        ts = drifted(cfg, ts, item, cat.interests[item, 0], rng)
    order = np.lexsort((item, ts, row))
    return pa.table(
        {
            "user_id": ids[row][order],
            "item_id": item[order].astype(np.int64),
            "ts": ts[order],
            "surface": pa.array(
                np.array(SURFACES, dtype=object)[rng.choice(3, e, p=[0.7, 0.2, 0.1])][order]
            ),
            "position": position[order],
            "engaged": engaged[order],
            "engagement": pa.array(np.where(engaged, kind, "none")[order]),
        }
    )


def _items_tables(
    cfg: SyntheticConfig, cat: _Catalogue, rng: np.random.Generator
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Observed items, the pin-board graph and the items' hidden truth."""
    n = cfg.n_items
    quality_obs = 1.0 / (1.0 + np.exp(-(cat.quality + rng.normal(0, 0.5, n))))
    emb = cat.embedding.copy()
    empty = rng.random(n) < cfg.dirty / 4
    emb_offsets = np.r_[0, np.cumsum(np.where(empty, 0, cfg.embedding_dim))].astype(np.int32)
    items = pa.table(
        {
            "item_id": np.arange(n, dtype=np.int64),
            "board_id": cat.board.astype(np.int64),
            "creator_id": cat.board_creator[cat.board].astype(np.int64),
            "interests": _list_array(cat.interests),
            "embedding": pa.ListArray.from_arrays(
                pa.array(emb_offsets), pa.array(emb[~empty].ravel())
            ),
            "quality": _dirty_nulls(quality_obs.astype(np.float32), cfg.dirty, rng),
            "created_ts": cfg.start_ts - rng.integers(0, 365 * 86400, n),
        }
    )
    if cfg.drift_days:  # the new pins' creation times
        created = drift_plan(cfg)[0]
        old = items.column("created_ts").to_numpy()
        items = items.set_column(items.schema.get_field_index("created_ts"), "created_ts",
                                 pa.array(np.where(created >= 0, created, old)))  # fmt: skip
    edges_item = [np.arange(n)] + [np.flatnonzero(m) for m in cat.extra_mask]
    edges_board = [cat.board] + [
        b[m] for b, m in zip(cat.extra_boards, cat.extra_mask, strict=True)
    ]
    graph = (
        pa.table(
            {
                "item_id": np.concatenate(edges_item).astype(np.int64),
                "board_id": np.concatenate(edges_board).astype(np.int64),
                "origin": np.r_[
                    np.ones(n, bool), np.zeros(sum(len(x) for x in edges_item[1:]), bool)
                ],
            }
        )
        .group_by(["item_id", "board_id"])
        .aggregate([("origin", "max")])
        .rename_columns(["item_id", "board_id", "origin"])
    )
    truth = pa.table(
        {
            "item_id": items["item_id"],
            "interests": items["interests"],
            "quality": cat.quality.astype(np.float32),
            "exposure": cat.exposure,
        }
    )
    return items, graph, truth


def generate(cfg: SyntheticConfig, out: str | Path) -> Path:
    """Write a synthetic data set to ``out``: ``users/``, ``items/``, ``events/``, ``pin_boards/``
    (Parquet shards), ``truth/`` (the hidden model, for :class:`~pinrank.data.truth.Oracle`) and
    ``config.json``. Deterministic for a given ``cfg``. Returns ``out`` as a Path.
    """
    out = Path(out)
    rng = np.random.default_rng([cfg.seed, 0])
    cat = _Catalogue(cfg, rng)
    demo = _Demographics(cfg, rng)
    items, graph, item_truth = _items_tables(cfg, cat, rng)
    write_parquet(items, out / "items" / "part-00000.parquet")
    write_parquet(graph, out / "pin_boards" / "part-00000.parquet")
    activity = rng.lognormal(0.0, 1.0, cfg.n_users)
    counts = rng.multinomial(cfg.n_events, activity / activity.sum())
    users_w = ShardWriter(out / "users", "users", cfg.rows_per_shard)
    # a chunk holds whole users: never cut one across shards (prepare splits users per shard)
    events_w = ShardWriter(out / "events", "events", cfg.rows_per_shard, split_writes=False)
    write_truth(out / "truth", cfg.truth, item_truth, cfg.personal_share, cat.shares)
    with pq.ParquetWriter(out / "truth" / "users.parquet", TRUTH_USERS, compression="zstd") as tw:
        for c, start in enumerate(range(0, cfg.n_users, cfg.users_per_chunk)):
            crng = np.random.default_rng([cfg.seed, 1, c])
            ids = np.arange(start, min(start + cfg.users_per_chunk, cfg.n_users), dtype=np.int64)
            users, truth = _users_chunk(cfg, demo, ids, crng)
            users_w.write(users)
            events_w.write(_events_chunk(cfg, cat, ids, counts[ids], truth, crng))
            tw.write_table(_truth_users(ids, truth))
    users_w.close()
    events_w.close()
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def _truth_users(ids: np.ndarray, truth: dict[str, np.ndarray]) -> pa.Table:
    valid = truth["interests"] >= 0
    offsets = pa.array(np.r_[0, np.cumsum(valid.sum(axis=1))].astype(np.int32))
    return pa.table(
        {
            "user_id": ids,
            "interests": pa.ListArray.from_arrays(offsets, pa.array(truth["interests"][valid])),
            "weights": pa.ListArray.from_arrays(
                offsets, pa.array(truth["weights"][valid].astype(np.float32))
            ),
            "bias": truth["bias"].astype(np.float32),
        },
        schema=TRUTH_USERS,
    )
