"""The blender: dedup, quotas and backfill as properties; budgets with real tasks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from annfleet.config import SourcesConfig, SourceSettings, load_config
from annfleet.errors import ConfigError
from annfleet.router.blend import (
    HEAD_START_PASSES,
    LEARNED,
    QUOTA,
    RRF,
    TIMER_SLACK_S,
    Blender,
    Fusion,
    SourceList,
    asked,
    blend,
    blend_outcomes,
    budget_deadline,
    run_sources,
    slots,
    wait_end,
)
from annfleet.router.sources import Candidates, Source, SourceRequest
from annfleet.router.users import RequestContext

NAMES = {
    1: "ann",
    2: "popular",
    3: "co_engagement",
    4: "content",
    5: "exploration",
    6: "trending",
    7: "social",
}


def cleaned(ids: np.ndarray, exclude: set[int], k: int) -> list[int]:
    out: list[int] = []
    for i in ids.tolist():
        if i >= 0 and i not in exclude and i not in out:
            out.append(i)
    return out[:k]


def test_blend_example() -> None:
    lists = [
        SourceList("ann", 1, 0.5, 1.0, np.array([1, 2, 3, 4, 5, 6])),
        SourceList("trending", 6, 0.25, 0.5, np.array([3, 7, 8, -1])),
        SourceList("content", 4, 0.25, 0.2, None),  # dropped: its quota is backfilled
    ]
    result = blend(lists, 4, exclude=np.array([2]), dropped={"content": "budget"}, mode=QUOTA)
    # ann takes 2 slots (1, 3), trending 1 (7: 3 already taken), backfill: best left is 4.
    assert result.ids.tolist() == [1, 3, 4, 7]
    np.testing.assert_allclose(result.scores, [1.0, 0.75, 0.5, 0.375])
    assert result.primary.tolist() == [1, 1, 1, 6]
    assert result.masks.tolist() == [1 << 1, (1 << 1) | (1 << 6), 1 << 1, 1 << 6]
    assert result.counts == {"ann": 3, "trending": 2}
    assert result.dropped == {"content": "budget"}


def test_rrf_example() -> None:
    lists = [
        SourceList("ann", 1, 0.5, 1.0, np.array([1, 2, 3, 4, 5, 6])),
        SourceList("trending", 6, 0.25, 0.5, np.array([3, 7, 8, -1])),
        SourceList("exploration", 5, 0.25, 0.0, np.array([9, 10])),
        SourceList("content", 4, 0.25, 0.2, None),  # dropped
    ]
    result = blend(lists, 4, exclude=np.array([2]), dropped={"content": "budget"}, rrf_c=0)
    # scores: 3 = 1/2 + 0.5/1, 1 = 1/1, 4 = 1/3, 7 = 0.5/2, 5 = 1/4, 9 = 0 ...
    # floors: ann 2 (1, 3), trending 1 (3 is its first: met already), exploration 1 (9);
    # the rest of k by score: 4.
    assert result.ids.tolist() == [1, 3, 4, 9]
    np.testing.assert_allclose(result.scores, [1.0, 1.0, 1 / 3, 0.0])
    # 1 and 3 tie at 1.0: primary source ann (weight order) for both, then id.
    assert result.primary.tolist() == [1, 1, 1, 5]
    assert result.masks.tolist() == [1 << 1, (1 << 1) | (1 << 6), 1 << 1, 1 << 5]
    assert result.counts == {"ann": 3, "trending": 1, "exploration": 1}
    assert result.dropped == {"content": "budget"}


def test_rrf_depth_lets_agreement_below_k_count() -> None:
    """With depth, an item two sources rank just below k beats one only ann ranks inside k."""
    lists = [
        SourceList("ann", 1, 0.0, 1.0, np.array([1, 2, 3, 4])),
        SourceList("co_engagement", 3, 0.0, 1.0, np.array([5, 6, 7, 3])),
    ]
    shallow = blend(lists, 2, depth=0)
    deep = blend(lists, 2, depth=4)
    assert shallow.ids.tolist() == [1, 5]  # ties at rank 0: ann first (weight order, code)
    assert deep.ids.tolist() == [3, 1]  # 3: 1/63 + 1/64 beats 1/61 alone
    assert asked(2, RRF, 4) == 4 and asked(2, QUOTA, 4) == 2 and asked(8, RRF, 4) == 8
    assert Blender(RRF, 60.0, 4).asked(2) == 4


# A fitted fusion for the tests: edges (0, 1, 3) = buckets rank 0 and ranks >= 1, then absent.
FUSION = Fusion(
    edges=(0, 1, 3),
    tables=(
        ("ann", (2.0, 1.0, 0.0)),
        ("trending", (1.5, 0.5, -0.5)),
        ("content", (0.25, 0.25, -0.25)),
        ("popular", (0.5, -0.75, 0.0)),
        ("co_engagement", (1.0, 0.75, -1.0)),
    ),
    agreement=(0.0, 0.0, 0.75),
    bias=-1.0,
)


def test_learned_example() -> None:
    lists = [
        SourceList("ann", 1, 0.5, 1.0, np.array([1, 2, 3, 4])),
        SourceList("trending", 6, 0.25, 0.5, np.array([3, 7, 8])),
        SourceList("exploration", 5, 0.25, 0.0, np.array([9, 10])),  # no table: adds nothing
        SourceList("content", 4, 0.0, 0.2, None),  # dropped: counts as absent
    ]
    result = blend(
        lists, 4, exclude=np.array([2]), dropped={"content": "budget"}, mode=LEARNED, fusion=FUSION
    )
    # constant: bias -1 + every table's absent value (ann 0, trending -0.5, content -0.25,
    # popular 0, co_engagement -1: a source not asked counts as absent too) = -2.75; gains
    # (value - absent): ann rank 0 +2, ranks >= 1 +1; trending rank 0 +2, ranks >= 1 +1.
    # 3 = -2.75 + 1 (ann rank 1) + 2 (trending rank 0) + 0.75 (two sources) = 1.0;
    # 1 = -2.75 + 2 = -0.75; 4, 7, 8 = -1.75; 9, 10 = -2.75 (exploration: no table).
    # Floors: ann 2 (3, 1), trending 1 (has 3), exploration 1 (9); fill: 4 (ann before
    # trending at equal score).
    assert result.ids.tolist() == [3, 1, 4, 9]
    assert result.scores.tolist() == [1.0, -0.75, -1.75, -2.75]
    assert result.primary.tolist() == [6, 1, 1, 5]  # 3: trending's gain (2) beats ann's (1)
    assert result.masks.tolist() == [(1 << 1) | (1 << 6), 1 << 1, 1 << 1, 1 << 5]
    assert result.counts == {"ann": 3, "trending": 1, "exploration": 1}
    assert result.dropped == {"content": "budget"}
    with pytest.raises(ValueError, match="fusion parameters"):
        blend(lists, 4, mode=LEARNED)
    assert asked(4, LEARNED, 12) == 12


def test_fusion_parameters_load_from_json_and_refuse_malformed(tmp_path: Path) -> None:
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps({"fitted": {"on": "validation"}, **FUSION.as_json()}))
    assert Fusion.load(str(path)) == FUSION
    config = SourcesConfig(blend=LEARNED, fusion=str(path), depth=12)
    assert Blender.from_config(config) == Blender(LEARNED, config.rrf_c, 12, FUSION)
    assert Blender.from_config(SourcesConfig()).fusion is None  # rrf: nothing loaded
    bad = {
        "short table": {**FUSION.as_json(), "tables": {"ann": [1.0, 2.0]}},
        "edges": {**FUSION.as_json(), "edges": [0, 3, 3]},
        "finite": {**FUSION.as_json(), "bias": float("nan")},
        "agreement": {k: v for k, v in FUSION.as_json().items() if k != "agreement"},
    }
    for why, doc in bad.items():
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=re.escape(str(path))) as err:
            Fusion.load(str(path))
        assert why.split()[-1] in str(err.value)
    with pytest.raises(ValueError, match="cannot read"):
        Fusion.load(str(tmp_path / "missing.json"))
    path.write_text("not json")  # a ConfigError: serve-router exits 2 naming it, no traceback
    with pytest.raises(
        ConfigError, match=re.escape(f"sources.fusion: fusion parameters {path}: E")
    ):
        Fusion.load(str(path))


def test_learned_blend_config_needs_its_parameters_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "fusion.json").write_text(json.dumps(FUSION.as_json()))
    (tmp_path / "c.yaml").write_text("sources: {blend: learned, fusion: fusion.json}\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.sources.fusion == str(tmp_path / "fusion.json")
    assert Blender.from_config(config.sources).fusion == FUSION
    for body in ("{blend: learned}", "{blend: learned, fusion: missing.json}"):
        (tmp_path / "d.yaml").write_text(f"sources: {body}\n")
        with pytest.raises(ConfigError, match=r"sources\.fusion"):
            load_config(tmp_path / "d.yaml")


def test_slots() -> None:
    assert slots([0.6, 0.1, 0.15, 0.05, 0.05, 0.05], 10) == [
        6,
        1,
        2,
        1,
        0,
        0,
    ]  # remainders 0.5 tie: earlier first
    assert slots([0.5, 0.5], 3) == [2, 1]
    assert slots([0.3], 10) == [3]
    assert slots([0.0, 0.0], 5) == [0, 0]


MODES = [(QUOTA, 0), (RRF, 0), (RRF, 12), (LEARNED, 0), (LEARNED, 12)]


def learned_score(lists: list[SourceList], clean: dict[str, list[int]], item: int) -> float:
    """FUSION's score of ``item`` by its definition (blend module doc), item by item."""
    total, agree = FUSION.bias, 0
    for name, table in FUSION.tables:
        ranks = [
            clean[s.name].index(item) for s in lists if s.name == name and item in clean[s.name]
        ]
        if ranks:
            total += table[int(FUSION.bucket(np.array(ranks))[0])]
            agree += 1
        else:
            total += table[-1]
    return total + FUSION.agreement[min(agree, len(FUSION.agreement) - 1)]


