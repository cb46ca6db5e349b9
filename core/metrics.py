"""Prometheus metrics shared by every annfleet process (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

REQUESTS = Counter(
    "annfleet_requests", "RPCs handled, by final status code", ["service", "method", "code"]
)
LATENCY = Histogram(
    "annfleet_request_seconds",
    "RPC latency in seconds",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
SHARD_FAILURES = Counter(
    "annfleet_router_shard_failures",
    "Shard RPCs that failed or timed out, seen by the router",
    ["shard", "code"],
)
DEGRADED = Counter(
    "annfleet_router_degraded", "Router responses missing at least one shard", ["method"]
)
SHARD_DROPPED = Counter(
    "annfleet_shard_dropped",
    "Searches a shard dropped before they reached the index "
    "(deadline: expired on arrival or in the queue; cancelled: caller gone while queued; "
    "queue_full: max_queue reached, RESOURCE_EXHAUSTED)",
    ["reason"],
)
REPLICA_ATTEMPTS = Counter(
    "annfleet_router_replica_attempts",
    "Shard attempts the router made, by replica and outcome (OK, a status code, CANCELLED "
    "when a hedge won or the deadline passed)",
    ["shard", "replica", "outcome"],
)
REPLICA_SERVING = Gauge(
    "annfleet_router_replica_serving",
    "1 while the replica's health stream says SERVING, else 0",
    ["shard", "replica"],
)
FOLLOWS = Counter(
    "annfleet_router_follows",
    "Bundles this router moved to because the shards' replicas all had them active (another "
    "router ran the rollout, rollback or promote): followed, or failed (it cannot load it)",
    ["outcome"],
)
HEDGES = Counter(
    "annfleet_router_hedges",
    "Hedge decisions: sent, or skipped for lack of budget or of another usable replica",
    ["shard", "outcome"],
)
IN_FLIGHT_LIMIT = Gauge(
    "annfleet_router_in_flight_limit",
    "Requests the router admits at once now (router.admission); beyond: RESOURCE_EXHAUSTED",
)
QUEUE_SECONDS = Histogram(
    "annfleet_router_queue_seconds",
    "How long requests waited before the router's handler (those whose client sent "
    "annfleet-timeout-ms)",
    buckets=LATENCY_BUCKETS,
)
QUEUE_SHED = Counter(
    "annfleet_router_queue_shed",
    "Requests the router refused because they queued beyond router.queue_target_s",
)
ADMIN_REFUSED = Counter(
    "annfleet_admin_refused", "Admin calls refused before they ran, by status code", ["code"]
)
SHARD_ITEMS = Gauge(
    "annfleet_shard_items",
    "Items of a held bundle's shard, by kind (bundle, upserted, deleted, searchable)",
    ["bundle", "kind"],
)


SOURCE_LATENCY = Histogram(
    "annfleet_router_source_seconds",
    "Candidate source latency in seconds (until answered or dropped)",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
REPLY_MARGIN = Gauge(
    "annfleet_router_reply_margin_seconds",
    "Measured part of what Retrieve keeps back from each source's budget to blend and reply "
    "(router/margin.py; router.deadline_margin_s comes on top)",
)
SOURCE_OUTCOMES = Counter(
    "annfleet_router_source_outcomes",
    "Candidate source runs by outcome: ok, budget (dropped past its budget), error",
    ["source", "outcome"],
)
SOURCE_CANDIDATES = Counter(
    "annfleet_router_source_candidates",
    "Candidates served that each source returned (a candidate from two sources counts twice)",
    ["source"],
)
CACHE_LOOKUPS = Counter(
    "annfleet_router_cache_lookups", "Router cache lookups by cache and result", ["cache", "result"]
)
RECALL = Gauge(
    "annfleet_router_recall",
    "Live recall@k of sampled requests against exact search (mean of the last "
    'router.recall_window samples), per bundle and shard (shard="all": the router\'s merged '
    "top-k over every shard)",
    ["bundle", "shard", "k"],
)
RECALL_SAMPLES = Counter(
    "annfleet_router_recall_samples",
    "Live recall samples by outcome: measured, dropped (queue full), failed (a shard or "
    "its ExactSearch did not answer)",
    ["outcome"],
)
DIVERSITY_ILD = Gauge(
    "annfleet_router_intra_list_distance",
    "Mean pairwise cosine distance of the content features of the items in a served Retrieve "
    "list, averaged over the sampled lists of the window (sources.diversity_window), per bundle",
    ["bundle"],
)
DIVERSITY_COVERAGE = Gauge(
    "annfleet_router_catalogue_coverage",
    "Distinct items in the window's sampled served lists / items in the bundle",
    ["bundle"],
)
DIVERSITY_GINI = Gauge(
    "annfleet_router_exposure_gini",
    "Gini coefficient of per-item serve counts in the window's sampled lists over the whole "
    "catalogue (0 = equal exposure, (n-1)/n = one item takes every serve)",
    ["bundle"],
)
DIVERSITY_LISTS = Gauge(
    "annfleet_router_diversity_window_lists",
    "Sampled served lists the diversity gauges are computed over, per bundle",
    ["bundle"],
)
GC_PAUSE = Histogram(
    "annfleet_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation collected (2 = full)",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
GC_FROZEN = Gauge(
    "annfleet_gc_frozen_objects",
    "Objects frozen out of the garbage collector's reach at start-up (gc.freeze)",
)
