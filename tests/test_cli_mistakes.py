"""User mistakes on the command line: a precise message, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from test_cli import ANNFLEET, run, wait_for_line

from annfleet.cluster import free_port
from annfleet.server.builder import build_bundle
from annfleet.synthetic import make_catalogue


def _fails_clearly(done: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert done.returncode == code, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def _processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.fixture
def reaped(tmp_path: Path) -> Iterator[None]:
    """After an `up` test: no process naming tmp_path (a shard, the router) is left behind;
    any that is gets killed, and the test fails."""
    yield
    left = _processes_naming(str(tmp_path))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def test_query_with_a_bad_recent_list_is_a_usage_error() -> None:
    done = run("query", "--user", "1", "--recent", "50,x", "--target", "127.0.0.1:1")
    _fails_clearly(done, "argument --recent: '50,x': expected comma-separated integer item ids")


@pytest.mark.parametrize("command", [["up"], ["status"], ["query", "--user", "1"]])
def test_a_config_value_out_of_range_is_a_usage_error_naming_its_path(
    tmp_path: Path, command: list[str], reaped: None
) -> None:
    """Before: shards.search_threads 0 ran with 1 thread, a negative cache size was a cache
    that was silently off, min_in_flight above max_in_flight was silently clamped."""
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nshards: {{search_threads: 0}}\n")
    done = run(*command, "--config", str(config), timeout=60)
    _fails_clearly(done, f"{config}: shards.search_threads must be >= 1")


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path: Path, unbuffered: str) -> None:
    """`annfleet status | head -1`: before, a BrokenPipeError traceback (or, with buffered
    output, "Exception ignored ... BrokenPipeError" at exit)."""
    config = _ports_config(tmp_path)
    status = subprocess.Popen(
        [*ANNFLEET, "status", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
    )
    assert status.stdout is not None
    status.stdout.close()  # the reader is gone before the first line is written
    _, err = status.communicate(timeout=60)
    assert status.returncode == 1
    assert "BrokenPipe" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", [["query"], ["engage", "--item", "2"]])
def test_query_and_engage_without_target_ask_the_configs_router(
    tmp_path: Path, command: list[str]
) -> None:
    """Before: 127.0.0.1:50051 whatever the config said. A wildcard listen address is asked
    on loopback."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nrouter: {{host: 0.0.0.0, port: {port}}}\n")
    done = run(*command, "--user", "1", "--config", str(config), "--timeout", "2")
    _fails_clearly(done, f"annfleet {command[0]}: UNAVAILABLE", f"127.0.0.1:{port}", code=1)


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--user", "1", "--timeout", "0"],
        ["engage", "--user", "1", "--item", "2", "--timeout", "-1"],
        ["probe", "--timeout", "-1"],  # before: "DOWN" and exit 1, of a process that was up
    ],
)
def test_a_timeout_that_is_not_positive_is_a_usage_error(args: list[str]) -> None:
    done = run(*args, "--target", "127.0.0.1:1")
    _fails_clearly(done, "argument --timeout:", "expected a number of seconds > 0")


@pytest.mark.parametrize("limit", ["-1", "x", str(2**32)])
def test_items_blocked_limit_out_of_range_is_a_usage_error(limit: str) -> None:
    done = run("items", "blocked", "--limit", limit, "--router", "127.0.0.1:1")
    _fails_clearly(done, "argument --limit:", "expected a number of ids >= 0")


