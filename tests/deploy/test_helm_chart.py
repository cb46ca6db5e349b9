"""The Helm chart (deploy/helm/annfleet), rendered with `helm template` and checked offline:
every object against the Kubernetes schemas, ports that agree, a ConfigMap that annfleet's
own config loader accepts, and the two kinds of rollout."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import BIG_VALUES, CHART, Render, by_kind, one, run_helm, shard_sets

from annfleet.cli import build_parser
from annfleet.cluster import free_port
from annfleet.config import ClusterConfig, load_config, parse_shard_map

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the dev extra"
)

# (values files, shards, replicas): the defaults and 8 shards x 3 replicas with mutual TLS.
SHAPES = {"default": ((), 4, 2), "8x3-tls": ((BIG_VALUES,), 8, 3)}
CRD_GROUPS = ("monitoring.coreos.com/",)  # ServiceMonitor, PrometheusRule: not core schemas


def rendered(render: Render, shape: str, **kw: Any) -> list[dict[str, Any]]:
    return render(*SHAPES[shape][0], **kw)


def values_of(shape: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for extra in SHAPES[shape][0]:
        values = deep_merge(values, yaml.safe_load(extra.read_text()))
    return values


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(obj)["containers"]
    return c


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {args}"
    return values[0]


def config_file(objects: list[dict[str, Any]], tmp_path: Path) -> Path:
    (cm,) = by_kind(objects, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return path


def pending_config_keys(helm: str) -> dict[str, list[str]]:
    """The keys the chart leaves out of the ConfigMap until core/config.py knows them."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    block = re.search(r'define "annfleet.pendingConfigKeys" -}}\n(.*?)\n\{\{- end', text, re.S)
    assert block, "annfleet.pendingConfigKeys not found in _helpers.tpl"
    return yaml.safe_load(block.group(1))


# ------------------------------------------------------------------ lint and schemas
@pytest.mark.parametrize("shape", SHAPES)
def test_helm_lint(helm: str, shape: str) -> None:
    args = ["lint", str(CHART), "--strict"]
    for v in SHAPES[shape][0]:
        args += ["-f", str(v)]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("shape", SHAPES)
def test_every_object_validates_offline_against_kubernetes_schemas(
    render: Render, shape: str
) -> None:
    objects = rendered(render, shape)
    versions = ["1.30.0", kubernetes_validate.latest_version()]
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            assert obj["kind"] in ("ServiceMonitor", "PrometheusRule"), obj["kind"]
            continue
        for version in versions:
            # strict: an unknown field anywhere is an error (a typo would be silently dropped
            # by the API server otherwise)
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


def test_values_schema_rejects_bad_values(helm: str) -> None:
    for bad, message in (
        ("shards.antiAffinity=sometimes", "antiAffinity"),
        ("config.shards.count=0", "count"),
        ("config.router.port=70000", "port"),
        ("shards.replicaz=3", "replicaz"),
    ):
        done = run_helm(helm, "template", "rel", str(CHART), "--set", bad)
        assert done.returncode != 0, bad
        assert message in done.stderr, done.stderr


def test_tls_without_a_secret_is_refused(helm: str) -> None:
    done = run_helm(helm, "template", "rel", str(CHART), "--set", "tls.enabled=true")
    assert done.returncode != 0
    assert "tls.existingSecret is required" in done.stderr


