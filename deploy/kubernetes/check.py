"""Structural checks of Colony's Kubernetes manifests, with no cluster, for each way they are
applied: this directory (Sentinel shards), and cluster/ with this directory's files but its
configmap.yaml (a Redis Cluster). Every document is a well-formed object; Deployments and
StatefulSets select their own pods; Services and the PodDisruptionBudget
select pods that exist and name ports the containers have; every ConfigMap and Secret a pod
uses is defined here; the gateway is ready on /readyz and alive on /healthz; every container
runs as non-root, read-only, without privilege escalation and with all capabilities dropped,
within a memory limit. Exits non-zero with one line per problem.

Run by deploy/check.sh (the README's test command) with Debian's python3-yaml.
"""

import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).parent


def main() -> int:
    top = sorted(HERE.glob("*.yaml"))
    cluster = sorted((HERE / "cluster").glob("*.yaml"))
    replaced = {path.name for path in cluster}
    sets = [
        ("Sentinel shards", top),
        ("Redis Cluster", cluster + [p for p in top if p.name not in replaced]),
    ]
    failed = False
    for name, paths in sets:
        problems, count = check(paths)
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
        if problems:
            failed = True
        else:
            print(f"kubernetes manifests ({name}): {count} objects checked")
    return 1 if failed else 0


def check(paths):
    """The problems of the manifests in `paths`, applied together, and how many objects."""
    problems = []
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            name = (doc.get("metadata") or {}).get("name")
            if not doc.get("apiVersion") or not doc.get("kind") or not name:
                problems.append(f"{path.name}: a document without apiVersion, kind or name")
                continue
            docs.append((path.name, doc))
    by_kind = {}
    for _, doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    pods = []  # (labels, containers, volumes) of every pod template
    for file, doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        name = doc["metadata"]["name"]
        spec = doc["spec"]
        template = spec["template"]
        labels = template["metadata"].get("labels", {})
        if doc["kind"] != "Job":
            selector = spec["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{file}: {name} selects {selector}, its pods are {labels}")
        pod = template["spec"]
        security = pod.get("securityContext", {})
        if security.get("runAsNonRoot") is not True:
            problems.append(f"{file}: {name} does not require a non-root user")
        volumes = pod.get("volumes", [])
        for volume in volumes:
            if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problems.append(f"{file}: {name} mounts an undefined ConfigMap {volume['configMap']['name']}")
        for container in pod["containers"]:
            where = f"{file}: {name}/{container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])}
            context = container.get("securityContext", {})
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where} may escalate privileges")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where} has a writable root file system")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{where} keeps capabilities")
            if "memory" not in container.get("resources", {}).get("limits", {}):
                problems.append(f"{where} has no memory limit")
            for source in container.get("envFrom", []):
                secret = source.get("secretRef", {}).get("name")
                if secret and secret not in by_kind.get("Secret", {}):
                    problems.append(f"{where} reads an undefined Secret {secret}")
            for probe in ("readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{where}: {probe} uses port {port}, not one of {ports}")
            if name == "colony-gateway":
                if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    problems.append(f"{where}: readiness is not /readyz")
                if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"{where}: liveness is not /healthz")
        pods.append((labels, pod["containers"]))

    def selected(selector):
        return [(labels, containers) for labels, containers in pods
                if all(labels.get(k) == v for k, v in selector.items())]

    for file, doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "Service":
            matches = selected(doc["spec"]["selector"])
            if not matches:
                problems.append(f"{file}: Service {name} selects no pod")
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and not any(
                    target in {p.get("name") for c in containers for p in c.get("ports", [])}
                    for _, containers in matches
                ):
                    problems.append(f"{file}: Service {name} targets a port {target} no pod names")
        if doc["kind"] == "PodDisruptionBudget":
            matches = selected(doc["spec"]["selector"]["matchLabels"])
            if not matches:
                problems.append(f"{file}: PodDisruptionBudget {name} selects no pod")
            owners = [d for kind in ("Deployment", "StatefulSet")
                      for d in by_kind.get(kind, {}).values()
                      if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                             for k, v in doc["spec"]["selector"]["matchLabels"].items())]
            for owner in owners:
                if doc["spec"].get("minAvailable", 0) >= owner["spec"]["replicas"]:
                    problems.append(f"{file}: PodDisruptionBudget {name} allows no disruption")
                if doc["spec"].get("maxUnavailable", 1) == 0:
                    problems.append(f"{file}: PodDisruptionBudget {name} allows no disruption")
    return problems, len(docs)


if __name__ == "__main__":
    sys.exit(main())
