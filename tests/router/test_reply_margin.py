"""The reply margin (router/margin.py): what Retrieve keeps back from each source's budget is
measured after each budget that ended a wait, bounded, and used in the sources' deadlines;
with the return time the caller reports (annfleet.return_time) kept back too."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from support import patient

from annfleet.bundle import Bundle
from annfleet.client import Client
from annfleet.config import (
    ConfigError,
    RouterConfig,
    SourcesConfig,
    TrendingSourceConfig,
    load_config,
)
from annfleet.queue_time import TIMEOUT_METADATA, timeout_metadata
from annfleet.return_time import MIN_SAMPLES as RETURN_MIN_SAMPLES
from annfleet.return_time import RETURN_METADATA, return_metadata
from annfleet.router.blend import TIMER_SLACK_S
from annfleet.router.margin import MIN_SAMPLES, ReplyMargin
from annfleet.synthetic import Catalogue
from annfleet.v1 import retrieval_pb2, retrieval_pb2_grpc


def test_the_margin_is_its_cap_until_measured_then_the_quantile_of_the_window() -> None:
    margin = ReplyMargin(quantile=0.5, window=40, max_s=0.004)
    assert margin.value == 0.004 and margin.samples == 0
    for _ in range(MIN_SAMPLES - 1):
        margin.observe(0.001)
    assert margin.value == 0.004  # not enough measured yet
    margin.observe(0.001)
    assert margin.value == pytest.approx(0.001)
    for seconds in np.linspace(0.0, 0.002, 40):  # the window rolls: the 0.001s are gone
        margin.observe(float(seconds))
    assert margin.samples == 40
    assert margin.value == pytest.approx(float(np.quantile(np.linspace(0.0, 0.002, 40), 0.5)))


def test_the_margin_stays_between_zero_and_its_cap() -> None:
    margin = ReplyMargin(quantile=0.99, window=64, max_s=0.003)
    for _ in range(64):
        margin.observe(0.5)  # a stall: capped
    assert margin.value == 0.003
    for _ in range(64):
        margin.observe(-0.0005)  # replies before the deadline (the timer fired early)
    assert margin.value == 0.0
    off = ReplyMargin(max_s=0.0)
    for _ in range(MIN_SAMPLES):
        off.observe(0.002)
    assert off.value == 0.0


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reply_margin_quantile", 0.0),
        ("reply_margin_window", 0),
        ("reply_margin_max_s", -1),
        ("return_time_max_share", -0.1),
        ("return_time_max_share", 1.5),
    ],
)
def test_bad_margin_settings_are_refused(tmp_path, key: str, value: float) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(f"router:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"router.{key}"):
        load_config(path)


def hanging_trending(budget_ms: float = 300.0) -> SourcesConfig:
    """Every source patient but trending, which answers 30 s late against its budget."""
    base = patient(SourcesConfig())
    return replace(
        base, trending=TrendingSourceConfig(budget_ms=budget_ms, delay_ms=30_000.0, quota=0.3)
    )


def wait_for(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``condition()`` (the router notes a reply's time once it is on its way,
    which can be just after the client got it)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never: {what}")
        time.sleep(0.01)


# shard attempts that outlast a starved test box: only trending can miss its budget
PATIENT_ROUTER = RouterConfig(oversample=3.0, shard_timeout_s=20.0, deadline_margin_s=0.002)


def test_each_budget_that_ends_a_wait_is_measured_and_sets_the_next_margin(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    # the median: the first (real) time, whatever it was on this box, does not move it
    config = replace(PATIENT_ROUTER, reply_margin_max_s=0.004, reply_margin_quantile=0.5)
    # Only a budget that ends the wait is measured: trending's must outlast every other
    # source's answer. At 300 ms, a loop stalled that long during the ANN's call (a starved
    # box) let the ANN answer after it: no measurement, and the count below never came.
    cluster = cluster_factory(flat_bundle, config, sources=hanging_trending(budget_ms=1_000.0))
    margin = cluster.router.service.reply_margin
    user, k = int(catalogue.user_ids[3]), 30
    with Client(cluster.router_target, timeout=10) as client:
        first = client.retrieve(user, k)
        assert first.dropped_sources == {"trending": "budget"}
        assert first.timings_ms["reply_margin"] == pytest.approx(6.0)  # 2 ms + the cap
        wait_for(lambda: margin.samples == 1, "the first reply measured")
        for _ in range(MIN_SAMPLES):  # as if the router had measured 1 ms replies
            margin.observe(0.001)
        assert margin.value == pytest.approx(0.001)
        for n in range(3):
            before = margin.value
            result = client.retrieve(user, k)
            assert result.dropped_sources == {"trending": "budget"}
            assert len(result.ids) == k  # the other sources fill k
            # what was kept back: deadline_margin_s + the measured part in force
            assert result.timings_ms["reply_margin"] == pytest.approx((0.002 + before) * 1e3)
            assert 0 < result.timings_ms["sources"] <= result.timings_ms["total"]
            wait_for(lambda n=n: margin.samples == MIN_SAMPLES + n + 2, f"reply {n} measured")
    assert 0.0 <= margin.value <= 0.004


def test_no_budget_no_measurement_and_a_zero_cap_keeps_only_the_fixed_margin(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    config = replace(PATIENT_ROUTER, deadline_margin_s=0.003, reply_margin_max_s=0.0)
    calm = cluster_factory(flat_bundle, config, sources=patient(SourcesConfig()))
    hung = cluster_factory(flat_bundle, config, sources=hanging_trending())
    user, k = int(catalogue.user_ids[3]), 30
    with Client(calm.router_target, timeout=10) as a, Client(hung.router_target, timeout=10) as b:
        for _ in range(3):
            answered = a.retrieve(user, k)
            assert answered.dropped_sources == {}
            assert answered.timings_ms["reply_margin"] == pytest.approx(3.0)
            assert answered.timings_ms["inbound"] >= 0.0  # the client sent its timeout
            dropped = b.retrieve(user, k)
            assert dropped.dropped_sources == {"trending": "budget"}
            assert dropped.timings_ms["reply_margin"] == pytest.approx(3.0)
    with Client(calm.router_target, timeout=10, report_timeout=False) as quiet:
        assert "inbound" not in quiet.retrieve(user, k).timings_ms  # nothing to measure it by
    wait_for(lambda: hung.router.service.reply_margin.samples == 3, "the 3 budgets measured")
    assert calm.router.service.reply_margin.samples == 0  # every source answered: nothing to time
    assert hung.router.service.reply_margin.value == 0.0


def test_a_budget_counts_from_the_callers_send_when_it_sent_its_timeout(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    """The router measures a request's way in from the timeout its caller sent
    (``annfleet-timeout-ms`` minus what the call has left at the handler) and counts each
    source's budget from the send. Trending hangs with a 30 s budget, longer than the calls'
    20 s: counted from the handler it would hold every call to the call's deadline."""
    config = replace(PATIENT_ROUTER, queue_target_s=0.0)  # no queue-time shedding here
    cluster = cluster_factory(flat_bundle, config, sources=hanging_trending(budget_ms=30_000.0))
    user, k = int(catalogue.user_ids[3]), 30
    request = retrieval_pb2.RetrieveRequest(user_id=user, k=k)
    with grpc.insecure_channel(cluster.router_target) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        # The caller says it gave the call 60 s: at least 40 s went by on the way in, more
        # than trending's whole budget, so trending is dropped as soon as it is asked.
        spent = stub.Retrieve(request, timeout=20.0, metadata=timeout_metadata(60.0))
        assert dict(spent.dropped_sources) == {"trending": "budget"}
        assert len(np.frombuffer(spent.ids, "<i8")) == k  # the other sources fill k
        assert spent.timings_ms["inbound"] >= 40_000.0 - 100.0  # gRPC rounds 20 s up to 0.1 s
        assert spent.timings_ms["sources"] < 10_000.0  # not held to the call's deadline
        # 49.5 s sent: about 29.5 s of the 30 s budget went by on the way in; trending is
        # dropped when the rest of it, less the reply margin, has passed since the arrival
        part = stub.Retrieve(request, timeout=20.0, metadata=timeout_metadata(49.5))
        assert dict(part.dropped_sources) == {"trending": "budget"}
        assert len(np.frombuffer(part.ids, "<i8")) == k
        inbound, timings = part.timings_ms["inbound"], part.timings_ms
        assert inbound >= 29_500.0 - 100.0
        rest = 30_000.0 - inbound - timings["reply_margin"] - TIMER_SLACK_S * 1e3
        assert rest - 0.01 <= timings["sources"] < 10_000.0
        # a malformed entry: INVALID_ARGUMENT naming it; the router keeps serving
        with pytest.raises(grpc.RpcError) as bad:
            stub.Retrieve(request, timeout=20.0, metadata=((TIMEOUT_METADATA, "soon"),))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "annfleet-timeout-ms: 'soon'" in (bad.value.details() or "")
        again = stub.Retrieve(request, timeout=20.0, metadata=timeout_metadata(60.0))
        assert dict(again.dropped_sources) == {"trending": "budget"}