# ------------------------------------------------------------------ topology
@pytest.mark.parametrize("shape", SHAPES)
def test_one_statefulset_headless_service_and_pdb_per_shard(render: Render, shape: str) -> None:
    objects = rendered(render, shape)
    _, shards, replicas = SHAPES[shape]
    sets = shard_sets(objects)
    assert [s["metadata"]["name"] for s in sets] == [
        f"rel-annfleet-shard-{i}" for i in range(shards)
    ]
    for i, sts in enumerate(sets):
        name = sts["metadata"]["name"]
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert labels["annfleet.io/shard"] == str(i)
        assert sts["spec"]["replicas"] == replicas
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
        assert sts["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
        # headless Service of this shard, selecting exactly its pods
        svc = one(objects, "Service", sts["spec"]["serviceName"])
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        # replicas of one shard never share a node (hard) or prefer not to (soft)
        anti = pod_spec(sts)["affinity"]["podAntiAffinity"]
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
            t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]
        ]
        (term,) = terms
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"].items() <= labels.items()
        assert term["labelSelector"]["matchLabels"]["annfleet.io/shard"] == str(i)
        pdb = one(objects, "PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    hard = values_of(shape)["shards"]["antiAffinity"] == "hard"
    assert ("requiredDuringSchedulingIgnoredDuringExecution" in str(pod_spec(sets[0]))) == hard


@pytest.mark.parametrize("shape", SHAPES)
def test_router_deployment_service_hpa_and_pdb(render: Render, shape: str) -> None:
    objects = rendered(render, shape)
    deploy = one(objects, "Deployment", "rel-annfleet-router")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    svc = one(objects, "Service", "rel-annfleet-router")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deploy["spec"]  # the HPA owns the count
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(objects, "HorizontalPodAutoscaler", "rel-annfleet-router")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rel-annfleet-router",
    }
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    qps = values_of(shape)["router"]["autoscaling"]["qps"]
    assert ("Pods" in kinds) == qps["enabled"]
    if qps["enabled"]:
        assert kinds["Pods"]["pods"]["metric"]["name"] == "annfleet_router_qps"
    pdb = one(objects, "PodDisruptionBudget", "rel-annfleet-router")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]


