#!/usr/bin/env python3
"""Checks the deployment files that no test here can run: deploy/k8s (no Kubernetes
cluster on the CI machine), and the parts of deploy/swarm and deploy/compose that a
single-host run does not exercise.

    python3 tests/deploy/check-manifests.py [--node-bin PATH] [--app-bin PATH]

It parses every manifest (PyYAML) and checks what a mistake would break at deploy time:
the images are those deploy/docker/build-images.sh builds, every OPENCLUSTER_* variable
is a setting the binaries know (from `opencluster-node --help` and
`opencluster-example-app --help`), the probes reach /v1/health (readiness /v1/ready) on the port the admin API
listens on, the join name is a headless Service that selects the node pods, the keys and
the password come from Secrets the node can read, the socket directory is the same host
directory for the node and the apps, and the stop grace period outlasts the node's own.
The connector manifests (deploy/k8s/connector.yaml, deploy/swarm/connector.yml, the
two-datacenter compose file) are checked the same way: settings the binaries know (the
connector reads the node's settings), its image, its WAN port, its health check, and that
it joins the nodes of its own datacenter.
Prints each check; exits 1 listing the failures. The binaries default to target/debug/.
"""

import argparse
import pathlib
import re
import subprocess
import sys

try:
    import yaml
except ImportError:
    sys.exit("check-manifests: PyYAML is missing: apt-get install python3-yaml (or pip install pyyaml)")

ROOT = pathlib.Path(__file__).resolve().parents[2]
failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
        print(f"  ok    {what}")
    else:
        failures.append(what)
        print(f"  FAIL  {what}")


