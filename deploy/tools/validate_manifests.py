"""Offline checks of rendered kustomize output (a multi-document YAML stream).

Usage: python validate_manifests.py RENDERED.yaml [--kubernetes-version 1.30.0 ...]

1. Every built-in object validates against the Kubernetes OpenAPI schemas shipped by PyPI's
   kubernetes-validate, in strict mode (unknown fields are errors), for each version given.
2. Custom resources (cert-manager, Prometheus Operator) have no schema there: they get a
   structural check (apiVersion, kind, metadata.name, metadata.namespace, spec).
3. Cross-references kustomize does not check: ConfigMaps mounted or referenced exist in the
   output; Services select some workload's Pods and their named targetPorts exist; every
   container has CPU and memory requests, a memory limit, no privilege escalation, every
   capability dropped except those allowed below, and probes.

Exits 1 with one line per problem.
"""

import argparse
import sys

import kubernetes_validate
import yaml

CRD_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/")
# Secrets the operator creates (deploy/tls/gen-certs.sh, the overlays' instructions) or
# cert-manager issues; anything else referenced must be in the output.
EXTERNAL_SECRETS = {
    "flowlens-agent-tls",
    "flowlens-aggregator-tls",
    "flowlens-clickhouse",
    "flowlens-elasticsearch",
}
# Added capabilities allowed per container name.
ALLOWED_CAPS = {"agent": {"NET_ADMIN"}}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob"}


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {}), spec.get("template", {}).get("metadata", {})


def check_workload(obj, where, configmaps, secrets, errors):
    spec, _ = pod_spec(obj)
    for vol in spec.get("volumes", []):
        if "configMap" in vol and vol["configMap"]["name"] not in configmaps:
            errors.append(f"{where}: volume {vol['name']} mounts ConfigMap {vol['configMap']['name']}, which is not in the output")
        if "secret" in vol:
            name = vol["secret"]["secretName"]
            if name not in secrets and name not in EXTERNAL_SECRETS:
                errors.append(f"{where}: volume {vol['name']} mounts unknown Secret {name}")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        cw = f"{where} container {c['name']}"
        res = c.get("resources", {})
        for key in ("cpu", "memory"):
            if key not in res.get("requests", {}):
                errors.append(f"{cw}: no {key} request")
        if "memory" not in res.get("limits", {}):
            errors.append(f"{cw}: no memory limit")
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{cw}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            errors.append(f"{cw}: must not be privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            errors.append(f"{cw}: capabilities must drop ALL")
        extra = set(caps.get("add", [])) - ALLOWED_CAPS.get(c["name"], set())
        if extra:
            errors.append(f"{cw}: adds capabilities {sorted(extra)}")
        if obj["kind"] not in ("Job", "CronJob"):
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    errors.append(f"{cw}: no {probe}")
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets and ref["name"] not in EXTERNAL_SECRETS:
                errors.append(f"{cw}: env {env['name']} reads unknown Secret {ref['name']}")
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref and ref["name"] not in configmaps:
                errors.append(f"{cw}: env {env['name']} reads unknown ConfigMap {ref['name']}")


def check_services(docs, errors):
    pods = []  # (namespace, labels, named ports)
    for d in docs:
        if d["kind"] in WORKLOADS:
            spec, meta = pod_spec(d)
            ports = {p["name"] for c in spec.get("containers", []) for p in c.get("ports", []) if "name" in p}
            pods.append((d["metadata"].get("namespace"), meta.get("labels", {}), ports))
    for d in docs:
        if d["kind"] != "Service":
            continue
        where = f"Service {d['metadata']['name']}"
        sel = d["spec"].get("selector", {})
        matches = [p for p in pods if p[0] == d["metadata"].get("namespace") and sel and all(p[1].get(k) == v for k, v in sel.items())]
        if not matches:
            errors.append(f"{where}: selector {sel} matches no workload's Pods")
            continue
        for port in d["spec"].get("ports", []):
            tp = port.get("targetPort")
            if isinstance(tp, str) and not any(tp in p[2] for p in matches):
                errors.append(f"{where}: targetPort {tp} is not a named port of the selected Pods")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--kubernetes-version", action="append", dest="versions")
    args = ap.parse_args()
    versions = args.versions or [kubernetes_validate.latest_version()]
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = []
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    secrets |= {d["spec"]["secretName"] for d in docs if d["kind"] == "Certificate"}
    crds = 0
    for d in docs:
        where = f"{d.get('kind')} {d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith(CRD_GROUPS):
            crds += 1
            for key in ("apiVersion", "kind", "spec"):
                if not d.get(key):
                    errors.append(f"{where}: no {key}")
            if not d.get("metadata", {}).get("name") or not d["metadata"].get("namespace"):
                errors.append(f"{where}: metadata.name and metadata.namespace are required")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{where} (Kubernetes {v}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{where} (Kubernetes {v}): no schema: {e}")
        if d.get("kind") in WORKLOADS:
            check_workload(d, where, configmaps, secrets, errors)
        if d.get("metadata", {}).get("namespace") is None and d.get("kind") not in (
            "Namespace", "ClusterRole", "ClusterRoleBinding"
        ):
            errors.append(f"{where}: no namespace")
    check_services(docs, errors)
    for e in errors:
        print(f"  {args.rendered}: {e}", file=sys.stderr)
    print(f"  {len(docs)} objects, {crds} custom resources (structural check), Kubernetes {', '.join(versions)}: {'FAILED' if errors else 'ok'}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
