#!/usr/bin/env python3
"""Checks that a rendered natter chart holds what the README promises.

Usage: check_chart.py RENDERED.yaml [--ingress] [--extras]
Four Deployments started as `natter-server <target>` with liveness /healthz
and readiness /readyz on their own port, hardened security contexts, the
gateway id from the pod name, a preStop drain shorter than the grace period,
every NATTER_* setting of the README's configuration table in the
environment; a Service per Deployment; HPAs for gateway, message and push;
a PDB per Deployment; the migration hook Job after its Secret; a
ServiceAccount; the JWT secret, the bus key and the database password
(PGPASSWORD, never in the URL) from a Secret; with --ingress (the
production example) also a NATS user per service and a NetworkPolicy per
Deployment. With --extras (rendered with deploy/check's extra values):
the ServiceMonitor, extraEnv, envFrom, pod annotations and a service's own
pool.
"""
import re
import sys
from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[2] / "README.md"

PORTS = {"auth": 8080, "gateway": 8090, "message": 8091, "push": 8092}


def fail(message):
    print(f"check_chart: {message}", file=sys.stderr)
    sys.exit(1)


# Set only when a value asks for them (nats.users, tls.caSecret,
# postgres.readHost).
OPTIONAL_SETTINGS = {
    "NATTER_NATS_USER",
    "NATTER_NATS_PASSWORD",
    "NATTER_NATS_CA",
    "NATTER_REDIS_CA",
    "NATTER_DATABASE_READ_URL",
}
# The chart authenticates to NATS with a user and password per service
# (nats.users); a creds file instead is for installs that mount one
# themselves (extraEnv and a volume).
NOT_IN_CHART = {"NATTER_NATS_CREDS"}