def env_names(binary):
    """The OPENCLUSTER_* variables a binary's --help documents."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: (OPENCLUSTER_[A-Z0-9_]+)", out))


def built_images():
    """(prefix, image names, version) from build-images.sh and Cargo.toml."""
    script = (ROOT / "deploy/docker/build-images.sh").read_text()
    names = re.search(r"^IMAGES=\(([^)]*)\)", script, re.M).group(1).split()
    prefix = re.search(r"PREFIX=\$\{IMAGE_PREFIX:-([^}]*)\}", script).group(1)
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo, re.M | re.S).group(1)
    return prefix, names, version


def image_env_default(name):
    """An ENV default of the node image (Dockerfile.scratch)."""
    text = (ROOT / "deploy/docker/Dockerfile.scratch").read_text()
    return re.search(rf"{name}=(\S+)", text).group(1)


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)", str(text))
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else None


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


# --------------------------------------------------------------------------------------
def check_kubernetes(node_envs, app_envs, prefix, images, version):
    k8s = ROOT / "deploy/k8s"
    docs = {}
    for path in sorted(k8s.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.setdefault(doc["kind"], []).append((path.name, doc))
    print("deploy/k8s:")

    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    # The client password's Secret is applied on its own, so that `apply -k` never
    # replaces the operator's password with the file's placeholder.
    # So is the connector's, applied once a cluster spans datacenters and its addresses
    # are filled in.
    files = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml", "secret-client.yaml", "connector.yaml"}
    check(set(kustomization["resources"]) == files,
          f"kustomization.yaml lists every manifest but secret-client.yaml and connector.yaml ({sorted(files)})")

    namespaced = [d for kind, ds in docs.items() if kind not in ("Namespace", "Kustomization") for _, d in ds]
    namespaces = {d["metadata"].get("namespace") for d in namespaced}
    ns_names = {d["metadata"]["name"] for _, d in docs.get("Namespace", [])}
    check(len(namespaces) == 1 and namespaces <= ns_names, f"every object is in the namespace the manifests create ({namespaces})")

    daemonsets = {d["metadata"]["name"]: d for _, d in docs["DaemonSet"]}
    services = {d["metadata"]["name"]: d for _, d in docs["Service"]}
    secrets = {d["metadata"]["name"]: d for _, d in docs.get("Secret", [])}
    configmaps = {d["metadata"]["name"]: d for _, d in docs.get("ConfigMap", [])}
    node_ds = daemonsets.get("opencluster-node")
    app_ds = daemonsets.get("opencluster-example-app")
    check(node_ds is not None and app_ds is not None, "a DaemonSet for the nodes and one for the example app")
    if node_ds is None or app_ds is None:
        return
    node_pod = node_ds["spec"]["template"]["spec"]
    app_pod = app_ds["spec"]["template"]["spec"]
    node_labels = node_ds["spec"]["template"]["metadata"]["labels"]
    check(node_ds["spec"]["selector"]["matchLabels"].items() <= node_labels.items(), "the node DaemonSet selects its own pods")
    (node,) = [c for c in node_pod["containers"] if c["name"] == "node"]
    (app,) = app_pod["containers"]
    nenv, aenv = env_of(node), env_of(app)

    # Images.
    allowed = {f"{prefix}{name}:{tag}" for name in images for tag in (version, "latest")}
    for pod, what in ((node_pod, "node"), (app_pod, "example app")):
        for c in pod["containers"]:
            check(c["image"] in allowed, f"{what} pod: container {c['name']} runs an image build-images.sh builds ({c['image']})")
    expected = {"node": f"{prefix}node:{version}", "example-app": f"{prefix}example-app:{version}"}
    check(node["image"] == expected["node"] and app["image"] == expected["example-app"],
          f"the images are pinned to the workspace version {version}")
    for c in node_pod.get("initContainers", []):
        check(c["image"].startswith("busybox:") and c["command"][0] == "chown",
              f"the init container {c['name']} only hands the host directories to the node's user ({' '.join(c['command'])})")

    # Settings.
    unknown = sorted(set(nenv) - node_envs)
    check(not unknown, f"every variable of the node container is a setting of opencluster-node ({sorted(nenv)}){' unknown: ' + str(unknown) if unknown else ''}")
    unknown = sorted(set(aenv) - app_envs)
    check(not unknown, f"every variable of the app container is an option of opencluster-example-app{' unknown: ' + str(unknown) if unknown else ''}")
    check(node_pod.get("enableServiceLinks") is False and app_pod.get("enableServiceLinks") is False,
          "service links are off (they would add OPENCLUSTER_* variables)")

    # Probes at the admin API's port, which must listen beyond loopback: readiness on
    # /v1/ready (caught up, what a rolling update waits for), the others on /v1/health.
    admin = nenv.get("OPENCLUSTER_ADMIN_ADDR", {}).get("value", "127.0.0.1:9379")
    check(not admin.startswith("127."), f"the admin API listens on the pod address for the kubelet ({admin})")
    ports = {p["name"]: p for p in node["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = node.get(probe, {}).get("httpGet", {})
        port = get.get("port")
        number = ports[port]["containerPort"] if isinstance(port, str) and port in ports else port
        path = "/v1/ready" if probe == "readinessProbe" else "/v1/health"
        check(get.get("path") == path and number == port_of(admin),
              f"{probe}: GET {path} on the admin port {port_of(admin)} (has {get.get('path')} on {port} = {number})")
    check(ports.get("gossip", {}).get("containerPort") == 7946 and ports["gossip"].get("protocol") == "UDP", "gossip 7946/UDP")
    check(ports.get("rpc", {}).get("containerPort") == 7947 and ports["rpc"].get("protocol") == "UDP", "peer RPC 7947/UDP")

    # Joining through the headless Service.
    join = nenv.get("OPENCLUSTER_JOIN_SERVICE", {}).get("value", "")
    svc = services.get(join.split(".")[0].split(":")[0])
    check(svc is not None, f"OPENCLUSTER_JOIN_SERVICE names a Service of the manifests ({join})")
    if svc:
        spec = svc["spec"]
        check(spec.get("clusterIP") == "None", f"Service {join} is headless (its name resolves to every pod)")
        check(spec.get("publishNotReadyAddresses") is True, f"Service {join} lists pods before they are ready")
        check(spec["selector"].items() <= node_labels.items(), f"Service {join} selects the node pods")
        check(any(p["port"] == 7946 and p.get("protocol") == "UDP" for p in spec["ports"]), f"Service {join}: 7946/UDP")
        check("OPENCLUSTER_JOIN" not in nenv, "no OPENCLUSTER_JOIN, which would win over the service")
    locals_ = [s for s in services.values() if s["spec"].get("internalTrafficPolicy") == "Local"]
    check(any(s["spec"]["selector"].items() <= node_labels.items() and any(p["port"] == 6379 for p in s["spec"]["ports"])
              for s in locals_), "a client Service on 6379 that keeps each client on its own host's node")

    # Keys and password from Secrets the node can read.
    mounts = {m["name"]: m for m in node["volumeMounts"]}
    volumes = {v["name"]: v for v in node_pod["volumes"]}
    tls_dir = nenv.get("OPENCLUSTER_TLS_DIR", {}).get("value")
    tls = [n for n, m in mounts.items() if m["mountPath"] == tls_dir]
    check(len(tls) == 1 and "secret" in volumes[tls[0]], f"OPENCLUSTER_TLS_DIR ({tls_dir}) is a Secret volume")
    if tls:
        secret = volumes[tls[0]]["secret"]
        sc = node_pod["securityContext"]
        check(secret.get("defaultMode") == 0o400 and sc.get("fsGroup") == 10001 and sc.get("runAsUser") == 10001,
              "the key files are 0440 root:10001 for user 10001 (defaultMode 0400 with fsGroup 10001)")
    ref = nenv.get("OPENCLUSTER_CLIENT_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {})
    check(ref.get("name") in secrets and ref.get("key") in secrets[ref["name"]].get("stringData", {}),
          f"the client password comes from the Secret {ref.get('name')}, key {ref.get('key')}")

    # Data and socket on the host; the app shares the socket directory.
    data = [n for n, m in mounts.items() if m["mountPath"] == "/data"]
    check(len(data) == 1 and "hostPath" in volumes[data[0]], "/data is a host directory: it outlives the pod (upgrades)")
    run = [n for n, m in mounts.items() if m["mountPath"] == "/run/opencluster"]
    app_mounts = {m["name"]: m for m in app["volumeMounts"]}
    app_volumes = {v["name"]: v for v in app_pod["volumes"]}
    app_run = [n for n, m in app_mounts.items() if m["mountPath"] == "/run/opencluster"]
    check(len(run) == 1 and len(app_run) == 1
          and volumes[run[0]].get("hostPath", {}).get("path") == app_volumes[app_run[0]].get("hostPath", {}).get("path"),
          "node and app mount the same host directory at /run/opencluster")
    socket = nenv.get("OPENCLUSTER_UNIX_SOCKET", {}).get("value") or image_env_default("OPENCLUSTER_UNIX_SOCKET")
    app_socket = aenv.get("OPENCLUSTER_APP_SOCKET", {}).get("value", "/run/opencluster/opencluster.sock")
    check(socket == app_socket, f"the app connects to the socket the node creates ({socket})")
    check(app_pod["securityContext"].get("runAsUser") == 10001 or 10001 in app_pod["securityContext"].get("supplementalGroups", []),
          "the app runs as user or group 10001 (the socket is 0660)")

    # Stopping, upgrading, memory.
    grace = node_pod.get("terminationGracePeriodSeconds", 30)
    shutdown = duration_seconds(nenv.get("OPENCLUSTER_SHUTDOWN_TIMEOUT", {}).get("value", "10s"))
    check(grace >= 2 * shutdown, f"terminationGracePeriodSeconds {grace} leaves the node its shutdown_timeout ({shutdown}s) to drain and as long to leave")
    strategy = node_ds["spec"]["updateStrategy"]
    check(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 1
          and node_ds["spec"].get("minReadySeconds", 0) >= 30, "rolling updates one host at a time, with time to catch up")
    for pod in (node_pod, app_pod):
        for c in pod.get("initContainers", []) + pod["containers"]:
            check("memory" in c.get("resources", {}).get("limits", {}), f"container {c['name']} has a memory limit")
    check("cpu" not in node["resources"].get("limits", {}), "no CPU limit on the node (throttling delays gossip)")
    confd = [m for m in node["volumeMounts"] if m["mountPath"].startswith("/etc/opencluster/conf.d/")]
    profile = (ROOT / "deploy/docker/conf.d/memory-128m.toml").read_text()
    check(len(confd) == 1 and configmaps.get(volumes[confd[0]["name"]]["configMap"]["name"], {}).get("data", {}).get(confd[0]["subPath"]) == profile,
          "the node's conf.d gets deploy/docker/conf.d/memory-128m.toml, the profile tested under 128 MiB, unchanged")

    check_kubernetes_connector(docs, services, node_envs, node_labels, nenv, prefix, version)


def check_kubernetes_connector(docs, services, node_envs, node_labels, node_env, prefix, version):
    deployments = {d["metadata"]["name"]: d for _, d in docs.get("Deployment", [])}
    dep = deployments.get("opencluster-connector")
    check(dep is not None, "connector.yaml: a Deployment opencluster-connector")
    if dep is None:
        return
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    check(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the connector Deployment selects its own pods")
    check(dep["spec"].get("replicas") == 2, "two connector replicas (the second is the twin that takes over)")
    check(not labels.items() <= node_labels.items(), "the connector pods are not selected as nodes")
    (c,) = pod["containers"]
    cenv = env_of(c)
    check(c["image"] == f"{prefix}connector:{version}", f"the connector image is build-images.sh's, pinned to {version} ({c['image']})")
    unknown = sorted(set(cenv) - node_envs)
    check(not unknown, f"every variable of the connector is a setting ({sorted(cenv)}){' unknown: ' + str(unknown) if unknown else ''}")
    check(pod.get("enableServiceLinks") is False, "the connector's service links are off")
    for name in ("OPENCLUSTER_DATACENTER", "OPENCLUSTER_CONNECTOR_WAN_ADVERTISE", "OPENCLUSTER_CONNECTOR_PEERS"):
        check(cenv.get(name, {}).get("value"), f"the connector sets {name}")
    check(cenv.get("OPENCLUSTER_JOIN_SERVICE", {}).get("value") == node_env.get("OPENCLUSTER_JOIN_SERVICE", {}).get("value"),
          "the connector joins the nodes' headless Service, as the nodes do")
    ports = {p["name"]: p for p in c["ports"]}
    check(ports.get("wan", {}).get("containerPort") == 7948 and ports["wan"].get("protocol") == "UDP", "connector WAN 7948/UDP")
    admin = cenv.get("OPENCLUSTER_ADMIN_ADDR", {}).get("value", "127.0.0.1:9379")
    for probe in ("readinessProbe", "livenessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        port = get.get("port")
        number = ports[port]["containerPort"] if isinstance(port, str) and port in ports else port
        check(get.get("path") == "/v1/health" and number == port_of(admin) and not admin.startswith("127."),
              f"connector {probe}: GET /v1/health on the admin port it listens on beyond loopback ({admin})")
    wan = [s for s in services.values() if s["spec"]["selector"].items() <= labels.items()
           and any(p["port"] == 7948 and p.get("protocol") == "UDP" for p in s["spec"]["ports"])]
    check(len(wan) == 1 and wan[0]["spec"].get("type") in ("LoadBalancer", "NodePort"),
          "a LoadBalancer (or NodePort) Service carries the WAN port 7948/UDP to the connectors")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls_dir = cenv.get("OPENCLUSTER_TLS_DIR", {}).get("value")
    check(tls_dir in mounts and "secret" in volumes[mounts[tls_dir]["name"]], "the connector's keys are the Secret the nodes use")
    check("/data" in mounts, "the connector has a /data volume (its id and cursors)")
    check("memory" in c.get("resources", {}).get("limits", {}), "the connector has a memory limit")
    check(pod.get("terminationGracePeriodSeconds", 30) >= 20, "the connector has time to stop cleanly")


# --------------------------------------------------------------------------------------
def check_swarm(node_envs, app_envs, prefix):
    print("deploy/swarm:")
    stack = yaml.safe_load((ROOT / "deploy/swarm/opencluster-stack.yml").read_text())
    keys = yaml.safe_load((ROOT / "deploy/swarm/keys.yml").read_text())
    node, app = stack["services"]["node"], stack["services"]["app"]
    check(node["deploy"]["mode"] == "global" and app["deploy"]["mode"] == "global", "node and app are global services (one per host)")
    check(node["image"].startswith("${OPENCLUSTER_IMAGE_PREFIX:-" + prefix + "}node:")
          and app["image"].startswith("${OPENCLUSTER_IMAGE_PREFIX:-" + prefix + "}example-app:"),
          "the images are those of build-images.sh")
    for svc, envs, what in ((node, node_envs, "opencluster-node"), (app, app_envs, "opencluster-example-app")):
        unknown = sorted(set(svc.get("environment", {})) - envs)
        check(not unknown, f"every variable is known to {what}{' unknown: ' + str(unknown) if unknown else ''}")
    unknown = sorted(set(keys["services"]["node"].get("environment", {})) - node_envs)
    check(not unknown, f"keys.yml: every variable is a setting{' unknown: ' + str(unknown) if unknown else ''}")
    check(node["environment"].get("OPENCLUSTER_JOIN_SERVICE") == "tasks.{{.Service.Name}}",
          "the node joins tasks.<its service> (every task's address)")
    check(duration_seconds(node.get("stop_grace_period")) >= 20, f"stop_grace_period {node.get('stop_grace_period')} >= 20s")
    check(node["healthcheck"]["test"] == ["CMD", "/opencluster-node", "health"], "the health check is `opencluster-node health`")
    update = node["deploy"]["update_config"]
    check(update["parallelism"] == 1 and update["order"] == "stop-first", "updates one host at a time, stop-first (one data volume per host)")
    check("/run/opencluster" in [v.split(":")[1] for v in node["volumes"]]
          and [v for v in node["volumes"] if v.endswith(":/run/opencluster")] == [v for v in app["volumes"] if v.endswith(":/run/opencluster")],
          "node and app share the volume at /run/opencluster")
    check(all(stack["networks"][n]["driver"] == "overlay" for n in node["networks"]), "the nodes are on an overlay network")
    tls_dir = keys["services"]["node"]["environment"]["OPENCLUSTER_TLS_DIR"]
    targets = {s["target"]: s for s in keys["services"]["node"]["secrets"]}
    wanted = {f"{tls_dir}/{f}" for f in ("root.crt", "dc.crt", "dc.key", "gossip.keyring")}
    check(set(targets) == wanted, "keys.yml mounts the four files of a tls dir into OPENCLUSTER_TLS_DIR")
    check(all(targets[f"{tls_dir}/{f}"]["mode"] == 0o400 and targets[f"{tls_dir}/{f}"]["uid"] == "10001"
              for f in ("dc.key", "gossip.keyring")), "the secret keys are 0400, owned by 10001")


def check_swarm_connector(node_envs, prefix):
    stack = yaml.safe_load((ROOT / "deploy/swarm/opencluster-stack.yml").read_text())
    extra = yaml.safe_load((ROOT / "deploy/swarm/connector.yml").read_text())
    c = extra["services"]["connector"]
    check(c["image"].startswith("${OPENCLUSTER_IMAGE_PREFIX:-" + prefix + "}connector:"), "connector.yml: the connector image of build-images.sh")
    for svc in ("connector", "node"):
        unknown = sorted(set(extra["services"][svc].get("environment", {})) - node_envs)
        check(not unknown, f"connector.yml: every variable of {svc} is a setting{' unknown: ' + str(unknown) if unknown else ''}")
    env = c["environment"]
    check(env.get("OPENCLUSTER_JOIN_SERVICE", "").startswith("tasks.") and env["OPENCLUSTER_JOIN_SERVICE"].endswith("_node"),
          "connector.yml: the connector joins the tasks of the stack's node service")
    check(env.get("OPENCLUSTER_DATACENTER") == extra["services"]["node"]["environment"].get("OPENCLUSTER_DATACENTER"),
          "connector.yml: the nodes and the connector are of the same datacenter")
    check(all(env.get(n) for n in ("OPENCLUSTER_CONNECTOR_WAN_ADVERTISE", "OPENCLUSTER_CONNECTOR_PEERS")),
          "connector.yml: the WAN address and the peers are set")
    check(any(p.get("target") == 7948 and p.get("protocol") == "udp" and p.get("mode") == "host" for p in c.get("ports", [])),
          "connector.yml: 7948/udp published on the host (not through the routing mesh, which would take eth0)")
    check(c["healthcheck"]["test"] == ["CMD", "/opencluster-connector", "health"], "connector.yml: the health check is `opencluster-connector health`")
    check(set(c["networks"]) == set(stack["services"]["node"]["networks"]), "connector.yml: on the nodes' network")
    check(any(v.endswith(":/data") for v in c["volumes"]), "connector.yml: /data is a volume (id and cursors)")
    check(duration_seconds(c.get("stop_grace_period")) >= 20, "connector.yml: stop_grace_period >= 20s")


def check_compose(node_envs, app_envs, prefix):
    print("deploy/compose:")
    for file in ("docker-compose.yml", "docker-compose.two-dc.yml"):
        compose = yaml.safe_load((ROOT / "deploy/compose" / file).read_text())
        for name, svc in compose["services"].items():
            envs = app_envs if "example-app" in svc["image"] else node_envs
            unknown = sorted(set(svc.get("environment", {})) - envs)
            check(not unknown, f"{file}: {name}: every variable is known{' unknown: ' + str(unknown) if unknown else ''}")
    two = yaml.safe_load((ROOT / "deploy/compose/docker-compose.two-dc.yml").read_text())["services"]
    connectors = {n: s for n, s in two.items() if "}connector:" in s["image"]}
    nodes = {n: s for n, s in two.items() if "}node:" in s["image"]}
    check(sorted(connectors) == ["dc1-connector", "dc2-connector"], "two-dc: one connector per datacenter")
    for name, c in connectors.items():
        dc = c["environment"]["OPENCLUSTER_DATACENTER"]
        own = [n for n, s in nodes.items() if s["environment"]["OPENCLUSTER_DATACENTER"] == dc]
        join = {h.split(":")[0] for h in c["environment"]["OPENCLUSTER_JOIN"].split(",")}
        check(join == set(own) and all(nodes[n]["networks"] == [dc] for n in own),
              f"two-dc: {name} joins the nodes of {dc} ({sorted(own)}), which are on network {dc} only")
        peers = dict(p.split("=") for p in c["environment"]["OPENCLUSTER_CONNECTOR_PEERS"].split(","))
        others = {n for n, s in connectors.items() if n != name}
        check({h.split(":")[0] for h in peers.values()} == others and all(p.endswith(":7948") for p in peers.values()),
              f"two-dc: {name} links to the other connector's WAN port ({peers})")
        # The datacenter's network must be eth0 (the advertised one): networks attach in
        # name order, so it must sort before `wan`.
        check(c["networks"] == [dc, "wan"] and dc < "wan" and c["environment"].get("OPENCLUSTER_BIND_INTERFACE") == "eth0",
              f"two-dc: {name} is on {dc} (eth0, advertised) and wan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node-bin", default=str(ROOT / "target/debug/opencluster-node"))
    parser.add_argument("--app-bin", default=str(ROOT / "target/debug/opencluster-example-app"))
    args = parser.parse_args()
    for b in (args.node_bin, args.app_bin):
        if not pathlib.Path(b).is_file():
            sys.exit(f"check-manifests: {b} is missing: build it (cargo build -p opencluster-node -p opencluster-example-app)")
    node_envs, app_envs = env_names(args.node_bin), env_names(args.app_bin)
    if "OPENCLUSTER_JOIN_SERVICE" not in node_envs or "OPENCLUSTER_APP_SOCKET" not in app_envs:
        sys.exit(f"check-manifests: the --help of {args.node_bin} or {args.app_bin} lists no expected variable: stale binaries?")
    prefix, images, version = built_images()
    check_kubernetes(node_envs, app_envs, prefix, images, version)
    check_swarm(node_envs, app_envs, prefix)
    check_swarm_connector(node_envs, prefix)
    check_compose(node_envs, app_envs, prefix)
    if failures:
        print(f"{len(failures)} of {len(failures) + passed} checks FAILED:")
        for f in failures:
            print(f"  - {f}")
        sys.exit(1)
    print(f"all {passed} checks passed")


if __name__ == "__main__":
    main()
