"""The operator's kit (deploy/): promtool checks the live exposition, the rules and their unit tests; every query
of the Grafana dashboard is valid PromQL over metrics a live server exposes; the compose file mounts what exists."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "semgen.json"
sys.path.insert(0, str(ROOT / "tests" / "serving"))

from serving.options import ServeOptions, add_arguments  # noqa: E402


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    assert shutil.which("promtool"), "promtool is missing: `make test-setup` installs it (Debian package prometheus)"
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exposition() -> str:
    """/metrics of a live server (the real gRPC server, a fake pipeline) after a good and a bad call."""
    from servingkit import FakePipeline, generate, in_process_server, png_bytes

    from serving.core.protos import pyramid_pb2 as pb

    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            await generate(s.address, pb.GenerateRequest(image=png_bytes(), level="fc7", num_samples=1, seed=0))
            await generate(s.address, pb.GenerateRequest(image=png_bytes(), level="conv9", num_samples=1))
            http = s.metrics.serve_http("127.0.0.1", 0)
            try:
                url = f"http://127.0.0.1:{http.server_port}/metrics"
                return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
            finally:
                http.shutdown()

    return asyncio.run(scenario())


def exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            names |= {name, *(name + s for s in ("_bucket", "_sum", "_count", "_total", "_created"))}
    return names


KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, strings and grouping labels removed;
    function and aggregation names are the words followed by a parenthesis)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"([A-Za-z_:][\w:]*)\s*(\(?)", expr)
    return {w for w, call in words if not call and w.lower() not in KEYWORDS}


def rule_exprs() -> tuple[list[str], set[str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    return [r["expr"] for r in rules], {r["record"] for r in rules if "record" in r}


def test_the_live_exposition_passes_promtool(exposition):
    checked = promtool("check", "metrics", stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # what operators look for: process metrics, build and model info, the request series
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "semgen_build_info",
                 "semgen_requests_total", "semgen_request_latency_seconds_bucket", "semgen_engine_queue_limit"):
        assert name in exposed_names(exposition)


def test_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS: 12 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml"))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_rules_read_only_metrics_that_exist(exposition):
    exprs, recorded = rule_exprs()
    known = exposed_names(exposition) | recorded | {"up"}
    for expr in exprs:
        assert metric_names(expr) <= known, (expr, metric_names(expr) - known)


def test_every_dashboard_query_is_valid_promql_over_live_metrics(exposition, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20 and dashboard["uid"] == "semgen"
    # the PromQL parser is Prometheus's own: the queries as recording rules, checked by promtool
    as_rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                           for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(as_rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    known = exposed_names(exposition) | {"up"}
    read = set().union(*(metric_names(e) for e in exprs))
    assert read <= known, read - known
    # what the issue asks the dashboard to show
    for name in ("semgen_requests_total", "semgen_request_latency_seconds_bucket", "semgen_engine_queue_seconds_bucket",
                 "semgen_engine_compute_seconds_bucket", "semgen_batch_size_sum", "semgen_engine_queue_depth",
                 "semgen_jobs_running", "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in read


def test_metric_names_sees_through_promql():
    expr = 'histogram_quantile(0.99, sum by (method, le) (rate(semgen_x_bucket{code=~"A|B"}[5m]))) / on() up'
    assert metric_names(expr) == {"semgen_x_bucket", "up"}


def test_the_compose_file_mounts_files_of_this_repo_and_scrapes_the_metrics_port(tmp_path):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"semgen", "prometheus", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            assert (DEPLOY / volume.split(":")[0]).exists(), volume
    command = compose["services"]["semgen"]["command"]
    metrics_port = command[command.index("--metrics-port") + 1]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [f"semgen:{metrics_port}"]
    # promtool checks the config with the rule file where the compose file mounts it from
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert provisioned["datasources"][0]["uid"] == json.loads(DASHBOARD.read_text())["panels"][0]["datasource"]["uid"]


def test_the_kubernetes_probes_ports_and_flags_agree(monkeypatch):
    deployment, service = yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    command = container["command"]
    flag = lambda name: command[command.index(name) + 1]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": int(flag("--port")), "http": int(flag("--http-port")), "metrics": int(flag("--metrics-port"))}
    # the kubelet probes the pod's IP: the HTTP port must not be on loopback, and the health paths need no token
    assert flag("--http-host") == "0.0.0.0" and container["env"][0]["name"] == "SEMGEN_TOKEN"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == flag("--metrics-port")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    # the flags are `semgen serve`'s: they parse, and the exposure check passes with the token
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = ServeOptions.from_args(parser.parse_args(command[2:]))
    monkeypatch.setenv("SEMGEN_TOKEN", "a-token")
    opts.check()
    monkeypatch.delenv("SEMGEN_TOKEN")
    with pytest.raises(ValueError, match="--host 0.0.0.0 is reachable from other machines"):
        opts.check()