# ------------------------------------------------------------------ ports and config
@pytest.mark.parametrize("shape", SHAPES)
def test_probe_container_service_and_config_ports_agree(
    render: Render, shape: str, tmp_path: Path
) -> None:
    objects = rendered(render, shape)
    config = load_config(config_file(objects, tmp_path))
    values_config = values_of(shape)["config"]
    # keys still pending in core/config.py (admin ports) come from the chart's values
    shard_admin = getattr(
        config.shards, "admin_base_port", values_config["shards"]["admin_base_port"]
    )
    router_admin = getattr(config.router, "admin_port", values_config["router"]["admin_port"])
    expected = {
        "shard": {
            "grpc": config.shards.base_port,
            "metrics": config.shards.metrics_base_port,
            "admin": shard_admin,
        },
        "router": {
            "grpc": config.router.port,
            "metrics": config.router.metrics_port,
            "admin": router_admin,
        },
    }
    tls = values_of(shape)["tls"]["enabled"]
    workloads = [("shard", s) for s in shard_sets(objects)] + [
        ("router", one(objects, "Deployment", "rel-annfleet-router"))
    ]
    for role, workload in workloads:
        c = container(workload)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == expected[role], workload["metadata"]["name"]
        assert int(flag(c["args"], "--port")) == ports["grpc"]
        assert int(flag(c["args"], "--metrics-port")) == ports["metrics"]
        assert flag(c["args"], "--host") == "0.0.0.0"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert int(env["ANNFLEET_PROBE_PORT"]) == ports["grpc"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c[probe]
            if tls:  # the kubelet's gRPC probe speaks plaintext only
                cmd = p["exec"]["command"]
                assert cmd[:2] == ["annfleet", "probe"]
                assert int(cmd[cmd.index("--port") + 1]) == ports["grpc"]
            else:
                assert p["grpc"] == {"port": ports["grpc"], "service": ""}
        # the Service in front of the pods forwards each port by name to the same number
        svc_name = (
            workload["spec"]["serviceName"] if role == "shard" else workload["metadata"]["name"]
        )
        svc = one(objects, "Service", svc_name)
        for sp in svc["spec"]["ports"]:
            assert sp["targetPort"] in ports
            assert sp["port"] == ports[sp["targetPort"]] == ports[sp["name"]]
    # the router is given, per shard in order, each replica pod of the shard's StatefulSet
    # under its headless Service, on the shard gRPC port (serve-router's "a|b,c|d" syntax)
    router_args = container(one(objects, "Deployment", "rel-annfleet-router"))["args"]
    groups = parse_shard_map(flag(router_args, "--shards"))
    sets = shard_sets(objects)
    assert len(groups) == config.shards.count == len(sets) == SHAPES[shape][1]
    for i, (group, sts) in enumerate(zip(groups, sets, strict=True)):
        assert len(group) == sts["spec"]["replicas"] == config.shards.replicas == SHAPES[shape][2]
        for r, target in enumerate(group):
            m = re.fullmatch(
                r"dns:///([a-z0-9-]+)-(\d+)\.([a-z0-9-]+)\.ns\.svc\.cluster\.local:(\d+)", target
            )
            assert m, target
            assert m.group(1) == sts["metadata"]["name"] == f"rel-annfleet-shard-{i}"
            assert int(m.group(2)) == r
            assert m.group(3) == sts["spec"]["serviceName"]
            svc = one(objects, "Service", m.group(3))
            assert svc["spec"]["clusterIP"] == "None"
            assert svc["spec"]["publishNotReadyAddresses"] is True
            assert int(m.group(4)) == config.shards.base_port
            grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
            assert grpc_port["port"] == int(m.group(4))
    # --shard-admins: the same pods, in the same order, on the admin port
    admins = flag(router_args, "--shard-admins").split(",")
    assert admins == [
        t.removeprefix("dns:///").rsplit(":", 1)[0] + f":{shard_admin}"
        for group in groups
        for t in group
    ]
    # monitoring scrapes a port that every selected Service has
    for sm in by_kind(objects, "ServiceMonitor"):
        selector = sm["spec"]["selector"]["matchLabels"]
        selected = [
            s
            for s in by_kind(objects, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == config.shards.count + 1
        for s in selected:
            assert {p["name"] for p in s["spec"]["ports"]} >= {
                e["port"] for e in sm["spec"]["endpoints"]
            }
    # the rollout Job talks to the router Service's admin port
    for job in by_kind(objects, "Job"):
        env = {e["name"]: e.get("value") for e in container(job).get("env", [])}
        if "ROUTER_ADMIN" in env:
            assert env["ROUTER_ADMIN"] == f"rel-annfleet-router.ns.svc.cluster.local:{router_admin}"


@pytest.mark.parametrize("shape", SHAPES)
def test_configmap_is_an_annfleet_config(render: Render, shape: str, tmp_path: Path) -> None:
    """load_config refuses unknown keys and bad types: the chart cannot drift from the code."""
    objects = rendered(render, shape)
    config = load_config(config_file(objects, tmp_path))
    values_config = values_of(shape)["config"]
    assert config.shards.count == len(shard_sets(objects))
    assert config.shards.host == config.router.host == "0.0.0.0"
    assert config.bundle == "/bundles/current"
    assert config.data_dir == "/var/lib/annfleet"
    for section in ("shards", "router"):
        for key, value in values_config[section].items():
            if hasattr(getattr(config, section), key):
                assert getattr(getattr(config, section), key) == value, f"{section}.{key}"
    # every process gets the file through the same mount
    for workload in shard_sets(objects) + by_kind(objects, "Deployment"):
        c = container(workload)
        assert flag(c["args"], "--config") == "/etc/annfleet/config.yaml"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
        assert (mount["mountPath"], mount["subPath"]) == (
            "/etc/annfleet/config.yaml",
            "config.yaml",
        )


def test_pending_config_keys_are_still_unknown_to_the_code(helm: str) -> None:
    """When a key the chart holds back lands in core/config.py, the chart must render it."""
    pending = pending_config_keys(helm)
    sections = {
        "shards": ClusterConfig().shards,
        "router": ClusterConfig().router,
        "top": ClusterConfig(),
    }
    landed = [
        f"{section}.{key}" if section != "top" else key
        for section, keys in pending.items()
        for key in keys
        if key in {f.name for f in dataclasses.fields(sections[section])}  # type: ignore[arg-type]
    ]
    assert not landed, (
        f"{landed} now exist in core/config.py: drop them from annfleet.pendingConfigKeys "
        "in deploy/helm/annfleet/templates/_helpers.tpl so the ConfigMap carries them"
    )


# ------------------------------------------------------------------ shared state (Redis)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_router_keeps_its_state_in_the_charts_redis(
    render: Render, shape: str, tmp_path: Path
) -> None:
    objects = rendered(render, shape)
    config = load_config(config_file(objects, tmp_path))
    svc = one(objects, "Service", "rel-annfleet-redis")
    sts = one(objects, "StatefulSet", "rel-annfleet-redis")
    (port,) = svc["spec"]["ports"]
    assert config.state.backend == "redis" and not config.state.start_redis
    assert config.state.url == f"redis://rel-annfleet-redis.ns.svc.cluster.local:{port['port']}/0"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["replicas"] == 1
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (mount,) = container(sts)["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert flag_pairs(container(sts)["args"])["--dir"] == mount["mountPath"]
    # only router pods may connect
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    router = one(objects, "Deployment", "rel-annfleet-router")["spec"]["template"]["metadata"]
    assert source["podSelector"]["matchLabels"].items() <= router["labels"].items()


def flag_pairs(args: list[str]) -> dict[str, str]:
    """redis-server's ``--name value`` arguments as a dict."""
    assert len(args) % 2 == 0, args
    return dict(zip(args[::2], args[1::2], strict=True))


@pytest.mark.parametrize(
    ("values", "backend", "url"),
    [
        ({"redis.enabled": "false"}, "memory", None),
        (
            {"redis.enabled": "false", "redis.url": "redis://:pw@state.example:6379/2"},
            "redis",
            "redis://:pw@state.example:6379/2",
        ),
    ],
)
def test_without_the_charts_redis_state_is_the_given_url_or_memory(
    render: Render, values: dict[str, str], backend: str, url: str | None, tmp_path: Path
) -> None:
    objects = render(set=values)
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    config = load_config(config_file(objects, tmp_path))
    assert config.state.backend == backend
    assert url is None or config.state.url == url


def test_the_redis_pods_flags_are_ones_redis_server_accepts(render: Render, tmp_path: Path) -> None:
    """Run the installed redis-server with the pod's flags (bound to loopback, on a free port,
    in a tmp dir): it starts, answers, and writes its append-only file."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed; `make test` installs it via tests/install-deps.sh")
    redis = pytest.importorskip("redis", reason="redis is a dependency of annfleet")
    sts = one(render(), "StatefulSet", "rel-annfleet-redis")
    assert container(sts)["command"] == ["redis-server"]
    flags = flag_pairs(container(sts)["args"])
    port = free_port()
    flags.update({"--port": str(port), "--bind": "127.0.0.1", "--dir": str(tmp_path)})
    server = subprocess.Popen(
        [binary, *[x for pair in flags.items() for x in pair]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        client.set("annfleet:probe", "1")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert server.returncode == 0
    assert list(tmp_path.glob("appendonlydir/*.aof")), sorted(p.name for p in tmp_path.rglob("*"))


# ------------------------------------------------------------------ lifecycle
@pytest.mark.parametrize("shape", SHAPES)
def test_termination_grace_covers_prestop_and_drain(render: Render, shape: str) -> None:
    objects = rendered(render, shape)
    values = values_of(shape)
    for workload, section in [(s, "shards") for s in shard_sets(objects)] + [
        (one(objects, "Deployment", "rel-annfleet-router"), "router")
    ]:
        spec, c = pod_spec(workload), container(workload)
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert sleep == values["preStopSleepSeconds"] > 0
        drain = values["config"][section]["grace_s"]
        assert spec["terminationGracePeriodSeconds"] > sleep + drain
        startup = c["startupProbe"]
        budget = values[section]["startupSeconds"]
        assert startup["failureThreshold"] * startup["periodSeconds"] >= budget
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        bundles = next(m for m in c["volumeMounts"] if m["name"] == "bundles")
        assert bundles["readOnly"] is True


def test_bundle_rollout_is_a_job_and_restarts_no_pod(render: Render) -> None:
    token = {"admin.token": "fixed"}  # else each render draws a random one
    before = render(set=token)
    after = render(set={**token, "rollout.bundle": "v2", "rollout.extraArgs[0]": "--canary"})
    assert not by_kind(before, "Job")
    jobs = by_kind(after, "Job")
    assert [j["metadata"]["name"] for j in jobs] == ["rel-annfleet-rollout"]
    # every other object (pod templates included) is byte-for-byte the same
    assert [o for o in after if o["kind"] != "Job"] == before
    job = jobs[0]
    assert "post-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    c = container(job)
    script = c["args"][0]
    assert "annfleet rollout" in script and '"$@"' in script
    assert c["args"][2:] == ["--canary"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["BUNDLE"] == "v2"
    assert job["spec"]["backoffLimit"] == 0  # a failed rollout is not retried blindly
    bundles = next(m for m in c["volumeMounts"] if m["name"] == "bundles")
    assert bundles["readOnly"] is False  # it moves the `current` link


def test_code_rollout_is_staged_by_partition_shard_by_shard(render: Render) -> None:
    objects = rendered(render, "8x3-tls")
    partitions = {
        s["metadata"]["name"]: s["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        for s in shard_sets(objects)
    }
    # updatePartition 3 (= replicas) stages the new template everywhere; shard 5 rolls
    assert partitions.pop("rel-annfleet-shard-5") == 0
    assert set(partitions.values()) == {3}


def test_build_jobs_one_indexed_pod_per_shard_then_finalize(render: Render) -> None:
    objects = rendered(render, "8x3-tls")
    shards = one(objects, "Job", "rel-annfleet-build-v2-shards")
    finalize = one(objects, "Job", "rel-annfleet-build-v2-finalize")
    assert shards["spec"]["completionMode"] == "Indexed"
    assert shards["spec"]["completions"] == 8
    args = container(shards)["args"]
    assert args[0] == "build-bundle"
    assert "--only-shard=$(JOB_COMPLETION_INDEX)" in args
    env = {e["name"]: e for e in container(shards)["env"]}
    assert (
        env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    fargs = container(finalize)["args"]
    assert "--finalize" in fargs
    # both steps see the same inputs, so they agree on the partitioning and the bundle
    common = [a for a in args if not a.startswith("--only-shard")]
    assert fargs[: len(common)] == common
    assert flag(args, "--shards") == "8"
    # the split build of `annfleet build-bundle` (tests/server/test_split_build.py)
    assert {"--only-shard", "--finalize", "--wait-s"} <= build_bundle_flags()


def build_bundle_flags() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["build-bundle"]
    return {s for a in parser._actions for s in a.option_strings}


def test_tls_probe_command_is_one_the_cli_accepts(render: Render) -> None:
    c = container(shard_sets(rendered(render, "8x3-tls"))[0])
    cmd = c["readinessProbe"]["exec"]["command"]
    assert cmd[0] == "annfleet"
    args = build_parser().parse_args(cmd[1:])
    assert (args.ca, args.cert, args.key) == (
        "/etc/annfleet/tls/ca.crt",
        "/etc/annfleet/tls/tls.crt",
        "/etc/annfleet/tls/tls.key",
    )
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["tls"] == "/etc/annfleet/tls"
    volumes = {
        v["name"]: v for v in pod_spec(shard_sets(rendered(render, "8x3-tls"))[0])["volumes"]
    }
    assert volumes["tls"]["secret"]["secretName"] == "annfleet-tls"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_container_command_is_one_the_cli_accepts(render: Render, shape: str) -> None:
    """The chart passes only flags `annfleet` knows (argparse exits on an unknown one)."""
    objects = rendered(render, shape)
    parser = build_parser()
    checked = 0
    for obj in shard_sets(objects) + by_kind(objects, "Deployment") + by_kind(objects, "Job"):
        c = container(obj)
        if c.get("command"):  # the rollout Job's shell script (annfleet rollout: issue 9)
            continue
        args = [re.sub(r"\$\((\w+)\)", "0", a) for a in c["args"]]  # env substitutions
        parsed = parser.parse_args(args)
        assert parsed.func.__name__.replace("_", "-").endswith(args[0])
        checked += 1
    assert checked >= SHAPES[shape][1] + 1 + (2 if values_of(shape)["build"]["enabled"] else 0)