def main():
    path = sys.argv[1]
    want_ingress = "--ingress" in sys.argv[2:]
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in by_kind.get("Deployment", [])}
    if sorted(deployments) != sorted(PORTS):
        fail(f"expected Deployments {sorted(PORTS)}, got {sorted(deployments)}")
    images = set()
    for component, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        images.add(container["image"])
        if container["args"] != [component]:
            fail(f"{component}: args {container['args']}")
        port = container["ports"][0]["containerPort"]
        if port != PORTS[component]:
            fail(f"{component}: port {port}")
        if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
            fail(f"{component}: liveness probe")
        if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
            fail(f"{component}: readiness probe")
        sc = container["securityContext"]
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{component}: securityContext {sc}")
        if pod["securityContext"].get("runAsNonRoot") is not True:
            fail(f"{component}: pod must run as non-root")
        if "resources" not in container or "requests" not in container["resources"]:
            fail(f"{component}: resources")
        env = {e["name"]: e for e in container["env"]}
        for name in (
            "NATTER_DATABASE_URL",
            "NATTER_NATS_URL",
            "NATTER_REDIS_URL",
            "NATTER_JWT_SECRET",
            "NATTER_STREAM_REPLICAS",
            "NATTER_EVENTS_MAX_AGE",
            "NATTER_EVENTS_MAX_BYTES",
        ):
            if name not in env:
                fail(f"{component}: env {name} missing")
        for secret in ("NATTER_JWT_SECRET", "NATTER_BUS_KEY", "PGPASSWORD"):
            if "secretKeyRef" not in env.get(secret, {}).get("valueFrom", {}):
                fail(f"{component}: {secret} must come from a Secret")
        userinfo = env["NATTER_DATABASE_URL"]["value"].split("://", 1)[1].split("@", 1)[0]
        if ":" in userinfo:
            fail(f"{component}: the database password must not be in NATTER_DATABASE_URL")
        if want_ingress and env.get("NATTER_NATS_USER", {}).get("value") != component:
            fail(f"{component}: NATTER_NATS_USER must name the service")
        if component == "gateway":
            gw = env.get("NATTER_GATEWAY_ID", {}).get("valueFrom", {}).get("fieldRef", {})
            if gw.get("fieldPath") != "metadata.name":
                fail("gateway: gateway id must come from the pod name")
            sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            if pod["terminationGracePeriodSeconds"] <= sleep + 10:
                fail("gateway: grace period must outlast preStop + drain")
    if len(images) != 1:
        fail(f"one image expected, got {images}")

    settings = configuration_table()
    env_names = {
        e["name"]
        for d in deployments.values()
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    if not settings:
        fail("no NATTER_* settings found in README's configuration table")
    # Settings that appear only when a value turns them on (NATS users, a
    # CA) are looked for in the render with every option on (--extras).
    optional = OPTIONAL_SETTINGS if "--extras" not in sys.argv[2:] else set()
    missing = sorted(settings - env_names - optional - NOT_IN_CHART)
    if missing:
        fail(f"settings the chart does not set: {missing}")

    services = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in by_kind.get("Service", [])}
    if services != set(PORTS):
        fail(f"Services {services}")
    hpas = {h["spec"]["scaleTargetRef"]["name"].rsplit("-", 1)[-1] for h in by_kind.get("HorizontalPodAutoscaler", [])}
    if not {"gateway", "message", "push"} <= hpas:
        fail(f"HPAs {hpas}")
    pdbs = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in by_kind.get("PodDisruptionBudget", [])}
    if pdbs != set(PORTS):
        fail(f"PDBs {pdbs}")
    if not by_kind.get("ServiceAccount"):
        fail("no ServiceAccount")

    (job,) = by_kind.get("Job", [None])
    if job is None:
        fail("no migration Job")
    annotations = job["metadata"]["annotations"]
    if "pre-install" not in annotations.get("helm.sh/hook", "") or "pre-upgrade" not in annotations["helm.sh/hook"]:
        fail("migration Job must be a pre-install/pre-upgrade hook")
    if job["spec"]["template"]["spec"]["containers"][0]["args"] != ["migrate"]:
        fail("migration Job must run `natter-server migrate`")
    secrets = by_kind.get("Secret", [])
    for s in secrets:
        if int(s["metadata"]["annotations"]["helm.sh/hook-weight"]) >= int(annotations["helm.sh/hook-weight"]):
            fail("the Secret must be created before the migration hook")

    policies = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in by_kind.get("NetworkPolicy", [])}
    if want_ingress and not set(PORTS) <= policies:
        fail(f"NetworkPolicies {policies}")

    ingresses = by_kind.get("Ingress", [])
    if want_ingress:
        if len(ingresses) != 1:
            fail("expected one Ingress")
        paths = {p["path"] for r in ingresses[0]["spec"]["rules"] for p in r["http"]["paths"]}
        if paths != {"/api/", "/ws/"}:
            fail(f"Ingress paths {paths}")
    if "--extras" in sys.argv[2:]:
        check_extras(by_kind, deployments)
    print(f"check_chart: {path}: {len(docs)} objects as expected")


def configuration_table():
    """The NATTER_* variables (and RUST_LOG) of README's configuration
    table, the server's; the client's come after it and are not the
    chart's."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    return set(re.findall(r"`(NATTER_[A-Z0-9_]+|RUST_LOG)`", table))


def check_extras(by_kind, deployments):
    (monitor,) = by_kind.get("ServiceMonitor", [None])
    if monitor is None:
        fail("no ServiceMonitor although metrics.serviceMonitor.enabled")
    if monitor["metadata"]["labels"].get("release") != "prometheus":
        fail("ServiceMonitor lacks metrics.serviceMonitor.labels")
    (endpoint,) = monitor["spec"]["endpoints"]
    if endpoint["path"] != "/metrics" or endpoint["port"] != "http":
        fail(f"ServiceMonitor endpoint {endpoint}")
    for component, d in deployments.items():
        pod = d["spec"]["template"]
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if env.get("EXTRA") != "yes":
            fail(f"{component}: extraEnv missing")
        if container.get("envFrom") != [{"configMapRef": {"name": "natter-extra"}}]:
            fail(f"{component}: envFrom {container.get('envFrom')}")
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("team") != "chat":
            fail(f"{component}: podAnnotations {annotations}")
        if (annotations.get("tier") == "edge") != (component == "gateway"):
            fail(f"{component}: a service's own podAnnotations {annotations}")
        pool = {"auth": "16", "message": "4", "push": "16"}.get(component)
        if env.get("NATTER_DATABASE_POOL") != pool:
            fail(f"{component}: NATTER_DATABASE_POOL {env.get('NATTER_DATABASE_POOL')}, want {pool}")


if __name__ == "__main__":
    main()