def test_the_return_time_the_caller_reports_is_kept_back_from_each_budget_capped(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    """``annfleet-return-ms`` (annfleet.return_time): the reply's way back as the caller
    measured it, kept back from each source's budget, at most
    ``router.return_time_max_share`` of it. Trending hangs; the calls have 20 s."""
    config = replace(PATIENT_ROUTER, queue_target_s=0.0, return_time_max_share=1.0)
    whole = cluster_factory(flat_bundle, config, sources=hanging_trending(budget_ms=30_000.0))
    capped = cluster_factory(
        flat_bundle, replace(config, return_time_max_share=0.25), sources=hanging_trending()
    )
    user, k = int(catalogue.user_ids[3]), 30
    request = retrieval_pb2.RetrieveRequest(user_id=user, k=k)
    slack = TIMER_SLACK_S * 1e3 + 0.01
    with (
        grpc.insecure_channel(whole.router_target) as a,
        grpc.insecure_channel(capped.router_target) as b,
    ):
        stub, capped_stub = retrieval_pb2_grpc.RetrievalStub(a), retrieval_pb2_grpc.RetrievalStub(b)
        # 29.7 s of trending's 30 s budget kept back for the way back: it is dropped about
        # 0.3 s after the arrival, not held to the call's 20 s deadline
        short = stub.Retrieve(request, timeout=20.0, metadata=return_metadata(29.7))
        assert dict(short.dropped_sources) == {"trending": "budget"}
        assert len(np.frombuffer(short.ids, "<i8")) == k  # the other sources fill k
        timings = short.timings_ms
        assert timings["return"] == pytest.approx(29_700.0)
        assert "inbound" not in timings  # no timeout entry: the budget counts from the arrival
        rest = 30_000.0 - 29_700.0 - timings["reply_margin"]
        assert rest - slack <= timings["sources"] < 10_000.0
        # with the timeout entry too: both the way in and the way back are inside the budget
        both = return_metadata(29.7) + timeout_metadata(20.0)
        sent = stub.Retrieve(request, timeout=20.0, metadata=both)
        assert dict(sent.dropped_sources) == {"trending": "budget"}
        timings = sent.timings_ms
        assert timings["return"] == pytest.approx(29_700.0) and timings["inbound"] >= 0.0
        rest = 30_000.0 - timings["inbound"] - 29_700.0 - timings["reply_margin"]
        assert rest - slack <= timings["sources"] < 10_000.0
        # at most a quarter of a 300 ms budget: 1 s reported keeps back 75 ms, not all of it
        held = capped_stub.Retrieve(request, timeout=20.0, metadata=return_metadata(1.0))
        assert dict(held.dropped_sources) == {"trending": "budget"}
        timings = held.timings_ms
        assert timings["return"] == pytest.approx(1_000.0)
        assert 300.0 - 75.0 - timings["reply_margin"] - slack <= timings["sources"]
        # a malformed entry: INVALID_ARGUMENT naming it; the router keeps serving
        for value in ("soon", "-2", "nan"):
            with pytest.raises(grpc.RpcError) as bad:
                stub.Retrieve(request, timeout=20.0, metadata=((RETURN_METADATA, value),))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"annfleet-return-ms: {value!r}" in (bad.value.details() or "")
        again = stub.Retrieve(request, timeout=20.0, metadata=return_metadata(29.7))
        assert dict(again.dropped_sources) == {"trending": "budget"}


def test_the_client_reports_its_measured_return_time_once_it_has_enough_calls(
    cluster_factory,  # type: ignore[no-untyped-def]
    flat_bundle: Bundle,
    catalogue: Catalogue,
) -> None:
    cluster = cluster_factory(flat_bundle, PATIENT_ROUTER, sources=patient(SourcesConfig()))
    user, k = int(catalogue.user_ids[3]), 30
    with (
        Client(cluster.router_target, timeout=10) as client,
        Client(cluster.router_target, timeout=10, report_return=False) as quiet,
    ):
        estimate = client.return_time
        assert estimate is not None and quiet.return_time is None
        for n in range(RETURN_MIN_SAMPLES + 1):
            # one return time per answered Retrieve, but the first (the channel connecting)
            assert estimate.samples == max(n - 1, 0)
            assert "return" not in client.retrieve(user, k).timings_ms  # not measured yet
            assert "return" not in quiet.retrieve(user, k).timings_ms
        for _ in range(3):
            sent = estimate.value()  # what the next call carries
            assert sent is not None and sent >= 0.0
            result = client.retrieve(user, k)
            assert result.timings_ms["return"] == pytest.approx(sent * 1e3, abs=1e-3)
            assert result.dropped_sources == {}
            assert "return" not in quiet.retrieve(user, k).timings_ms
        assert estimate.samples == RETURN_MIN_SAMPLES + 3
