"""Typed configuration: YAML in ``conf/`` loaded into frozen dataclasses, validated once.

Every stage receives a :class:`Config`. Loading is strict: an unknown key, a value of the
wrong type or a missing required value raises :class:`ConfigError` naming the key and the
file it came from, before any work starts. ``--set section.key=value`` overrides are applied
to the raw YAML before validation, so they are checked the same way.

Paths are URLs: a plain path (``runs/local``), ``file://``, ``s3a://``, ``gs://`` or
``hdfs://``. Spark reads ``s3a://``; fsspec-based readers accept it too (see
:func:`clickgraph.core.fs.fsspec_url`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clickgraph.core.errors import ClickgraphError

_MISSING = dataclasses.MISSING


class ConfigError(ClickgraphError, ValueError):
    """A configuration problem, with the offending key and file in the message."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class PathsConfig:
    """Where each stage reads and writes. Stage folders default to ``<root>/<stage>``."""

    root: str
    logs: str | None = None
    graph: str | None = None
    partitions: str | None = None
    train: str | None = None
    eval: str | None = None
    embeddings: str | None = None
    report: str | None = None

    def stage(self, name: str) -> str:
        """URL of a stage's output folder, e.g. ``stage("graph")`` -> ``runs/local/graph``."""
        value = getattr(self, name)
        return value if value else self.root.rstrip("/") + "/" + name


@dataclass(frozen=True)
class SparkConfig:
    """How Spark jobs get a session. Ignored where ``spark-submit`` already set a master."""

    master: str
    app_name: str = "clickgraph"
    ui_enabled: bool = False
    driver_memory: str = "4g"
    shuffle_partitions: int = 8
    bind_address: str = "127.0.0.1"
    extra_conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RayConfig:
    """Ray cluster to attach to (``address``) or start locally (``address: null``)."""

    address: str | None = None
    dashboard_host: str = "127.0.0.1"
    num_cpus: int | None = None


@dataclass(frozen=True)
class GenerateConfig:
    """Synthetic homepage logs. Sizes are totals at the end of the period.

    Users and content arrive over the period (``initial_*_fraction`` exist before day 0),
    so every day has new users with no history and fresh content.
    """

    seed: int = 7
    start_date: str = "2026-03-02"
    num_days: int = 21
    num_users: int = 10_000
    num_content: int = 3_000
    num_articles: int = 6_000
    num_brands: int = 200
    num_categories: int = 24
    num_communities: int = 8
    initial_user_fraction: float = 0.6
    initial_content_fraction: float = 0.3
    impressions_per_user_day: float = 4.0
    likes_per_user: float = 1.5
    feed_length: int = 30
    targeted_feed_share: float = 0.4
    video_lover_fraction: float = 0.25
    drifting_user_fraction: float = 0.2
    user_click_propensity_sd: float = 1.0
    formats: list[Literal["json", "parquet"]] = field(
        default_factory=lambda: ["json", "parquet"]
    )
    bad_row_fraction: float = 0.0
    num_output_files: int = 0


# Graph store (build-graph). The canonical names below are the store's contract: node
# types, the static attributes a node table may hold, and the links an entity table may
# carry. spark_jobs/schemas.py builds its Spark schemas from them.
GRAPH_NODE_TYPES = ("user", "content", "article", "brand", "category")
GRAPH_NODE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "user": ("country", "language", "device", "age_band", "gender"),
    "content": ("content_type",),
    "article": ("price_band",),
    "brand": ("name", "tier"),
    "category": ("group",),
}
# entity table (node type) -> link name -> (relation name, target node type)
GRAPH_ENTITY_LINKS: dict[str, dict[str, tuple[str, str]]] = {
    "content": {"article": ("features", "article"), "brand": ("of", "brand"),
                "category": ("in", "category")},
    "article": {"brand": ("of", "brand"), "category": ("in", "category")},
}
GRAPH_EVENT_TYPES = ("impression", "click", "view", "brand_like")
GRAPH_REQUIRED_NODE_TYPES = ("user", "content")
GRAPH_REQUIRED_EVENT_TYPES = ("impression",)
"""What every platform has: users, content and impressions (the training examples).
Every other node type and event type may be left out of the mapping (docs/graph-store.md,
"A platform's subset of the schema")."""
# event type -> the event field naming its non-user end, and that end's node type
GRAPH_EVENT_TARGETS: dict[str, tuple[str, str]] = {
    "impression": ("content_id", "content"), "click": ("content_id", "content"),
    "view": ("content_id", "content"), "brand_like": ("brand_id", "brand")}
