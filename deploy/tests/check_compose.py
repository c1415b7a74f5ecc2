#!/usr/bin/env python3
"""Validates the compose file against the Compose Specification's JSON
schema (no Docker engine needed) and checks it provisions the dashboard.

Usage: check_compose.py COMPOSE_SPEC_SCHEMA.json docker-compose.yml
"""
import json
import sys

import jsonschema
import yaml


def main():
    schema = json.load(open(sys.argv[1], encoding="utf-8"))
    compose = yaml.safe_load(open(sys.argv[2], encoding="utf-8"))
    errors = list(jsonschema.Draft201909Validator(schema).iter_errors(compose))
    for e in errors:
        print(f"check_compose: {'/'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
    if errors:
        sys.exit(1)
    services = compose["services"]
    for needed in ("natter", "postgres", "nats", "redis", "otel-collector", "grafana"):
        if needed not in services:
            print(f"check_compose: no {needed} service", file=sys.stderr)
            sys.exit(1)
    volumes = " ".join(services["grafana"].get("volumes", []))
    if "dashboards" not in volumes:
        print("check_compose: grafana does not provision the dashboards", file=sys.stderr)
        sys.exit(1)
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in services["natter"].get("environment", {}):
        print("check_compose: natter does not export telemetry", file=sys.stderr)
        sys.exit(1)
    print(f"check_compose: {sys.argv[2]} is a valid compose file")


if __name__ == "__main__":
    main()
