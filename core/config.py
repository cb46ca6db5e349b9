"""Cluster configuration: one YAML file -> frozen dataclasses. Every default is here.

An unknown key, a wrong type or an out-of-range value is a ConfigError naming the key and
the file. CLI flags override fields with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

import yaml

from annfleet.errors import ConfigError
from annfleet.validation import MAX_EF_SEARCH, MAX_RERANK, MIN_INDEX_PARAMS


@dataclass(frozen=True)
class DatasetConfig:
    """What the default bundle is built from when ``bundle`` is not given."""

    kind: str = "movielens"  # movielens (two-tower, trained once) | synthetic
    items: int = 200_000  # synthetic only
    dim: int = 64  # synthetic only
    clusters: int = 256  # synthetic only; 0 = uniform on the sphere (a stress point)
    users: int = 10_000  # synthetic only
    seed: int = 0
    path: str = ""  # movielens: directory with ml-100k.{inter,item,user}; "" = recbole wheel


@dataclass(frozen=True)
class IndexConfig:
    """How the default bundle's shard indexes are built. Build parameters belong to the
    bundle: with ``bundle`` (or ``--bundle``) set, this section does not apply."""

    type: str = "hnsw"  # hnsw | ivfpq | flat
    m: int = 32  # hnsw: graph degree
    ef_construction: int = 200  # hnsw: build beam
    nlist: int = 1024  # ivfpq: inverted lists per shard (capped by shard size)
    pq_m: int = 0  # ivfpq: sub-quantizers, must divide dim; 0 = auto (chosen and printed)
    nbits: int = 8  # ivfpq: bits per sub-quantizer code (fewer for small shards)

    def params(self) -> dict[str, int]:
        """The build parameters that apply to ``type`` (the bundle's index params)."""
        keys = {
            "flat": (),
            "hnsw": ("m", "ef_construction"),
            "ivfpq": ("nlist", "pq_m", "nbits"),
        }[self.type]
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class SearchConfig:
    """What a shard server searches with when a request leaves a parameter at 0. Serving
    config, not bundle content: editing it never rebuilds a bundle, and it wins over the
    search defaults an older bundle's manifest stored."""

    ef_search: int = 128  # hnsw: search beam (at least k)
    nprobe: int = 32  # ivfpq: inverted lists visited (at most nlist)
    rerank: int = 256  # ivfpq: candidates re-ranked exactly from stored vectors (at least k)


@dataclass(frozen=True)
class ShardsConfig:
    count: int = 4  # shards in the default bundle
    replicas: int = 1  # processes per shard (`annfleet up`); the router balances and hedges
    host: str = "127.0.0.1"
    base_port: int = 50061  # shard i replica r listens on base_port + i * replicas + r
    metrics_base_port: int = 9161  # its /metrics on this + i * replicas + r; -1 = off
    max_k: int = 4096
    max_batch: int = 1024  # queries per request
    search_threads: int = 1  # faiss threads per shard process
    max_queue: int = 64  # searches queued or running per process; beyond: RESOURCE_EXHAUSTED
    grace_s: float = 5.0  # drain time on SIGTERM
    # ShardAdmin (prepare/commit/release bundles, live upserts) on its own port, token needed:
    # replica r of shard i on admin_base_port + i * replicas + r; 0 = free ports, -1 = off.
    admin_base_port: int = 50161
    updates_dir: str = ""  # update logs; "" = beside each bundle (<bundle>.updates/)
    max_delta_items: int = 1_000_000  # upserted items a shard holds per bundle (exact search)
    # Compact a bundle shard's update log into a snapshot (<= 3 records) once it holds this
    # many records and at least twice the snapshot's bytes; 0 = never.
    update_log_compact_records: int = 1000
    memory_limit_mb: int = 0  # cap on a shard process's memory for Prepare; 0 = the machine's
    # Niceness added to the thread that loads and verifies a prepared bundle, so a rollout's
    # load yields the CPU to searches (Linux: per thread); 0 = same priority as serving.
    load_nice: int = 0
    # Niceness added to the one thread that runs exact brute-force searches
    # (ShardAdmin.ExactSearch: live recall samples, each a scan of every stored vector), so
    # they yield the CPU to searches (Linux: per thread); 0 = serving priority.
    exact_nice: int = 10
    # An exact search scans the stored vectors this many rows at a time (one faiss call each,
    # a running top-k merged between them: the same hits), 0 = in one call; ...
    exact_chunk_items: int = 65_536
    # ... and pauses after each chunk so that it scans at most this share of its wall time
    # (a 5M-vector shard's ~250 ms of CPU spread over >= 1 s at 0.25); 1 = no pause.
    exact_duty: float = 0.25


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9150  # 0 = free port, -1 = off
    min_coverage: float = 0.5  # fraction of shards that must answer, else UNAVAILABLE
    # per-shard k: the smallest m such that a shard holds more than m of a query's global
    # top k with probability at most (1 - topk_probability) / shards (hash placement:
    # Binomial(k, share)), at least ceil(k * share * oversample), at most k
    # (``annfleet.merge.per_shard_k``); topk_probability 1 = every shard k
    topk_probability: float = 0.9999
    oversample: float = 1.0
    max_k: int = 4096
    max_batch: int = 1024
    # One absolute deadline per request, taken where it enters: the caller's deadline less
    # deadline_margin_s, else default_timeout_s from now; carried through batching, scatter,
    # hedges and retries. shard_timeout_s caps one attempt at one shard replica (a replica
    # that has not answered by then is given up and the call retried elsewhere).
    default_timeout_s: float = 1.0  # deadline when the caller sets none
    shard_timeout_s: float = 0.5  # cap on one shard attempt
    # kept back from the caller's deadline, and from each Retrieve source's budget: the
    # request's path the router cannot time (the reply's way back after it is built; the way
    # in of a caller that sends no annfleet-timeout-ms: for one that does, the way in is
    # measured and a budget counts from the send, router/margin.py)
    deadline_margin_s: float = 0.002
    # Retrieve also keeps back from each source's budget what it measures it needs after a
    # budget (router/margin.py): this quantile of the time from the budget that ended the
    # wait for the sources to the reply handed to gRPC, over the last reply_margin_window
    # such Retrieves, between 0 and reply_margin_max_s (also its value until measured).
    reply_margin_quantile: float = 0.99
    reply_margin_window: int = 512
    reply_margin_max_s: float = 0.005
    # and the return time its caller reports (annfleet-return-ms, annfleet.return_time: the
    # recent p99 of the reply's way back as the caller measured it), at most this share of
    # each budget; 0 = the entry is ignored
    return_time_max_share: float = 0.25
    max_in_flight: int = 512  # requests being served at once; beyond: RESOURCE_EXHAUSTED
    # admission "adaptive" (router/admission.py): the in-flight limit (min_in_flight ..
    # max_in_flight) shrinks while the router's median latency is above latency_tolerance x
    # its no-load median and grows back while within it; "fixed": max_in_flight.
    admission: str = "adaptive"
    # outside an overload the adaptive limit never goes below this: enough in flight to keep the
    # shards busy and the coalescer batching (a floor of 2 starved throughput 5x on a busy box)
    min_in_flight: int = 32
    latency_tolerance: float = 1.5
    # Queue-time shedding (router/admission.py): a request whose client sent its timeout
    # (annfleet-timeout-ms) and that waited more than 2 x queue_target_s before the handler
    # is refused in an overload (OVERLOAD_WINDOWS admission windows in a row each refused a
    # request), or when it waited longer than it has left while a queue stands (the lowest
    # wait of the last queue_interval_s exceeded the target).
    queue_target_s: float = 0.005  # 0 = off
    queue_interval_s: float = 0.1
    # the adaptive limit's floor in such an overload (not a busy router); <= min_in_flight
    overload_min_in_flight: int = 2
    # Replicas of a shard (router/replicas.py): a failed attempt is retried on another
    # replica, and an unanswered one is hedged to another after the shard's running
    # hedge_quantile latency (clamped to [hedge_min_delay_s, hedge_max_delay_s]);
    # hedge_budget caps hedges as a share of shard calls. All inside the one deadline.
    shard_attempts: int = (
        3  # attempts per shard call (first + hedge + retries), each on another replica
    )
    hedge_quantile: float = 0.95  # 0 = never hedge
    hedge_min_delay_s: float = 0.002
    hedge_max_delay_s: float = 0.1
    hedge_budget: float = 0.1  # at most this share of shard calls is hedged
    connect_timeout_s: float = 30.0  # wait for shards at start-up
    # How a shard search travels (router/streams.py): "stream", one long-lived
    # IndexShard.SearchStream per replica channel carrying every search, each message with
    # its own id and deadline (same statuses, retries, hedges and timeouts; less CPU per
    # query); "unary", one IndexShard.Search call each.
    shard_transport: str = "stream"
    # Concurrent searches with equal (k, params) share a shard RPC once this many batches
    # are out per lane (adaptive batching); 0 = one shard RPC per request.
    coalesce_in_flight: int = 2
    filter_seen: bool = True  # Retrieve drops the user's seen items (bundle table) and context
    user_cache_size: int = 100_000
    user_cache_ttl_s: float = 3600.0
    grace_s: float = 5.0
    # RouterAdmin (rollout, rollback) on its own port, token needed; 0 = free port, -1 = off.
    admin_port: int = 50052
    release_grace_s: float = 60.0  # a replaced bundle stays held (rollback instant) this long
    # With several routers over the same shards: how often each asks the shard replicas which
    # bundle is active, to follow a rollout, rollback or promote run through another router
    # (needs the shards' admin addresses and the admin token). 0 = off.
    follow_interval_s: float = 1.0
    # Before the flip, a rollout embeds with the next bundle's tower the user-embedding cache
    # entries of the users most recently served (at most this many entries), so their first
    # requests on the new bundle hit the cache. 0 = off.
    rollout_warm_users: int = 10_000
    tower_threads: int = 1  # torch intra-op threads of the user tower; 0 = torch's default
    # Live recall (router/recall.py): this share of Retrieve/Search requests is re-run off
    # the request path, ANN and exact (ShardAdmin.ExactSearch), at k = recall_k; recall@k per
    # shard and per bundle is the mean of the last recall_window samples. 0 = off.
    recall_sample_rate: float = 0.01
    # ... and at most this many samples a second (an exact search over a whole shard costs
    # ~100 ANN searches: at 1% of a busy router's traffic sampling took ~11% of the servers'
    # CPU, ab-10); 0 = no cap.
    recall_max_per_s: float = 2.0
    # ... and measuring takes at most this share of the time: after a sample that took t
    # seconds (its exact searches, each a whole-shard scan on every shard at once), the next
    # is not taken for t / recall_max_share seconds. At 10M items an exact search costs
    # ~135 ms of CPU per shard, and 2 samples a second took ~1 core (scale-10m-open-loop-2);
    # at 0.05 each shard spends at most ~5% of a core on them. 0 = no cap.
    recall_max_share: float = 0.05
    recall_k: int = 100
    recall_window: int = 1000
    # rollout --promote refuses a canary whose measured recall@recall_k is below recall_floor,
    # or that has fewer than recall_min_samples samples (unless --force).
    recall_floor: float = 0.95
    recall_min_samples: int = 20


@dataclass(frozen=True)
class AdminConfig:
    """Where the admin ports' bearer token comes from: the file, else the variable."""

    token_file: str = ""  # relative paths are resolved against the config file
    token_env: str = "ANNFLEET_ADMIN_TOKEN"


@dataclass(frozen=True)
class TlsConfig:
    """TLS for every gRPC port and every channel the cluster opens (metrics stay plain HTTP).

    ``cert``/``key`` are this process's identity: its server certificate and, on channels it
    opens (router -> shards, health checks, the CLI), its client certificate. ``ca`` verifies
    the peers. Relative paths are resolved against the config file.
    """

    enabled: bool = False
    cert: str = ""  # PEM certificate chain
    key: str = ""  # PEM private key
    ca: str = ""  # PEM CA certificates that sign peers ("" = system roots, for channels)
    require_client_cert: bool = False  # mutual TLS: clients need a certificate signed by ca


@dataclass(frozen=True)
class SourceSettings:
    """What every candidate source has: share of k, blend weight, latency budget."""

    enabled: bool = True
    quota: float = 0.0  # share of k this source fills first (quotas of enabled sources sum <= 1)
    weight: float = 0.0  # blend weight: quota order and score = weight * (1 - rank / k)
    budget_ms: float = 20.0  # dropped for the request (not waited for) past this
    delay_ms: float = 0.0  # fault drill: the source answers this much later (0 = off)


@dataclass(frozen=True)
class AnnSourceConfig(SourceSettings):
    """The two-tower ANN over every shard."""

    quota: float = 0.0
    weight: float = 1.0
    budget_ms: float = 250.0


@dataclass(frozen=True)
class TrendingSourceConfig(SourceSettings):
    """Exponentially time-decayed engagement counts, global and per region."""

    quota: float = 0.0
    weight: float = 0.1
    half_life_s: float = 7 * 86400.0  # an event counts half after this long


@dataclass(frozen=True)
class CoEngagementSourceConfig(SourceSettings):
    """Item-item neighbours (bundle table + live co-engagement) of the user's recent items."""

    quota: float = 0.0
    weight: float = 0.5  # MODEL_VERSION 4's blend: 1.25 (the ANN was weaker)
    recent: int = 10  # the user's last N items are expanded
    recency_decay: float = 0.8  # weight of the i-th most recent item: decay ** i
    live_weight: float = 0.1  # live pair count c adds live_weight * log1p(c) to the cosine


@dataclass(frozen=True)
class ContentSourceConfig(SourceSettings):
    """Items nearest by content features to the user's recent items (cold start)."""

    quota: float = 0.0
    weight: float = 0.1
    recent: int = 10
    recency_decay: float = 0.8


@dataclass(frozen=True)
class ExplorationSourceConfig(SourceSettings):
    """Thompson sampling over Beta(clicks + 1, impressions - clicks + 1), low-impression items."""

    quota: float = 0.02
    weight: float = 0.05  # MODEL_VERSION 4's blend: 0 (the quota alone)
    max_impressions: int = 100  # items with at least this many impressions are not explored
    pool: int = 2000  # items sampled from the catalogue per request (all when smaller)
    seed: int = 0  # -1 = fresh entropy


@dataclass(frozen=True)
class SocialSourceConfig(SourceSettings):
    """Recent items of the users this user follows (a follow-graph file)."""

    enabled: bool = False  # MovieLens has no follow graph
    quota: float = 0.05
    weight: float = 0.3
    graph: str = ""  # "follower followee" per line; relative to the config file
    max_followees: int = 200
    recent: int = 20  # each followee's last N items
    recency_decay: float = 0.9


@dataclass(frozen=True)
class PopularSourceConfig(SourceSettings):
    """The bundle's all-time popularity list: last-resort backfill over the whole catalogue."""

    quota: float = 0.0
    weight: float = 0.0


@dataclass(frozen=True)
class SourcesConfig:
    """Candidate sources of Retrieve (router/sources); one entry per source."""

    ann: AnnSourceConfig = field(default_factory=AnnSourceConfig)
    trending: TrendingSourceConfig = field(default_factory=TrendingSourceConfig)
    co_engagement: CoEngagementSourceConfig = field(default_factory=CoEngagementSourceConfig)
    content: ContentSourceConfig = field(default_factory=ContentSourceConfig)
    exploration: ExplorationSourceConfig = field(default_factory=ExplorationSourceConfig)
    social: SocialSourceConfig = field(default_factory=SocialSourceConfig)
    popular: PopularSourceConfig = field(default_factory=PopularSourceConfig)
    # How the sources' lists become one (router/blend.py): "rrf" = weighted reciprocal rank
    # fusion (score = sum of weight / (rrf_c + rank + 1); quotas are floors), "learned" =
    # as rrf with the score from fitted per-source rank tables (sources.fusion), "quota" =
    # fixed slots filled in weight order, then backfill.
    blend: str = "rrf"
    rrf_c: float = 60.0  # MODEL_VERSION 4's blend: 120
    depth: int = 200  # rrf, learned: each source is asked max(k, depth) candidates
    # blend "learned": the fitted fusion's parameters, a JSON file (relative paths: from the
    # config file's directory); see router/blend.py Fusion and the README's blend section.
    fusion: str = ""
    candidate_cache_size: int = 100_000  # blended lists cached per (bundle, user, request)
    candidate_cache_ttl_s: float = 300.0
    # Diversity of served lists (router/diversity.py), off the request path: this share of
    # Retrieve answers is kept in a window of the last diversity_window lists per bundle;
    # the gauges are recomputed from it every diversity_interval_s. 0 = off.
    diversity_sample_rate: float = 0.1
    diversity_window: int = 1000
    diversity_interval_s: float = 15.0

    def settings(self) -> dict[str, SourceSettings]:
        """Every source's settings by name (the Source enum's lower-case names)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), SourceSettings)
        }


@dataclass(frozen=True)
class StateConfig:
    """Live state the routers share: recent items, seen sets, trending, posteriors."""

    backend: str = "memory"  # memory (this process only) | redis (shared, survives restarts)
    url: str = "redis://127.0.0.1:6379/0"  # redis only
    prefix: str = "annfleet:"  # redis key prefix
    recent_len: int = 50  # recent items kept per user
    # Live co-engagement neighbours served per item: the most co-engaged ones. Each item keeps
    # at most twice this many counts; past that, the least co-engaged are dropped (so a
    # popular item's live neighbours, and the time to read them, stay bounded).
    co_neighbours: int = 512
    max_future_s: float = 300.0  # engagement timestamps later than now + this are refused
    timeout_s: float = 0.05  # redis: socket timeout of one call
    # `annfleet up` starts its own redis-server (before the router; watched, restarted and
    # stopped with the cluster) on the loopback host:port of `url`, persisting into
    # <data_dir>/redis/ (append-only file), so a restart of the whole cluster loses nothing.
    start_redis: bool = False
    redis_server: str = "redis-server"  # the binary start_redis runs (a name on PATH or a path)


@dataclass(frozen=True)
class ClusterConfig:
    bundle: str = ""  # a bundle directory; "" = build/reuse the default from `dataset`
    # Cached bundles, logs, cluster.json. "" = $ANNFLEET_DATA, else ~/.cache/annfleet; a
    # directory set here wins over the variable (status and up of one config agree).
    data_dir: str = ""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    state: StateConfig = field(default_factory=StateConfig)

    def data_path(self) -> Path:
        return Path(
            self.data_dir or os.environ.get("ANNFLEET_DATA") or DEFAULT_DATA_DIR
        ).expanduser()

    def validate(self, source: str = "<config>") -> ClusterConfig:
        checks = [
            (
                self.dataset.kind in ("synthetic", "movielens"),
                "dataset.kind",
                "synthetic or movielens",
            ),
            (self.index.type in ("hnsw", "ivfpq", "flat"), "index.type", "hnsw, ivfpq or flat"),
            (
                1 <= self.search.ef_search <= MAX_EF_SEARCH,
                "search.ef_search",
                f"in [1, {MAX_EF_SEARCH}]",
            ),
            (self.search.nprobe >= 1, "search.nprobe", ">= 1"),
            (1 <= self.search.rerank <= MAX_RERANK, "search.rerank", f"in [1, {MAX_RERANK}]"),
            (self.shards.count >= 1, "shards.count", ">= 1"),
            (self.shards.max_queue >= 1, "shards.max_queue", ">= 1"),
            (0.0 < self.router.min_coverage <= 1.0, "router.min_coverage", "in (0, 1]"),
            (self.router.oversample >= 1.0, "router.oversample", ">= 1"),
            (0.5 <= self.router.topk_probability <= 1.0, "router.topk_probability", "in [0.5, 1]"),
            (self.router.max_k >= 1, "router.max_k", ">= 1"),
            (self.shards.max_k >= 1, "shards.max_k", ">= 1"),
            (self.shards.search_threads >= 1, "shards.search_threads", ">= 1"),
            (self.router.coalesce_in_flight >= 0, "router.coalesce_in_flight", ">= 0 (0 = off)"),
            (self.router.user_cache_size >= 0, "router.user_cache_size", ">= 0 (0 = off)"),
            (self.router.user_cache_ttl_s >= 0, "router.user_cache_ttl_s", ">= 0 (0 = off)"),
            (self.dataset.seed >= 0, "dataset.seed", ">= 0"),
            (self.router.default_timeout_s > 0, "router.default_timeout_s", "> 0"),
            (self.shards.admin_base_port >= -1, "shards.admin_base_port", ">= -1"),
            (self.router.admin_port >= -1, "router.admin_port", ">= -1"),
            (self.router.release_grace_s >= 0, "router.release_grace_s", ">= 0"),
            (self.router.follow_interval_s >= 0, "router.follow_interval_s", ">= 0 (0 = off)"),
            (self.router.rollout_warm_users >= 0, "router.rollout_warm_users", ">= 0"),
            (self.router.tower_threads >= 0, "router.tower_threads", ">= 0"),
            (
                0.0 <= self.router.recall_sample_rate <= 1.0,
                "router.recall_sample_rate",
                "in [0, 1]",
            ),
            (self.router.recall_max_per_s >= 0, "router.recall_max_per_s", ">= 0"),
            (
                0 <= self.router.recall_max_share <= 1,
                "router.recall_max_share",
                "between 0 (no cap) and 1",
            ),
            (self.router.recall_k >= 1, "router.recall_k", ">= 1"),
            (self.router.recall_window >= 1, "router.recall_window", ">= 1"),
            (0.0 <= self.router.recall_floor <= 1.0, "router.recall_floor", "in [0, 1]"),
            (self.router.recall_min_samples >= 1, "router.recall_min_samples", ">= 1"),
            (self.shards.max_delta_items >= 0, "shards.max_delta_items", ">= 0"),
            (
                self.shards.update_log_compact_records >= 0,
                "shards.update_log_compact_records",
                ">= 0",
            ),
            (self.shards.memory_limit_mb >= 0, "shards.memory_limit_mb", ">= 0"),
            (0 <= self.shards.load_nice <= 19, "shards.load_nice", "in [0, 19]"),
            (0 <= self.shards.exact_nice <= 19, "shards.exact_nice", "in [0, 19]"),
            (self.shards.exact_chunk_items >= 0, "shards.exact_chunk_items", ">= 0"),
            (0 < self.shards.exact_duty <= 1, "shards.exact_duty", "in (0, 1]"),
            (self.router.shard_timeout_s > 0, "router.shard_timeout_s", "> 0"),
            (self.router.deadline_margin_s >= 0, "router.deadline_margin_s", ">= 0"),
            (
                0.0 < self.router.reply_margin_quantile <= 1.0,
                "router.reply_margin_quantile",
                "in (0, 1]",
            ),
            (self.router.reply_margin_window >= 1, "router.reply_margin_window", ">= 1"),
            (self.router.reply_margin_max_s >= 0, "router.reply_margin_max_s", ">= 0"),
            (
                0.0 <= self.router.return_time_max_share <= 1.0,
                "router.return_time_max_share",
                "in [0, 1]",
            ),
            (self.router.max_in_flight >= 1, "router.max_in_flight", ">= 1"),
            (
                self.router.admission in ("adaptive", "fixed"),
                "router.admission",
                "adaptive or fixed",
            ),
            (self.router.min_in_flight >= 1, "router.min_in_flight", ">= 1"),
            (
                self.router.admission != "adaptive"
                or self.router.min_in_flight <= self.router.max_in_flight,
                "router.min_in_flight",
                f"<= router.max_in_flight ({self.router.max_in_flight}) with adaptive admission",
            ),
            (
                self.router.admission != "adaptive"
                or self.router.overload_min_in_flight <= self.router.min_in_flight,
                "router.overload_min_in_flight",
                f"<= router.min_in_flight ({self.router.min_in_flight}) with adaptive admission",
            ),
            (self.router.latency_tolerance > 1.0, "router.latency_tolerance", "> 1"),
            (self.router.queue_target_s >= 0, "router.queue_target_s", ">= 0 (0 = off)"),
            (self.router.queue_interval_s > 0, "router.queue_interval_s", "> 0"),
            (self.router.overload_min_in_flight >= 1, "router.overload_min_in_flight", ">= 1"),
            (self.router.shard_attempts >= 1, "router.shard_attempts", ">= 1"),
            (
                self.router.shard_transport in ("unary", "stream"),
                "router.shard_transport",
                "unary or stream",
            ),
            (0.0 <= self.router.hedge_quantile < 1.0, "router.hedge_quantile", "in [0, 1)"),
            (
                0.0 <= self.router.hedge_min_delay_s <= self.router.hedge_max_delay_s,
                "router.hedge_min_delay_s",
                ">= 0 and <= router.hedge_max_delay_s",
            ),
            (0.0 <= self.router.hedge_budget <= 1.0, "router.hedge_budget", "in [0, 1]"),
            (self.shards.replicas >= 1, "shards.replicas", ">= 1"),
            (self.shards.max_batch >= 1, "shards.max_batch", ">= 1"),
            (self.router.max_batch >= 1, "router.max_batch", ">= 1"),
            (self.shards.grace_s >= 0, "shards.grace_s", ">= 0"),
            (self.router.grace_s >= 0, "router.grace_s", ">= 0"),
            (self.router.connect_timeout_s > 0, "router.connect_timeout_s", "> 0"),
            (self.dataset.items >= 1, "dataset.items", ">= 1"),
            (self.dataset.dim >= 1, "dataset.dim", ">= 1"),
            (self.dataset.users >= 1, "dataset.users", ">= 1"),
            (self.dataset.clusters >= 0, "dataset.clusters", ">= 0 (0 = uniform)"),
        ]
        checks += self._port_checks()
        for name, low in MIN_INDEX_PARAMS.items():
            auto = " (0 = auto)" if name == "pq_m" else ""
            checks.append((getattr(self.index, name) >= low, f"index.{name}", f">= {low}{auto}"))
        tls = self.tls
        checks += [
            (not tls.enabled or bool(tls.cert and tls.key), "tls.cert and tls.key", "set"),
            (not tls.require_client_cert or bool(tls.ca), "tls.ca", "set for mutual TLS"),
        ]
        checks += self._source_checks()
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"{source}: {key} must be {expected}")
        return self

    def _port_checks(self) -> list[tuple[bool, str, str]]:
        """Every port a TCP port (0 = a free one; -1 = off where a port may be off), with
        room for every shard replica above a shard base port."""
        last = self.shards.count * self.shards.replicas - 1  # offset of the last replica
        checks = [(0 <= self.router.port <= MAX_PORT, "router.port", f"in [0, {MAX_PORT}]")]
        for key in ("metrics_port", "admin_port"):
            value = getattr(self.router, key)
            checks.append(
                (-1 <= value <= MAX_PORT, f"router.{key}", f"in [0, {MAX_PORT}], or -1 (off)")
            )
        for key, low in (("base_port", 0), ("metrics_base_port", -1), ("admin_base_port", -1)):
            value = getattr(self.shards, key)
            off = ", or -1 (off)" if low < 0 else ""
            checks.append(
                (
                    low <= value <= 0 or 0 < value <= MAX_PORT - last,
                    f"shards.{key}",
                    f"in [0, {MAX_PORT - last}] (+ shard * replicas + replica <= {MAX_PORT} "
                    f"for {last + 1} shard processes){off}",
                )
            )
        return checks

    def _source_checks(self) -> list[tuple[bool, str, str]]:
        settings = self.sources.settings()
        quotas = sum(s.quota for s in settings.values() if s.enabled)
        checks = [
            (
                quotas <= 1.0 + 1e-9,
                "sources.<name>.quota summed over the enabled sources",
                f"<= 1, got {quotas:g}",
            ),
            (self.state.backend in ("memory", "redis"), "state.backend", "memory or redis"),
            (self.state.recent_len >= 1, "state.recent_len", ">= 1"),
            (
                not self.state.start_redis or self.state.backend == "redis",
                "state.backend",
                "redis when state.start_redis is true",
            ),
            (
                not self.state.start_redis or redis_loopback(self.state.url) is not None,
                "state.url",
                "redis://<loopback host>:<port>[/db] when state.start_redis is true (the "
                f"cluster starts redis-server on this machine), got {self.state.url!r}",
            ),
            (
                self.sources.blend in ("rrf", "quota", "learned"),
                "sources.blend",
                "rrf, quota or learned",
            ),
            (
                self.sources.blend != "learned" or Path(self.sources.fusion).is_file(),
                "sources.fusion",
                "a JSON file of fitted parameters when sources.blend is learned, got "
                f"{self.sources.fusion!r}",
            ),
            (
                not self.sources.social.enabled or bool(self.sources.social.graph),
                "sources.social.graph",
                "set (a follow-graph file) when sources.social.enabled is true",
            ),
            (self.sources.rrf_c >= 0, "sources.rrf_c", ">= 0"),
            (
                0 <= self.sources.depth <= self.router.max_k,
                "sources.depth",
                f"in [0, router.max_k = {self.router.max_k}]",
            ),
            (
                0.0 <= self.sources.diversity_sample_rate <= 1.0,
                "sources.diversity_sample_rate",
                "in [0, 1]",
            ),
            (self.sources.diversity_window >= 1, "sources.diversity_window", ">= 1"),
            (self.sources.diversity_interval_s > 0, "sources.diversity_interval_s", "> 0"),
            (self.sources.candidate_cache_size >= 0, "sources.candidate_cache_size", ">= 0"),
            (self.sources.candidate_cache_ttl_s >= 0, "sources.candidate_cache_ttl_s", ">= 0"),
            (self.state.max_future_s >= 0, "state.max_future_s", ">= 0"),
            (self.state.co_neighbours >= 1, "state.co_neighbours", ">= 1"),
            (self.state.timeout_s > 0, "state.timeout_s", "> 0"),
        ]
        for name, source in settings.items():
            for knob, (ok, expected) in SOURCE_RULES.items():
                if hasattr(source, knob):
                    checks.append((ok(getattr(source, knob)), f"sources.{name}.{knob}", expected))
        return checks


# The numeric settings of candidate sources, each checked on every source that has it (a
# test keeps this complete).
SOURCE_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "quota": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "weight": (lambda v: v >= 0, ">= 0"),
    "budget_ms": (lambda v: v > 0, "> 0"),
    "delay_ms": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "half_life_s": (lambda v: v > 0, "> 0"),
    "recent": (lambda v: v >= 1, ">= 1"),
    "recency_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "live_weight": (lambda v: v >= 0, ">= 0"),
    "max_impressions": (lambda v: v >= 1, ">= 1"),
    "pool": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= -1, ">= 0, or -1 (fresh entropy)"),
    "max_followees": (lambda v: v >= 1, ">= 1"),
}

DEFAULT_DATA_DIR = "~/.cache/annfleet"
MAX_PORT = 65535

T = TypeVar("T")

# Keys that moved: an old file gets told where they live now.
MOVED = {f"index.{name}": f"search.{name}" for name in ("ef_search", "nprobe", "rerank")}


def _build(cls: type[T], data: Any, source: str, prefix: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if f"{prefix}{key}" in MOVED:
            raise ConfigError(
                f"{source}: '{prefix}{key}' moved to '{MOVED[prefix + key]}' (search defaults "
                "are serving config; index: holds build parameters only)"
            )
        if key not in fields:
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(fields))})"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, source, f"{prefix}{key}.")  # type: ignore[arg-type]
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = float(value)
        elif not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: '{prefix}{key}' must be {hint.__name__}, got {value!r}")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _beside(config_path: Path, value: str) -> str:
    """A path from the config file: relative ones are resolved against the file's directory."""
    if not value or Path(value).expanduser().is_absolute():
        return value
    return str((config_path.parent / value).resolve())


def load_config(path: Path | str | None = None) -> ClusterConfig:
    """Defaults, or the YAML file at ``path`` over them."""
    if path is None:
        return ClusterConfig().validate()
    path = Path(path)
    try:
        with path.open("rb") as stream:  # an error then says "in PATH, line L", not
            data = yaml.safe_load(stream) or {}  # "in <unicode string>"
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    config = _build(ClusterConfig, data, str(path), "")
    if config.bundle and not Path(config.bundle).is_absolute():
        config = dataclasses.replace(config, bundle=str((path.parent / config.bundle).resolve()))
    config = dataclasses.replace(
        config,
        admin=dataclasses.replace(config.admin, token_file=_beside(path, config.admin.token_file)),
        shards=dataclasses.replace(
            config.shards, updates_dir=_beside(path, config.shards.updates_dir)
        ),
        tls=dataclasses.replace(
            config.tls,
            cert=_beside(path, config.tls.cert),
            key=_beside(path, config.tls.key),
            ca=_beside(path, config.tls.ca),
        ),
        sources=dataclasses.replace(
            config.sources,
            social=dataclasses.replace(
                config.sources.social, graph=_beside(path, config.sources.social.graph)
            ),
            fusion=_beside(path, config.sources.fusion),
        ),
    )
    return config.validate(str(path))


def host_port(host: str, port: int) -> str:
    """``host:port`` to bind or connect to, an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redis_loopback(url: str) -> tuple[str, int] | None:
    """(host, port) of a ``redis://`` url on a loopback host (localhost, 127.0.0.0/8, ::1)
    with an explicit port, else None (what ``state.start_redis`` can start a server for)."""
    try:
        parts = urlsplit(url)
        port, host = parts.port, parts.hostname or ""
    except ValueError:
        return None
    if parts.scheme != "redis" or port is None:
        return None
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
    return host, port


def replica_port(base: int, shard: int, replica: int = 0, replicas: int = 1) -> int:
    """Port of replica r of shard i: ``base + i * replicas + r``; a base of 0 (a free port)
    or -1 (off) stays as it is."""
    return base + shard * replicas + replica if base > 0 else base


def parse_shard_map(text: str) -> list[list[str]]:
    """``"h:1|h:2,h:3|h:4"`` -> ``[["h:1", "h:2"], ["h:3", "h:4"]]``: shards in order,
    comma-separated; the replicas of one shard ``|``-separated (one address = one replica)."""
    parts = [part for part in text.split(",") if part.strip()]
    shards = [[t.strip() for t in part.split("|") if t.strip()] for part in parts]
    if not shards or any(not replicas for replicas in shards):
        raise ConfigError(
            f"shard map {text!r}: expected HOST:PORT[|HOST:PORT...] per shard, comma-separated"
        )
    from annfleet.client.channels import check_target
    from annfleet.client.errors import InvalidArgument

    for target in (t for replicas in shards for t in replicas):
        try:
            check_target(target)
        except InvalidArgument as exc:
            raise ConfigError(f"shard map {text!r}: {exc.details}") from exc
    return shards


def format_shard_map(shards: list[list[str]]) -> str:
    """The inverse of :func:`parse_shard_map`."""
    return ",".join("|".join(replicas) for replicas in shards)