GRAPH_RELATION_NAMES = ("impressed", "clicked", "viewed", "likes", "features", "of", "in")


@dataclass(frozen=True)
class GraphEventColumns:
    """Source column of each event field. ``null`` marks an optional field as absent."""

    event_id: str = "event_id"
    event_type: str = "event_type"
    timestamp: str = "ts_ms"
    user_id: str = "user_id"
    content_id: str | None = "content_id"
    brand_id: str | None = "brand_id"
    position: str | None = "position"
    clicked: str | None = "clicked"
    dwell_ms: str | None = "dwell_ms"


@dataclass(frozen=True)
class GraphEventsInput:
    """Where the events are and how to read them.

    ``day_partition`` names the folder key of day partitions (``dt=YYYY-MM-DD``); with
    ``null`` the input is one unpartitioned table and an event's day is the UTC date of
    its timestamp. ``event_types`` maps each canonical type to the source's names for it;
    a type the platform does not have is ``null``, ``[]`` or left out
    (:meth:`mapped_event_types`).
    """

    path: str | None = None  # null: <paths.logs>/events/<json|parquet>
    format: Literal["auto", "json", "parquet"] = "auto"
    day_partition: str | None = "dt"
    timestamp_unit: Literal["ms", "s", "iso"] = "ms"
    columns: GraphEventColumns = field(default_factory=GraphEventColumns)
    event_types: dict[str, list[str] | None] = field(default_factory=lambda: {
        "impression": ["impression"], "click": ["click"], "view": ["view"],
        "brand_like": ["brand_like"]})
    # A platform that logs impressions with a click label but no click events: derive
    # one user -> content clicked edge per clicked impression, at the impression's time
    # plus this many seconds (when the platform knows the label, e.g. its attribution
    # window). null: clicked edges come from click events only.
    clicks_from_labels_after_s: int | None = None

    def mapped_event_types(self) -> dict[str, list[str]]:
        """Event type -> source names, for the types the platform has (a non-empty list),
        in GRAPH_EVENT_TYPES order."""
        return {t: list(self.event_types[t]) for t in GRAPH_EVENT_TYPES
                if self.event_types.get(t)}


@dataclass(frozen=True)
class GraphEntityInput:
    """One entity table: its id column, optional created time, attributes and links.

    ``attributes`` maps a canonical attribute name (GRAPH_NODE_ATTRIBUTES) to a source
    column; ``links`` maps a link name (GRAPH_ENTITY_LINKS) to a source column holding one
    id, an array of ids, or ids joined by ``list_delimiter``. A section written in YAML
    replaces the default one whole, so list every column the table has.
    """

    id: str
    path: str | None = None  # null: <paths.logs>/entities/<users|content|articles|brands|categories>
    format: Literal["parquet", "json", "csv"] = "parquet"
    created_time: str | None = None
    time_unit: Literal["ms", "s", "iso"] = "iso"  # ignored for native timestamp columns
    attributes: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    list_delimiter: str = "|"


@dataclass(frozen=True)
class GraphEntitiesInput:
    """Entity tables per node type; the defaults read ``clickgraph generate`` output.

    A node type whose section is ``null`` has no entity table: it is left out of the
    graph, unless a table's link names it (content's ``category`` column, say), in which
    case its nodes are the ids the links hold, without attributes or creation time
    (:meth:`node_types`). ``user`` and ``content`` always need a table.
    """

    user: GraphEntityInput = field(default_factory=lambda: GraphEntityInput(
        id="user_id", created_time="signup_time",
        attributes={a: a for a in GRAPH_NODE_ATTRIBUTES["user"]}))
    content: GraphEntityInput = field(default_factory=lambda: GraphEntityInput(
        id="content_id", created_time="created_time", attributes={"content_type": "content_type"},
        links={"article": "article_ids", "brand": "brand_ids", "category": "category_id"}))
    article: GraphEntityInput | None = field(default_factory=lambda: GraphEntityInput(
        id="article_id", attributes={"price_band": "price_band"},
        links={"brand": "brand_id", "category": "category_id"}))
    brand: GraphEntityInput | None = field(default_factory=lambda: GraphEntityInput(
        id="brand_id", attributes={"name": "name", "tier": "tier"}))
    category: GraphEntityInput | None = field(default_factory=lambda: GraphEntityInput(
        id="category_id", attributes={"group": "group"}))

    def tables(self) -> dict[str, GraphEntityInput]:
        """Node type -> its entity table, for the types that have one (GRAPH_NODE_TYPES
        order)."""
        return {t: spec for t in GRAPH_NODE_TYPES if (spec := getattr(self, t)) is not None}

    def link_only_types(self) -> dict[str, list[tuple[str, str]]]:
        """Node types without a table that a table's link names -> ``(table, link)`` of
        those links; their nodes are the ids the links hold."""
        tables = self.tables()
        out: dict[str, list[tuple[str, str]]] = {}
        for table, spec in tables.items():
            for link in spec.links:
                target = GRAPH_ENTITY_LINKS.get(table, {}).get(link, (None, None))[1]
                if target is not None and target not in tables:
                    out.setdefault(target, []).append((table, link))
        return {t: out[t] for t in GRAPH_NODE_TYPES if t in out}

    def node_types(self) -> tuple[str, ...]:
        """The graph's node types: those with a table or named by a link (GRAPH_NODE_TYPES
        order)."""
        present = set(self.tables()) | set(self.link_only_types())
        return tuple(t for t in GRAPH_NODE_TYPES if t in present)