source_lists = st.lists(
    st.tuples(
        st.integers(0, 10),  # quota tenths (normalised below)
        st.floats(0.0, 2.0, allow_nan=False),  # weight
        st.one_of(st.none(), st.lists(st.integers(-1, 40), max_size=30)),  # ids or dropped
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(
    source_lists,
    st.integers(1, 25),
    st.sets(st.integers(0, 40), max_size=10),
    st.sampled_from(MODES),
)
def test_blend_properties(raw: list, k: int, exclude: set[int], mode_depth: tuple) -> None:
    mode, depth = mode_depth
    limit = asked(k, mode, depth)
    codes = list(NAMES)[: len(raw)]
    total = sum(q for q, _, _ in raw) or 1
    lists = [
        SourceList(
            NAMES[c], c, q / max(total, 10), w, None if ids is None else np.array(ids, np.int64)
        )
        for c, (q, w, ids) in zip(codes, raw, strict=False)
    ]
    result = blend(
        lists, k, np.array(sorted(exclude), np.int64), mode=mode, depth=depth, fusion=FUSION
    )
    final = result.ids.tolist()
    live = [s for s in lists if s.ids is not None]
    clean = {s.name: cleaned(s.ids, exclude, limit) for s in live}  # type: ignore[arg-type]
    union = set().union(*clean.values()) if clean else set()

    # Dedup and filters.
    assert len(final) == len(set(final))
    assert not set(final) & exclude and all(i >= 0 for i in final)
    # k is full whenever the sources together had k candidates (backfill).
    assert len(final) == min(k, len(union))
    # Quotas: a source gets at least its slots (or all it had) among its first k candidates.
    order = sorted(live, key=lambda s: (-s.weight, s.code))
    for s, n in zip(order, slots([s.quota for s in order], k), strict=True):
        assert len(set(final) & set(clean[s.name][:k])) >= min(n, len(clean[s.name][:k]))
    # Every contributing source recorded; best (quota) or summed (rrf) score; by score.
    for item, mask, score, primary in zip(
        final, result.masks.tolist(), result.scores.tolist(), result.primary.tolist(), strict=True
    ):
        holders = [s for s in live if item in clean[s.name]]
        modelled = (lambda s: FUSION.table(s.name) is not None) if mode == LEARNED else None
        weighted = sum(1 << s.code for s in holders if (modelled(s) if modelled else s.weight > 0))
        assert mask & ~sum(1 << s.code for s in holders) == 0  # only sources that had it
        assert mask & weighted == weighted and mask >> primary & 1  # contributors, primary
        if mode == QUOTA:
            want = max(s.weight * (1 - clean[s.name].index(item) / k) for s in holders)
        elif mode == LEARNED:
            want = learned_score(live, clean, item)
        else:
            want = sum(s.weight / (61 + clean[s.name].index(item)) for s in holders)
        assert abs(score - want) < 1e-6
        assert primary in {s.code for s in holders}
    assert (np.diff(result.scores) <= 1e-7).all()
    masks = result.masks.tolist()
    assert result.counts == {s.name: sum(m >> s.code & 1 for m in masks) for s in live}


def reference_blend(
    lists: list[SourceList], k: int, exclude: set[int], mode: str = QUOTA, depth: int = 0
) -> dict[str, object]:
    """The blender's definition (module doc of annfleet.router.blend) item by item
    (learned: with FUSION)."""
    fuse = mode != QUOTA
    learned = mode == LEARNED
    order = sorted(lists, key=lambda s: (-s.weight, s.code))
    live = [s for s in order if s.ids is not None]
    clean = [cleaned(s.ids, exclude, asked(k, mode, depth)) for s in live]  # type: ignore[arg-type]
    best: dict[int, tuple[float, int, int, int]] = {}  # id -> (share, list position, code, rank)
    total: dict[int, float] = {}
    mask: dict[int, int] = {}
    for pos, (s, ids) in enumerate(zip(live, clean, strict=True)):
        for rank, item in enumerate(ids):
            table = FUSION.table(s.name)
            if learned:  # gain over the source's absent value (0 without a table)
                bucket = int(FUSION.bucket(np.array([rank]))[0])
                share = table[bucket] - table[-1] if table is not None else 0.0
            elif fuse:
                share = s.weight / (60.0 + rank + 1.0)
            else:
                share = s.weight * (1.0 - rank / k)
            # weight 0 (learned: no table) adds nothing: recorded only as primary or by its
            # quota (any positive weight contributes, even one whose share underflows to 0)
            if (table is not None) if learned else s.weight > 0:
                mask[item] = mask.get(item, 0) | (1 << s.code)
            total[item] = total.get(item, 0.0) + share
            if item not in best or share > best[item][0]:
                best[item] = (share, pos, s.code, rank)
    for item, (_, _, code, _) in best.items():
        mask[item] = mask.get(item, 0) | (1 << code)
    score = total if fuse else {i: b[0] for i, b in best.items()}
    if learned:
        const = FUSION.bias + sum(t[-1] for _, t in FUSION.tables)
        for i in score:
            agree = sum(
                1 for s, ids in zip(live, clean, strict=True) if FUSION.table(s.name) and i in ids
            )
            score[i] = const + total[i] + FUSION.agreement[min(agree, len(FUSION.agreement) - 1)]
    key = lambda i: (-score[i], best[i][1], best[i][3], i)  # noqa: E731
    chosen: list[int] = []
    for s, ids, quota in zip(live, clean, slots([s.quota for s in live], k), strict=True):
        if fuse:  # a floor over its first k: the best-scored of them not yet taken
            have = sum(1 for i in ids[:k] if i in chosen)
            free = sorted((i for i in ids[:k] if i not in chosen), key=key)
            picked = free[: max(min(quota - have, k - len(chosen)), 0)]
        else:
            picked = []
            for item in ids:
                if len(picked) >= quota or len(chosen) + len(picked) >= k:
                    break
                if item not in chosen:
                    picked.append(item)
        chosen += picked
        for item in picked:
            mask[item] |= 1 << s.code
    rest = sorted((i for i in best if i not in chosen), key=key)
    chosen += rest[: max(k - len(chosen), 0)]
    final = sorted(chosen, key=key)
    return {
        "ids": final,
        "scores": [np.float32(score[i]) for i in final],
        "primary": [best[i][2] for i in final],
        "masks": [mask[i] for i in final],
        "counts": {s.name: sum(1 for i in final if mask[i] >> s.code & 1) for s in live},
    }


@settings(max_examples=300, deadline=None)
@given(
    source_lists,
    st.integers(1, 25),
    st.sets(st.integers(0, 40), max_size=10),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.sampled_from(MODES),
)
# a positive weight whose share underflows to 0 is still a contributor (as in the blender)
@example([(0, 5e-324, [0]), (0, 0.0, None), (0, 1.0, [0])], 1, set(), 0.0, (RRF, 0))
def test_blend_equals_the_reference(
    raw: list, k: int, exclude: set[int], tied_weight: float, mode_depth: tuple
) -> None:
    """Exactly the item-by-item definition: ids, scores, primary sources, masks, counts;
    equal weights (ties across sources) drawn on purpose."""
    mode, depth = mode_depth
    codes = list(NAMES)[: len(raw)]
    total = sum(q for q, _, _ in raw) or 1
    lists = [
        SourceList(
            NAMES[c],
            c,
            q / max(total, 10),
            tied_weight if i % 2 else w,
            None if ids is None else np.array(ids, np.int64),
        )
        for i, (c, (q, w, ids)) in enumerate(zip(codes, raw, strict=False))
    ]
    result = blend(
        lists, k, np.array(sorted(exclude), np.int64), mode=mode, depth=depth, fusion=FUSION
    )
    want = reference_blend(lists, k, exclude, mode, depth)
    assert result.ids.tolist() == want["ids"]
    assert result.scores.tolist() == want["scores"]
    assert result.primary.tolist() == want["primary"]
    assert result.masks.tolist() == want["masks"]
    assert result.counts == want["counts"]
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32
    assert result.primary.dtype == np.uint8 and result.masks.dtype == np.uint32


def test_blend_of_nothing() -> None:
    result = blend([SourceList("ann", 1, 0.5, 1.0, None)], 5)
    assert result.ids.tolist() == [] and result.counts == {}
    result = blend([SourceList("ann", 1, 0.5, 1.0, np.array([-1, -1]))], 5, np.array([3]))
    assert result.ids.tolist() == [] and result.counts == {"ann": 0}


# --- budgets -----------------------------------------------------------------------------


class ListSource(Source):
    def __init__(
        self,
        name: str,
        ids: list[int],
        budget_ms: float = 1000.0,
        quota: float = 0.5,
        weight: float = 1.0,
    ) -> None:
        self.name = name
        super().__init__(SourceSettings(quota=quota, weight=weight, budget_ms=budget_ms))
        self.ids = np.array(ids, np.int64)

    async def fetch(self, request: SourceRequest) -> Candidates:
        ids = self.ids[~np.isin(self.ids, request.exclude)][: request.k]
        return Candidates(ids, np.linspace(1, 0, len(ids), dtype=np.float32))


class HangingSource(ListSource):
    """Sleeps far past its budget and ignores the first cancellation (a stubborn source)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished = asyncio.Event()
        self.started = False

    async def fetch(self, request: SourceRequest) -> Candidates:
        self.started = True
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # keeps going after being cancelled
        self.finished.set()
        return await super().fetch(request)


class FailingSource(ListSource):
    async def fetch(self, request: SourceRequest) -> Candidates:
        raise RuntimeError("table missing")


def req(k: int) -> SourceRequest:
    return SourceRequest(1, RequestContext(), k, time.monotonic() + 30, np.array([2], np.int64))


def test_a_source_past_its_budget_is_dropped_not_waited_for_and_k_stays_full() -> None:
    async def go() -> None:
        ann = ListSource("ann", [1, 2, 3, 4, 5, 6, 7, 8], quota=0.5, weight=1.0)
        hanging = HangingSource("trending", [20, 21, 22, 23], budget_ms=30, quota=0.5, weight=0.5)
        failing = FailingSource("content", [30, 31], quota=0.0, weight=0.2)
        sources = [ann, hanging, failing]
        outcomes = await run_sources(sources, req(6))
        assert hanging.started and not hanging.finished.is_set()  # returned without waiting
        assert outcomes["trending"].dropped == "budget"
        assert outcomes["content"].dropped == "error: RuntimeError: table missing"
        assert outcomes["ann"].dropped == "" and outcomes["ann"].candidates is not None
        result = blend_outcomes(sources, outcomes, 6, np.array([2]))
        assert result.ids.tolist() == [1, 3, 4, 5, 6, 7]  # k full from ann (backfill)
        assert set(result.dropped) == {"trending", "content"}
        await asyncio.wait_for(hanging.finished.wait(), 5)  # it did go on by itself

    asyncio.run(go())


def test_the_request_deadline_caps_every_budget() -> None:
    async def go() -> None:
        hanging = HangingSource("trending", [20], budget_ms=60_000)
        request = SourceRequest(1, RequestContext(), 3, time.monotonic() + 0.05)
        outcomes = await run_sources([hanging], request)
        assert outcomes["trending"].dropped == "budget"

    asyncio.run(go())


def test_a_budget_counts_from_the_requests_arrival_less_the_reply_margin() -> None:
    """The request reached the router 0.9 s ago and 0.1 s is kept to blend and reply: of the
    hanging source's 1 s budget nothing is left, so it is dropped at once; a source with
    budget to spare still answers."""

    async def go() -> None:
        hanging = HangingSource("trending", [20], budget_ms=1000)
        quick = ListSource("ann", [1, 2], budget_ms=60_000)
        now = time.monotonic()
        request = SourceRequest(
            1, RequestContext(), 3, now + 60, received=now - 0.9, reply_margin=0.1
        )
        outcomes = await run_sources([quick, hanging], request)
        assert outcomes["trending"].dropped == "budget"
        assert not hanging.started  # cancelled before its first step: no budget was left
        assert outcomes["ann"].dropped == ""
        assert outcomes["ann"].candidates is not None
        assert outcomes["ann"].candidates.ids.tolist() == [1, 2]

    asyncio.run(go())


def test_a_budget_counts_from_the_callers_send_the_measured_inbound_delay_inside_it() -> None:
    """``inbound``: the request spent 0.3 s on its way to the router before it arrived now.
    A 1 s budget then ends 0.7 s after the arrival (less the reply margin); an inbound delay
    past a budget spends all of it (the source is dropped unstarted, its deadline the wait's
    start), and a negative one counts as none."""

    async def go() -> None:
        now = time.monotonic()
        request = SourceRequest(
            1, RequestContext(), 3, now + 30, received=now, reply_margin=0.004, inbound=0.3
        )
        assert budget_deadline(request, 1.0) == pytest.approx(now + 0.7 - 0.004, abs=1e-9)
        assert budget_deadline(request, 0.2) == now - 0.004  # the shift stops at the budget
        assert budget_deadline(replace(request, inbound=-1.0), 1.0) == now + 1.0 - 0.004
        assert budget_deadline(replace(request, inbound=0.0), 1.0) == now + 1.0 - 0.004

        hanging = HangingSource("trending", [20], budget_ms=50)
        spent = HangingSource("content", [30], budget_ms=250)  # the 0.3 s spent it all
        quick = ListSource("ann", [1, 2], budget_ms=60_000)
        outcomes = await run_sources([quick, hanging, spent], replace(request, inbound=0.3))
        assert outcomes["content"].dropped == "budget" and not spent.started
        assert now <= outcomes["content"].deadline <= outcomes["content"].ended
        assert outcomes["trending"].dropped == "budget"
        assert outcomes["ann"].candidates is not None
        assert outcomes["ann"].candidates.ids.tolist() == [1, 2]

        slow = HangingSource("trending", [20], budget_ms=300)
        late = replace(request, received=time.monotonic(), inbound=0.1)
        outcomes = await run_sources([quick, slow], late)
        # 300 ms budget, 100 ms of it spent on the way in, 4 ms kept back
        assert outcomes["trending"].deadline == pytest.approx(
            late.received + 0.3 - 0.1 - 0.004, abs=1e-9
        )
        assert outcomes["trending"].dropped == "budget" and slow.started

    asyncio.run(go())


def test_each_outcome_has_its_deadline_and_the_wait_end_names_the_budget_that_ended_it() -> None:
    """A source's deadline is received + its budget - reply_margin (capped by the request's);
    the wait that ends by dropping a source at its budget reports that deadline, one that
    ends with an answer reports none."""

    async def go() -> None:
        now = time.monotonic()
        hanging = HangingSource("trending", [20], budget_ms=50)
        quick = ListSource("ann", [1, 2], budget_ms=60_000)
        request = SourceRequest(1, RequestContext(), 3, now + 30, received=now, reply_margin=0.004)
        outcomes = await run_sources([quick, hanging], request)
        assert outcomes["trending"].dropped == "budget"
        assert outcomes["trending"].deadline == now + 0.050 - 0.004
        assert outcomes["ann"].deadline == now + 30  # the request's deadline caps its budget
        done, budget_end = wait_end(outcomes)
        assert done == outcomes["trending"].ended >= outcomes["ann"].ended
        assert budget_end == outcomes["trending"].deadline
        # blend_outcomes carries both to the response
        result = blend_outcomes([quick, hanging], outcomes, 3)
        assert (result.sources_done, result.budget_end) == (done, budget_end)

        answered = await run_sources([quick], replace(request, received=time.monotonic()))
        done, budget_end = wait_end(answered)
        assert done == answered["ann"].ended and budget_end == 0.0
        assert wait_end({}) == (0.0, 0.0)

    asyncio.run(go())


def test_cancelling_the_caller_cancels_the_sources() -> None:
    async def go() -> None:
        class Slow(ListSource):
            cancelled = False

            async def fetch(self, request: SourceRequest) -> Candidates:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    Slow.cancelled = True
                    raise
                return Candidates.empty()

        task = asyncio.ensure_future(run_sources([Slow("ann", [])], req(3)))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        assert Slow.cancelled

    asyncio.run(go())


def test_remote_sources_get_a_head_start_over_local_ones() -> None:
    """The ANN's shard calls need a few loop passes to leave (its task, then the calls' own
    tasks, then the stream writer); the local sources, CPU on the same loop, start after."""
    events: list[str] = []

    class Remote(ListSource):
        remote = True

        async def fetch(self, request: SourceRequest) -> Candidates:
            events.append("remote asked")
            for _ in range(HEAD_START_PASSES - 1):  # a chain of tasks, one pass each
                await asyncio.sleep(0)
            events.append("remote sent")
            return await super().fetch(request)

    class Local(ListSource):
        async def fetch(self, request: SourceRequest) -> Candidates:
            events.append(f"{self.name} computed")
            return await super().fetch(request)

    async def go() -> dict[str, object]:
        sources = [Local("trending", [5, 6]), Remote("ann", [1, 2, 3]), Local("content", [7])]
        return await run_sources(sources, req(3))  # type: ignore[return-value]

    outcomes = asyncio.run(go())
    assert events == ["remote asked", "remote sent", "trending computed", "content computed"]
    assert all(o.dropped == "" for o in outcomes.values())  # type: ignore[attr-defined]


def test_source_seconds_are_each_sources_own() -> None:
    """One wait for every source: each outcome's time is when that source answered."""

    class Later(ListSource):
        async def fetch(self, request: SourceRequest) -> Candidates:
            await asyncio.sleep(0.05)
            return await super().fetch(request)

    async def go() -> dict[str, object]:
        sources = [ListSource("ann", [1]), Later("trending", [4])]
        return await run_sources(sources, req(3))  # type: ignore[return-value]

    outcomes = asyncio.run(go())
    ann, trending = outcomes["ann"], outcomes["trending"]
    assert ann.seconds < trending.seconds  # type: ignore[attr-defined]
    assert trending.candidates.ids.tolist() == [4]  # type: ignore[attr-defined]


def test_a_hanging_source_is_dropped_no_earlier_than_its_budget_less_the_timer_slack() -> None:
    async def go() -> dict[str, object]:
        hanging = HangingSource("trending", [20], budget_ms=30)
        return await run_sources([ListSource("ann", [1]), hanging], req(3))  # type: ignore[return-value]

    outcomes = asyncio.run(go())
    dropped = outcomes["trending"]
    assert dropped.dropped == "budget"  # type: ignore[attr-defined]
    assert dropped.seconds >= 0.030 - TIMER_SLACK_S  # type: ignore[attr-defined]
    assert outcomes["ann"].candidates.ids.tolist() == [1]  # type: ignore[attr-defined]
