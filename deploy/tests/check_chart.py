#!/usr/bin/env python3
"""Checks that a rendered natter chart holds what the README promises.

Usage: check_chart.py RENDERED.yaml [--ingress]
Four Deployments started as `natter-server <target>` with liveness /healthz
and readiness /readyz on their own port, hardened security contexts, the
gateway id from the pod name, a preStop drain shorter than the grace period;
Services for auth and gateway; HPAs for gateway, message and push;
a PDB per Deployment; the migration hook Job after its Secret; a
ServiceAccount; the JWT secret, the bus key and the database password
(PGPASSWORD, never in the URL) from a Secret; with --ingress (the
production example) also a NATS user per service and a NetworkPolicy per
Deployment.
"""
import sys
import yaml

PORTS = {"auth": 8080, "gateway": 8090, "message": 8091, "push": 8092}


def fail(message):
    print(f"check_chart: {message}", file=sys.stderr)
    sys.exit(1)


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

    services = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in by_kind.get("Service", [])}
    if services != {"auth", "gateway"}:
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
    print(f"check_chart: {path}: {len(docs)} objects as expected")


if __name__ == "__main__":
    main()