@dataclass(frozen=True)
class GraphInputConfig:
    """The logs build-graph reads (the bring-your-own-logs mapping)."""

    events: GraphEventsInput = field(default_factory=GraphEventsInput)
    entities: GraphEntitiesInput = field(default_factory=GraphEntitiesInput)


@dataclass(frozen=True)
class GraphConfig:
    """The graph store job. Times are ISO-8601 strings (UTC unless an offset is given).

    An event is kept only with a timestamp in ``[min_event_time, max_event_time]``
    (``max_event_time: null`` = the job's start + ``clock_slack_s``) and, for
    day-partitioned input, within ``log_day_slack_s`` of its partition's day.
    """

    max_quarantine_fraction: float = 0.05
    min_event_time: str = "2000-01-01T00:00:00+00:00"
    max_event_time: str | None = None
    clock_slack_s: int = 3600
    log_day_slack_s: int = 86_400
    relation_weights: dict[str, float] = field(default_factory=lambda: {
        "impressed": 0.2, "clicked": 1.0, "viewed": 0.8, "likes": 1.0,
        "features": 0.5, "of": 0.5, "in": 0.3})
    content_type_weight: dict[str, float] = field(default_factory=dict)
    input: GraphInputConfig = field(default_factory=GraphInputConfig)


@dataclass(frozen=True)
class PartitionConfig:
    """METIS partitioning of the graph store into one shard per training worker.

    Vertex weights balance training events (impressions, counted at their user) and
    incident edges. Above ``edge_budget`` aggregated edges the graph is first coarsened in
    Spark, so METIS only ever sees a graph of at most that size.
    """

    num_parts: int = 2
    imbalance: float = 0.05
    edge_budget: int = 5_000_000
    seed: int = 0
    quality_fanouts: list[int] = field(default_factory=lambda: [10, 5])
    quality_seeds: int = 10_000
    placement_tolerance: float = 0.1
    max_cut_drift: float = 0.25
    on_drift: Literal["recommend", "repartition"] = "recommend"
    shard_book: Literal["metis", "random"] = "metis"  # random: cut shards by the hash book (a baseline)


@dataclass(frozen=True)
class ModelConfig:
    """The GNN's sizes and choices (``trainer/model.py:ClickGNN`` reads exactly these)."""

    hidden_dim: int = 64
    time_dim: int = 16
    num_layers: int = 2
    conv: Literal["sage", "attention"] = "sage"
    dropout: float = 0.1
    activity_counts: bool = True  # seeds' as-of edge counts per relation (all time, last 24 h)
    num_positions: int = 64       # feed positions with an embedding of their own; later ones share the last
    context_dim: int = 8          # size of the position and hour embeddings
    id_dropout: float = 0.25      # training rows whose node-id vector is dropped (trains the fallback)
    history_attention: bool = True  # the candidate over the user's history, the user over the audience
    history_match: bool = False   # also the per-relation mean and max match of the candidate
    pair_score: bool = True       # a trained user . content term in the click logit (the exported dot)