@pytest.mark.parametrize(
    "args",
    [
        ["probe", "--port", "99999"],  # before: "DOWN", having dialled port 34463
        ["query", "--user", "1", "--target", "127.0.0.1:99999"],
        ["engage", "--user", "1", "--item", "2", "--target", "127.0.0.1:99999"],
    ],
)
def test_a_port_beyond_65535_is_named_not_dialled_modulo_65536(args: list[str]) -> None:
    done = run(*args)
    _fails_clearly(done, "port '99999' is not in 1..65535", code=1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--m", "1"], "hnsw index parameter m must be an integer >= 2, got 1"),
        (["--ef-construction", "0"], "ef_construction must be an integer >= 1, got 0"),
        (["--index", "ivfpq", "--nlist", "0"], "ivfpq index parameter nlist must be"),
        (["--index", "ivfpq", "--nbits", "0"], "ivfpq index parameter nbits must be"),
        (["--index", "ivfpq", "--pq-m", "-2"], "pq_m must be an integer >= 0 (0 = auto)"),
    ],
)
def test_build_bundle_refuses_index_parameters_faiss_cannot_take(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((200, 8), dtype=np.float32))
    out = tmp_path / "b"
    done = run(
        "build-bundle", "--vectors", str(tmp_path / "x.npy"), "--shards", "2", "--out", str(out),
        *flags,
    )  # fmt: skip
    _fails_clearly(done, message)  # before: hnsw m=1 killed the process (faiss SIGSEGV)
    assert not out.exists()


def _ports_config(tmp_path: Path) -> Path:
    """A config on free loopback ports with its data dir under tmp_path."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"shards: {{base_port: {free_port(count=2)}, metrics_base_port: -1, admin_base_port: -1,"
        " grace_s: 0.5}\n"
        f"router: {{port: {free_port()}, metrics_port: -1, admin_port: -1, grace_s: 0.5}}\n"
    )
    return config


def test_up_on_a_corrupt_bundle_names_the_shard_and_the_file(tmp_path: Path, reaped: None) -> None:
    cat = make_catalogue(600, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )
    with (bundle.path / "shard-01" / "index.faiss").open("r+b") as index_file:
        index_file.truncate(100)
    config = _ports_config(tmp_path)
    log = tmp_path / "data" / "logs" / "shard-01.log"
    log.parent.mkdir(parents=True)
    log.write_text("a line of an earlier run\n")
    done = run("up", "--config", str(config), "--bundle", str(bundle.path), timeout=120)
    _fails_clearly(  # before: a RuntimeError traceback
        done,
        "annfleet up: shard-01 exited with code 2 before it was ready",
        "checksum mismatch for shard-01/index.faiss",
    )
    assert "earlier run" not in done.stderr  # only what this run's process wrote


def test_serve_shard_on_a_port_in_use_exits_with_the_port(tmp_path: Path) -> None:
    """Another gRPC server holds the port (gRPC's default SO_REUSEPORT would have let a
    second server bind it and take half its connections), then an HTTP server holds the
    metrics port: each is refused by name, exit 2."""
    cat = make_catalogue(300, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=1, index_type="flat", progress=False
    )
    other = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    base = ["serve-shard", "--bundle", str(bundle.path), "--shard", "0", "--admin-port", "-1"]
    try:
        done = run(*base, "--port", str(port), "--metrics-port", "-1", timeout=60)
    finally:
        other.stop(0)
    _fails_clearly(done, f"cannot listen on 127.0.0.1:{port} (annfleet.v1.IndexShard)")
    with socket.create_server(("127.0.0.1", 0)) as held:
        busy = held.getsockname()[1]
        done = run(*base, "--port", "0", "--metrics-port", str(busy), timeout=60)
    _fails_clearly(done, f"cannot listen on 127.0.0.1:{busy} (metrics): Address already in use")


def test_up_refuses_a_data_dir_in_use_and_ports_in_use_and_changes_nothing(
    tmp_path: Path, reaped: None
) -> None:
    """Before: a second `up` on the same ports saw the first cluster's processes answer its
    health checks, printed "ready", crash-looped, and on the way out deleted the running
    cluster's cluster.json (and had rewritten its rollout.json)."""
    cat = make_catalogue(300, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=1, index_type="flat", progress=False
    )
    config = _ports_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    # a running cluster's record: its supervisor is alive (an "annfleet" process)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "annfleet", "up"]
    )
    recorded = json.dumps({"supervisor_pid": holder.pid, "children": [
        {"name": "router", "target": "127.0.0.1:50051", "pid": holder.pid}
    ]})  # fmt: skip
    (data / "cluster.json").write_text(recorded)
    try:
        done = run("up", "--config", str(config), "--bundle", str(bundle.path), timeout=60)
    finally:
        holder.kill()
        holder.wait()
    _fails_clearly(done, f"a cluster is already running from the data dir {data}")
    assert (data / "cluster.json").read_text() == recorded
    assert not (data / "rollout.json").exists()

    # its processes gone, the stale record does not stop a start: the busy port does
    router_port = yaml.safe_load(config.read_text())["router"]["port"]
    with socket.create_server(("127.0.0.1", router_port)):
        done = run("up", "--config", str(config), "--bundle", str(bundle.path), timeout=60)
    _fails_clearly(done, f"port(s) in use: 127.0.0.1:{router_port} (router port)")
    done = run("up", "--config", str(config), "--port", "70000", timeout=60)
    _fails_clearly(done, "--port 70000: router.port must be in [0, 65535]")  # was OverflowError
    assert (data / "cluster.json").read_text() == recorded
    assert not (data / "rollout.json").exists()


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "x"])
def test_rollout_promote_min_recall_outside_0_1_is_a_usage_error(value: str) -> None:
    # 0 is PromoteRequest's unset value (router.recall_floor would apply): refused, with the
    # way to promote regardless of recall named
    done = run("rollout", "--promote", "--min-recall", value, "--target", "127.0.0.1:1")
    _fails_clearly(
        done, f"argument --min-recall: '{value}': expected a recall in (0, 1]", "--force"
    )


