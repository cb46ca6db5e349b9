"""`bench profile`'s classification of py-spy stacks and its CPU split (py-spy itself is
run by the benchmark, not here: it needs ptrace rights on the servers)."""

from __future__ import annotations

from annfleet.benchmarks.flamegraph import Profile, parse_raw, stack_category, svg
from annfleet.benchmarks.profile import cpu_per_query, split_table

LOOP = "run (core/serving.py:324);Runner.run (asyncio/runners.py:118);Handle__run (loop.c:70905)"
CYGRPC = "0x7f00 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
RAW = [
    # faiss under our search path
    f"{LOOP};ShardIndex.search (server/index.py:213);faiss::HNSW::search (faiss/libfaiss.so) 30",
    # gRPC sending on the socket
    f"{LOOP};{CYGRPC};sendmsg (libc.so.6) 40",
    # our code called by gRPC's Cython servicer machinery: glue, not gRPC
    f"{LOOP};{CYGRPC};merge_topk (core/merge.py:33);argpartition (numpy/fromnumeric.py:932) 20",
    # protobuf inside grpc and numpy inside our codec: (de)serialisation
    f"{LOOP};{CYGRPC};PyUpb_Message_FromString (_message.abi3.so) 6",
    f"{LOOP};to_bytes (core/arrays.py:27);array_tobytes (numpy/_core/_multiarray_umath.so) 4",
    # idle: the event loop waiting, an executor thread waiting for work or the GIL
    f"{LOOP};uv__io_poll (linux.c:1452);epoll_pwait (libc.so.6) 500",
    "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81);"
    "PyThread_acquire_lock_timed (libpython3.11.so.1.0) 300",
    "garbage line without a count",
]


def test_idle_stacks_are_left_out_and_busy_ones_classified() -> None:
    busy, idle = parse_raw(RAW)
    assert idle == 800
    profile = Profile(busy, idle)
    assert profile.samples == 100
    assert profile.by_category == {"faiss": 30, "grpc": 40, "serde": 10, "glue": 20}
    assert stack_category(["Py_DECREF (object.h:538)"]) == "glue"  # nothing decides
    top = profile.top_frames(1)[0]
    assert top[0].startswith("sendmsg (libc.so.6)") and top[1] == "grpc" and top[2] == 0.4


def test_cpu_split_uses_shard_zero_shares_for_every_shard() -> None:
    busy, idle = parse_raw(RAW)
    result = {
        "ok": 1000,
        "cpu": {
            "shard-00": {"cpu_seconds": 0.5},
            "shard-01": {"cpu_seconds": 0.3},
            "router": {"cpu_seconds": 1.0},
            "client-0": {"cpu_seconds": 9.0},
        },
    }
    per_query = cpu_per_query(result)
    assert per_query == {"shard-00": 500.0, "shard-01": 300.0, "router": 1000.0}
    rows = {r["process"]: r for r in split_table(per_query, {"shard-00": Profile(busy, idle)})}
    assert rows["shard-01"]["faiss"] == 90.0 and rows["shard-01"]["split_from"] == "shard-00"
    assert rows["router"]["faiss"] is None  # no router profile: no split
    assert rows["all servers"]["cpu_us_per_query"] == 1800.0
    assert rows["all servers"]["grpc"] is None


def test_flame_graph_is_svg_with_a_box_per_frame() -> None:
    busy, idle = parse_raw(RAW)
    text = svg(Profile(busy, idle), "shard <test>")
    assert text.startswith("<svg") and text.rstrip().endswith("</svg>")
    assert "shard &lt;test&gt;" in text
    assert "faiss::HNSW::search (faiss/libfaiss.so) (30 samples, 30.0%)" in text
    assert "epoll_pwait" not in text  # idle stacks are not drawn