@dataclass(frozen=True)
class TrainConfig:
    """Training: examples, temporal split, sampling and optimisation.

    The last ``test_days`` days of the graph are the test window, the ``val_days`` before
    them validation, everything earlier training. Each training impression is an example
    (clicked = positive, shown but not clicked = hard negative), plus
    ``random_negative_ratio`` random negatives per impression drawn from content created
    strictly before the impression.
    """

    epochs: int = 1
    batch_size: int = 512
    # global: batch_size impressions per step over all workers (each takes its share; the
    # optimisation is the same whatever the worker count); worker: batch_size per worker
    # (a step sees workers x batch_size; DDP's usual weak scaling, BENCHMARKS.md)
    batch_scope: Literal["global", "worker"] = "global"
    max_train_events: int = 0
    max_eval_events: int = 40_000
    eval_batch_size: int = 512
    fanouts: list[int] = field(default_factory=lambda: [10, 5])
    relation_fanouts: dict[str, list[int]] = field(default_factory=lambda: {"impressed": [4, 2]})
    strategy: Literal["uniform", "most_recent"] = "uniform"
    # uniform draws weighted by the store's per-edge weight (graph.relation_weights x
    # graph.content_type_weight): a video weight of 3 makes a user's video interactions
    # 3x as likely to fill the fanout (docs/training.md); most_recent ignores it
    weighted_sampling: bool = True    # (with equal weights in a relation: plain uniform draws)
    # content type -> weight of a clicked example of that type in the click loss ({} = all 1);
    # its items' learned odds become w x their click odds (docs/training.md)
    content_type_loss_weight: dict[str, float] = field(default_factory=dict)
    random_negative_ratio: float = 0.0
    # click: random negatives are extra non-clicks of the click head (they also teach it
    # "shown or not", which the test window never asks); pair: they train only the
    # user . content pair score, against clicked impressions (a two-tower task whose dot
    # product the export carries), and the click head learns from impressions alone
    random_negative_loss: Literal["click", "pair"] = "click"
    pair_loss_weight: float = 1.0
    val_days: int = 2
    test_days: int = 3
    learning_rate: float = 0.002
    weight_decay: float = 0.0
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    replay_fraction: float = 0.1       # --continue: older events replayed per new event
    continue_epochs: int = 1           # --continue: passes over the new window (0: train.epochs)


@dataclass(frozen=True)
class ResourceConfig:
    """What training runs on, apart from what the model and optimiser read (``train``).

    Workers, devices, threads, checkpoint storage, failure handling, progress lines and the
    hot-node cache decide how fast and where a run goes, not what it computes (with the
    default ``train.batch_scope: global`` the worker count leaves the optimisation as it
    is; docs/training.md).
    """

    workers: int = 2                   # one per partition (clickgraph train --workers overrides)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads_per_worker: int = 1
    # batches prepared ahead on a background thread while the current step computes
    # (trainer/prefetch.py); 0: sampled and computed one after another. 2: measured in
    # BENCHMARKS.md ("The pipelined loop")
    prefetch_depth: int = 2
    checkpoint_url: str | None = None  # null: <paths.train>/checkpoints
    checkpoint_every_steps: int = 0    # 0: checkpoint at the end of every epoch only
    max_failures: int = 1              # worker failures Ray Train recovers from per run
    progress_every_s: float = 30.0     # seconds between progress lines of long loops (ETA)
    # node type -> fraction of its highest-degree nodes whose static features every worker
    # replicates (trainer/dist_sampler.build_hot_cache); {} = off (BENCHMARKS.md: it saves
    # 0.3-8 % of the bytes, the sampling responses dominate)
    hot_cache: dict[str, float] = field(default_factory=dict)
    # where a worker's shard CSR and features live for sampling (trainer/placement.py):
    # cuda = GPU memory, pinned = page-locked host memory read by the GPU, cpu; auto =
    # cuda on a GPU worker when they fit in sampler_gpu_memory_fraction of its free
    # memory, else pinned there, cpu on a CPU worker (docs/training.md: bytes per edge)
    sampler_device: Literal["auto", "cpu", "cuda", "pinned"] = "cpu"
    sampler_gpu_memory_fraction: float = 0.5