def _up(config: Path, bundle: Path) -> subprocess.Popen[str]:
    """`annfleet up` started, its output (stdout and stderr) read line by line; with SIGINT
    ignored, as a shell starts a background job of a script (`annfleet up &`): `up` must
    still stop on it (before, the failure of the interrupted-up test in a backgrounded
    `make test`)."""
    return subprocess.Popen(
        [*ANNFLEET, "up", "--config", str(config), "--bundle", str(bundle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_up_interrupted_while_starting_stops_its_processes(
    tmp_path: Path, signum: signal.Signals, reaped: None
) -> None:
    """Before: Ctrl-C or SIGTERM while the shards were loading waited until the cluster was
    ready (a sample printed, then stopped, exit 0); while training, Ctrl-C printed a
    traceback and SIGTERM killed `up` outright."""
    cat = make_catalogue(300, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )
    up = _up(_ports_config(tmp_path), bundle.path)
    wait_for_line(up, "starting 2 shards", timeout=60)  # the children are being started
    up.send_signal(signum)
    rest = up.communicate(timeout=60)[0]
    assert up.returncode == 130, rest
    assert "annfleet up: interrupted" in rest and "Traceback" not in rest
    assert _processes_naming(str(bundle.path)) == []  # no shard or router left behind


def _gone_within(pids_of: str, seconds: float) -> list[int]:
    """The processes naming ``pids_of`` still there after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := _processes_naming(pids_of)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_up_killed_with_sigkill_leaves_no_server_behind(tmp_path: Path, reaped: None) -> None:
    """Before: `kill -9` of the supervisor left its shards and router up for good, holding
    the ports, and the next `up` refused to start."""
    cat = make_catalogue(300, 8, clusters=4, users=5)
    bundle = build_bundle(
        tmp_path / "b", cat.ids, cat.vectors, num_shards=2, index_type="flat", progress=False
    )
    config = _ports_config(tmp_path)
    up = _up(config, bundle.path)
    try:
        wait_for_line(up, "Ctrl-C stops the cluster", timeout=120)
        children = [p for p in _processes_naming(str(bundle.path)) if p != up.pid]
        assert len(children) == 3  # two shards and the router
        record = json.loads((tmp_path / "data" / "cluster.json").read_text())
    finally:
        up.kill()  # SIGKILL: the supervisor cannot stop them
        up.communicate(timeout=30)
    # each notices within 0.5 s and drains for grace_s (0.5 s)
    assert _gone_within(str(bundle.path), 15) == []
    for child in record["children"]:  # every port is free again
        with socket.create_server(("127.0.0.1", int(child["target"].rsplit(":", 1)[1]))):
            pass
    # and a second `up` on the same data dir and ports starts
    again = _up(config, bundle.path)
    try:
        wait_for_line(again, "Ctrl-C stops the cluster", timeout=120)
    finally:
        again.send_signal(signal.SIGTERM)
        rest = again.communicate(timeout=60)[0]
    assert again.returncode == 0, rest


def test_up_beside_processes_that_lost_their_supervisor_names_them(
    tmp_path: Path, reaped: None
) -> None:
    config = _ports_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "annfleet", "serve-router"]
    )
    record = {"supervisor_pid": gone.pid, "children": [
        {"name": "router", "target": "127.0.0.1:50051", "pid": orphan.pid}
    ]}  # fmt: skip
    (data / "cluster.json").write_text(json.dumps(record))
    try:
        done = run("up", "--config", str(config), timeout=60)
    finally:
        orphan.kill()
        orphan.wait()
    _fails_clearly(
        done,
        f"lost its supervisor (pid {gone.pid}), but its processes {orphan.pid} still run",
        f"kill {orphan.pid}",
    )


@pytest.mark.parametrize("record", ['{"bundle_id": "b", "chil', '{"bundle_id": "b"}', "[]"])
def test_status_on_a_damaged_cluster_record_names_the_file(tmp_path: Path, record: str) -> None:
    config = _ports_config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cluster.json").write_text(record)
    done = run("status", "--config", str(config))  # before: a JSONDecodeError/KeyError traceback
    _fails_clearly(
        done, f"{tmp_path / 'data' / 'cluster.json'}: not a cluster record from `annfleet up`"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shards", "0"], "num_shards must be in [1, 1682], got 0"),
        (["--shards", "2"], "exists; pass overwrite=True (--overwrite)"),
    ],
)
def test_train_refuses_bad_output_arguments_before_training(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" if "2" in flags else tmp_path / "new"
    done = run("train", "--out", str(out), "--no-eval", *flags)
    _fails_clearly(done, "annfleet train: ", message)
    assert "two-tower:" not in done.stderr  # before: minutes of training, then the error


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "x", "--epochs", "0"],  # was a traceback from the LR schedule
        ["train", "--out", "x", "--dim", "0"],  # was minutes of training a 0-wide model
        ["train", "--out", "x", "--members", "-1"],
        ["eval", "--threads", "0"],
        ["eval", "--blend", "--users", "0"],
    ],
)
def test_model_counts_below_one_are_usage_errors(args: list[str]) -> None:
    done = run(*args)
    _fails_clearly(done, "expected an integer >= 1")
    assert "loaded 100000 interactions" not in done.stderr  # refused before any data


def test_eval_served_by_a_router_that_is_not_there_says_so() -> None:
    done = run("eval", "--served", f"127.0.0.1:{free_port()}", "--users", "2", "--no-progress")
    _fails_clearly(done, "annfleet eval: UNAVAILABLE: failed to connect", code=1)


def test_build_bundle_on_a_file_that_is_not_npy_never_suggests_unpickling(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_text("item,vector\n1,0.5\n")  # a CSV with the wrong name
    done = run("build-bundle", "--vectors", str(tmp_path / "x.npy"), "--shards", "2",
               "--out", str(tmp_path / "b"))  # fmt: skip
    _fails_clearly(done, "cannot read --vectors", "not a .npy file of numbers", code=1)
    assert "allow_pickle" not in done.stderr  # numpy's advice; annfleet never unpickles


def test_query_output_lines_the_titles_up_whatever_the_sources(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from annfleet.cli import _print_candidates

    names = [("ann",), ("ann", "co_engagement", "content", "exploration", "trending"), ()]
    result = SimpleNamespace(
        coverage=SimpleNamespace(shards_answered=4, shards_asked=4, degraded=False),
        bundle_id="b",
        source_counts={"ann": 2},
        dropped_sources={},
        ids=[7, 8, 9],
        scores=[0.3, 0.2, 0.1],
        sources_per_candidate=names,
        titles=("Alpha", "Beta", "Gamma"),
    )
    _print_candidates(result)
    lines = capsys.readouterr().out.splitlines()[2:]
    assert [line.index(t) for line, t in zip(lines, result.titles, strict=True)] == [
        lines[0].index("Alpha")
    ] * 3
    assert "ann+co_engagement+content+exploration+trending  Beta" in lines[1]