@dataclass(frozen=True)
class DiversityConfig:
    """Diversity control of the exported recommendations (``trainer/rerank.py``).

    ``mmr``: maximal marginal relevance, greedily the candidate maximising
    ``mmr_lambda * relevance - (1 - mmr_lambda) * max cosine to the items already
    listed`` (relevance: the click probability rescaled to [0, 1] over the user's
    candidates; cosines of content embeddings centred on the catalogue's mean);
    ``mmr_lambda: 1`` is the plain top-k; the default 0.3 is measured in
    docs/experiments/video-weight.md. ``category_cap``: at most this many
    items of one category per list (0 = no cap); it applies with either method.
    ``max_item_share``: no item in more than this share of the lists built together
    (0 = no cap), the one control that acts across lists.
    """

    method: Literal["none", "mmr"] = "mmr"
    mmr_lambda: float = 0.3
    category_cap: int = 0
    max_item_share: float = 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation on the test window against the tabular baseline (docs/evaluation.md).

    The baseline is gradient-boosted trees on user and content attributes, context and
    as-of counts; it is fitted on the validation window's impressions (which the GNN never
    trained on) and scored on the test window's, once without and once with the exported
    GNN embeddings as of the start of each impression's day.
    """

    checkpoint: str | None = None        # null: the latest finished run (paths.train/latest_checkpoint.json)
    cold_start_max_interactions: int = 5  # cold: the user has at most this many earlier interactions
    max_test_events: int = 60_000        # test impressions scored, a fixed random sample (0 = all)
    max_fit_events: int = 200_000        # validation impressions the baseline is fitted on (0 = all)
    gbdt_max_iter: int = 300
    gbdt_learning_rate: float = 0.05
    gbdt_max_leaf_nodes: int = 31
    seed: int = 0
    embedding_batch_size: int = 4096     # nodes embedded per sampler call (export too)
    # what baseline_plus_embeddings adds to the trees: the user . content dot product alone
    # (a pair score the trees split on directly), or both vectors and it (128 raw columns
    # cost the trees 0.24 points on the default data: docs/experiments/quality.md)
    embedding_features: Literal["vectors", "dot"] = "dot"
    top_k: int = 20                      # recommendation controls: top-k content per user
    recommend_users: int = 500           # users sampled for the recommendation controls
    # exposure controls applied to the model's scores (docs/export.md); the uncontrolled
    # lists are reported beside the controlled ones
    target_share: dict[str, float] = field(default_factory=dict)  # content type -> share of every list
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    rerank_candidates: int = 200         # each user's best-scored items the controls choose from


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking in MLflow (``clickgraph/app/tracking.py``, docs/pipeline.md).

    ``uri: null`` is a local file store, ``file://<paths.root>/mlruns`` (absolute), so a
    run needs no server; any MLflow tracking URI (``http://host:5000``, ``databricks``,
    ``sqlite:///mlflow.db``) works. ``registered_model`` names the registry model each
    trained checkpoint becomes a version of; ``null``: nothing is registered.
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str = "clickgraph"
    registered_model: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    paths: PathsConfig
    spark: SparkConfig
    ray: RayConfig = field(default_factory=RayConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: str = "<defaults>"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every value (``source`` left out), as written beside outputs."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        """The resolved config as YAML, for ``_config.yaml`` beside a run's outputs."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_hash(self, *sections: str) -> str:
        """Stable sha256 (16 hex chars) of the named sections, or of all when none named."""
        data = self.to_dict()
        if sections:
            data = {name: data[name] for name in sections}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; returns the (converted) value."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = f"{source}: key '{key}'"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key, source)
        raise ConfigError(f"{where}: unsupported union type {tp}")
    if value is None:
        raise ConfigError(f"{where}: must not be null (expected {_type_name(tp)})")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _coerce(k, args[0], f"{key}.<key>", source): _coerce(v, args[1], f"{key}.{k}", source)
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


MOVED_KEYS = {f"train.{k}": f"resources.{k}" for k in (
    "workers", "device", "threads_per_worker", "checkpoint_url", "checkpoint_every_steps",
    "max_failures", "hot_cache")} | {
    "train.log_every_steps": "resources.progress_every_s (seconds between lines, not steps)",
    "resources.log_every_steps": "resources.progress_every_s (seconds between lines, not steps)"}
"""Keys that moved (an old config gets told where, not just "unknown key")."""


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown and missing keys."""
    if not isinstance(data, dict):
        what = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {what} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            full = f"{prefix}.{key}" if prefix else str(key)
            if full in MOVED_KEYS:
                raise ConfigError(f"{source}: key '{full}' is now '{MOVED_KEYS[full]}'")
            raise ConfigError(
                f"{source}: unknown key '{full}' (known here: {', '.join(sorted(known))})"
            )
    kwargs = {}
    for name, f in known.items():
        full = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], full, source)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(f"{source}: missing required key '{full}'")
    return cls(**kwargs)


def _validate_values(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    g = cfg.generate
    src = cfg.source
    try:
        dt.date.fromisoformat(g.start_date)
    except ValueError:
        raise ConfigError(
            f"{src}: key 'generate.start_date': {g.start_date!r} is not YYYY-MM-DD"
        ) from None
    positive = ["num_days", "num_users", "num_content", "num_articles", "num_brands",
                "num_categories", "num_communities", "feed_length"]
    for name in positive:
        if getattr(g, name) < 1:
            raise ConfigError(f"{src}: key 'generate.{name}' must be >= 1")
    fractions = ["initial_user_fraction", "initial_content_fraction", "targeted_feed_share",
                 "video_lover_fraction", "drifting_user_fraction"]
    for name in fractions:
        if not 0.0 <= getattr(g, name) <= 1.0:
            raise ConfigError(f"{src}: key 'generate.{name}' must be within [0, 1]")
    if g.user_click_propensity_sd < 0:
        raise ConfigError(f"{src}: key 'generate.user_click_propensity_sd' must be >= 0")
    if not 0.0 <= g.bad_row_fraction < 0.5:
        raise ConfigError(f"{src}: key 'generate.bad_row_fraction' must be within [0, 0.5)")
    if not g.formats:
        raise ConfigError(f"{src}: key 'generate.formats' must name at least one format")
    if g.num_brands < g.num_communities:
        raise ConfigError(f"{src}: key 'generate.num_brands' must be >= generate.num_communities")
    if round(g.num_content * g.initial_content_fraction) < g.num_communities:
        raise ConfigError(f"{src}: keys 'generate.num_content' x 'generate.initial_content_fraction' "
                          "must leave at least one piece of content per community on day 0")
    p = cfg.partition
    if p.num_parts < 1:
        raise ConfigError(f"{src}: key 'partition.num_parts' must be >= 1")
    if not 0 <= p.imbalance < 1 or not 0 <= p.placement_tolerance < 1:
        raise ConfigError(f"{src}: keys 'partition.imbalance' and 'partition.placement_tolerance' "
                          "must be within [0, 1)")
    if p.edge_budget < 1000:
        raise ConfigError(f"{src}: key 'partition.edge_budget' must be >= 1000")
    if len(p.quality_fanouts) < 2:
        raise ConfigError(f"{src}: key 'partition.quality_fanouts' needs at least two hops")
    t = cfg.train
    for name in ("epochs", "batch_size", "eval_batch_size", "val_days", "test_days"):
        if getattr(t, name) < 1:
            raise ConfigError(f"{src}: key 'train.{name}' must be >= 1")
    if not t.fanouts or any(k < 1 for k in t.fanouts):
        raise ConfigError(f"{src}: key 'train.fanouts' must be a non-empty list of positive ints")
    if t.random_negative_ratio < 0:
        raise ConfigError(f"{src}: key 'train.random_negative_ratio' must be >= 0")
    if t.pair_loss_weight < 0:
        raise ConfigError(f"{src}: key 'train.pair_loss_weight' must be >= 0")
    for ctype, weight in t.content_type_loss_weight.items():
        if not weight > 0:
            raise ConfigError(f"{src}: key 'train.content_type_loss_weight.{ctype}' must be > 0")
    if t.content_type_loss_weight and t.random_negative_loss != "click":
        raise ConfigError(f"{src}: key 'train.content_type_loss_weight' weighs the click loss of "
                          "train.random_negative_loss: click only")
    r = cfg.resources
    for name in ("workers", "threads_per_worker"):
        if getattr(r, name) < 1:
            raise ConfigError(f"{src}: key 'resources.{name}' must be >= 1")
    if not r.progress_every_s > 0:
        raise ConfigError(f"{src}: key 'resources.progress_every_s' must be > 0")
    for name in ("checkpoint_every_steps", "max_failures", "prefetch_depth"):
        if getattr(r, name) < 0:
            raise ConfigError(f"{src}: key 'resources.{name}' must be >= 0")
    if not 0.0 < r.sampler_gpu_memory_fraction <= 1.0:
        raise ConfigError(f"{src}: key 'resources.sampler_gpu_memory_fraction' must be "
                          "within (0, 1]")
    if r.device == "cpu" and r.sampler_device in ("cuda", "pinned"):
        raise ConfigError(f"{src}: key 'resources.sampler_device' is {r.sampler_device}, "
                          "which needs workers on GPUs, but resources.device is cpu "
                          "(use auto or cpu)")
    for node_type, share in r.hot_cache.items():
        if node_type not in GRAPH_NODE_TYPES or not 0.0 <= float(share) <= 1.0:
            raise ConfigError(f"{src}: key 'resources.hot_cache.{node_type}' must be a node type "
                              f"({', '.join(GRAPH_NODE_TYPES)}) with a fraction in [0, 1]")
    for name in ("hidden_dim", "time_dim", "num_layers", "num_positions", "context_dim"):
        if getattr(t.model, name) < 1:
            raise ConfigError(f"{src}: key 'train.model.{name}' must be >= 1")
    for name in ("dropout", "id_dropout"):
        if not 0.0 <= getattr(t.model, name) < 1.0:
            raise ConfigError(f"{src}: key 'train.model.{name}' must be within [0, 1)")
    if t.continue_epochs < 0:
        raise ConfigError(f"{src}: key 'train.continue_epochs' must be >= 0")
    if not 0.0 <= t.replay_fraction <= 10.0:
        raise ConfigError(f"{src}: key 'train.replay_fraction' must be within [0, 10]")
    e = cfg.evaluate
    for name in ("cold_start_max_interactions", "max_test_events", "max_fit_events"):
        if getattr(e, name) < 0:
            raise ConfigError(f"{src}: key 'evaluate.{name}' must be >= 0")
    for name in ("gbdt_max_iter", "embedding_batch_size", "top_k", "recommend_users"):
        if getattr(e, name) < 1:
            raise ConfigError(f"{src}: key 'evaluate.{name}' must be >= 1")
    for ctype, share in e.target_share.items():
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{src}: key 'evaluate.target_share.{ctype}' must be within [0, 1]")
    if sum(e.target_share.values()) > 1.0 + 1e-9:
        raise ConfigError(f"{src}: key 'evaluate.target_share': the shares sum to more than 1")
    if not 0.0 <= e.diversity.mmr_lambda <= 1.0:
        raise ConfigError(f"{src}: key 'evaluate.diversity.mmr_lambda' must be within [0, 1]")
    if e.diversity.category_cap < 0:
        raise ConfigError(f"{src}: key 'evaluate.diversity.category_cap' must be >= 0")
    if not 0.0 <= e.diversity.max_item_share <= 1.0:
        raise ConfigError(f"{src}: key 'evaluate.diversity.max_item_share' must be within [0, 1]")
    if e.rerank_candidates < e.top_k:
        raise ConfigError(f"{src}: key 'evaluate.rerank_candidates' must be >= evaluate.top_k")
    if e.gbdt_max_leaf_nodes < 2 or not 0 < e.gbdt_learning_rate <= 1:
        raise ConfigError(f"{src}: keys 'evaluate.gbdt_max_leaf_nodes' (>= 2) and "
                          "'evaluate.gbdt_learning_rate' (within (0, 1]) are out of range")
    if cfg.spark.shuffle_partitions < 1:
        raise ConfigError(f"{src}: key 'spark.shuffle_partitions' must be >= 1")
    tr = cfg.tracking
    if not tr.experiment.strip():
        raise ConfigError(f"{src}: key 'tracking.experiment' must not be empty")
    if tr.uri is not None and not tr.uri.strip():
        raise ConfigError(f"{src}: key 'tracking.uri' must be null (a file store under "
                          "paths.root) or an MLflow tracking URI")
    if tr.registered_model is not None and not tr.registered_model.strip():
        raise ConfigError(f"{src}: key 'tracking.registered_model' must be null or a model name")
    _validate_graph(cfg)


def parse_time_ms(text: str) -> int:
    """ISO-8601 date or date-time (UTC unless it has an offset) -> ms since epoch."""
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _validate_graph(cfg: Config) -> None:
    """Range and name checks of the ``graph`` section (see GraphConfig)."""
    g, src = cfg.graph, cfg.source
    if not 0.0 <= g.max_quarantine_fraction <= 1.0:
        raise ConfigError(f"{src}: key 'graph.max_quarantine_fraction' must be within [0, 1]")
    for name in ("min_event_time", "max_event_time"):
        value = getattr(g, name)
        if value is None:
            continue
        try:
            parse_time_ms(value)
        except ValueError:
            raise ConfigError(f"{src}: key 'graph.{name}': {value!r} is not an ISO-8601 "
                              "date or date-time") from None
    for name in ("clock_slack_s", "log_day_slack_s"):
        if getattr(g, name) < 0:
            raise ConfigError(f"{src}: key 'graph.{name}' must be >= 0")
    for rel, weight in g.relation_weights.items():
        if rel not in GRAPH_RELATION_NAMES:
            raise ConfigError(f"{src}: key 'graph.relation_weights.{rel}': unknown relation "
                              f"(known: {', '.join(GRAPH_RELATION_NAMES)})")
        if weight < 0:
            raise ConfigError(f"{src}: key 'graph.relation_weights.{rel}' must be >= 0")
    for ctype, weight in g.content_type_weight.items():
        if weight < 0:
            raise ConfigError(f"{src}: key 'graph.content_type_weight.{ctype}' must be >= 0")
    ev, entities = g.input.events, g.input.entities
    node_types = entities.node_types()
    seen: dict[str, str] = {}
    for etype, names in ev.event_types.items():
        key = f"graph.input.events.event_types.{etype}"
        if etype not in GRAPH_EVENT_TYPES:
            raise ConfigError(f"{src}: key '{key}': unknown event type "
                              f"(known: {', '.join(GRAPH_EVENT_TYPES)})")
        if not names:
            continue  # the platform has no such events
        for name in names:
            if name in seen:
                raise ConfigError(f"{src}: key '{key}': source name {name!r} is already "
                                  f"mapped to {seen[name]!r}")
            seen[name] = etype
        needs, target = GRAPH_EVENT_TARGETS[etype]
        if getattr(ev.columns, needs) is None:
            raise ConfigError(f"{src}: key 'graph.input.events.columns.{needs}' is null but "
                              f"'{key}' maps {etype} events, which need it")
        if target not in node_types:
            raise ConfigError(f"{src}: key '{key}' maps {etype} events, but the graph has no "
                              f"{target} nodes (graph.input.entities.{target} is null and no "
                              f"table links to {target}); set '{key}: null'")
    derive = ev.clicks_from_labels_after_s
    if derive is not None:
        key = "graph.input.events.clicks_from_labels_after_s"
        if derive < 0:
            raise ConfigError(f"{src}: key '{key}' must be >= 0")
        if ev.event_types.get("click"):
            raise ConfigError(f"{src}: key '{key}' derives clicks from impression labels, but "
                              "'graph.input.events.event_types.click' maps click events too; "
                              "set one of them to null")
        if ev.columns.clicked is None:
            raise ConfigError(f"{src}: key '{key}' needs the impressions' click label, but "
                              "'graph.input.events.columns.clicked' is null")
    for etype in GRAPH_REQUIRED_EVENT_TYPES:
        if not ev.event_types.get(etype):
            raise ConfigError(f"{src}: key 'graph.input.events.event_types.{etype}' must list "
                              f"at least one source name: {etype} events are the training "
                              "examples every platform needs")
    for ntype, table in entities.tables().items():
        prefix = f"graph.input.entities.{ntype}"
        for attr in table.attributes:
            if attr not in GRAPH_NODE_ATTRIBUTES[ntype]:
                raise ConfigError(f"{src}: key '{prefix}.attributes.{attr}': not an attribute of "
                                  f"{ntype} nodes (known: {', '.join(GRAPH_NODE_ATTRIBUTES[ntype])})")
        allowed = GRAPH_ENTITY_LINKS.get(ntype, {})
        for link in table.links:
            if link not in allowed:
                raise ConfigError(f"{src}: key '{prefix}.links.{link}': {ntype} tables carry no "
                                  f"such link (known: {', '.join(allowed) or 'none'})")
        if not table.list_delimiter:
            raise ConfigError(f"{src}: key '{prefix}.list_delimiter' must not be empty")


# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    """The embedded default, ``conf/local.yaml`` (repo checkout or installed data files)."""
    candidates = [
        Path(__file__).resolve().parents[2] / "conf" / "local.yaml",
        Path(sys.prefix) / "share" / "clickgraph" / "conf" / "local.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"default config not found; looked in {', '.join(map(str, candidates))}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in YAML syntax) into (key path, value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return parts, value


def _apply_override(raw: dict, parts: list[str], value: Any, text: str) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file.

    Args:
        path: YAML file; ``None`` loads the embedded default ``conf/local.yaml``.
        overrides: ``section.key=value`` strings applied before validation.

    Returns:
        The validated, frozen :class:`Config`.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key, wrong type, missing value.
    """
    file = Path(path) if path is not None else default_config_path()
    source = str(file)
    try:
        text = file.read_text()
    except OSError as err:
        raise ConfigError(f"{source}: cannot read config file ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: invalid YAML: {err}") from None
    for text_override in overrides or []:
        parts, value = parse_override(text_override)
        _apply_override(raw, parts, value, text_override)
    if overrides:
        source += " (with --set " + ", ".join(overrides) + ")"
    cfg = _build(Config, raw, "", source)
    cfg = dataclasses.replace(cfg, source=source)
    _validate_values(cfg)
    return cfg


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """Copy of ``cfg`` with fields of one section changed (validated again)."""
    new = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
    _validate_values(new)
    return new
