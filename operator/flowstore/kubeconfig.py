"""Where the Kubernetes client's configuration comes from, decided in one place: in a Pod,
its ServiceAccount (in-cluster config); elsewhere ``$KUBECONFIG`` or ``~/.kube/config``."""

from __future__ import annotations


def load(connections: int = 0) -> str:
    """Configure the Kubernetes client; returns ``in-cluster`` or ``kubeconfig``. Raises
    ``kubernetes.config.ConfigException`` when neither is available. `connections`: keep at least
    that many connections to the API server open (one per thread that calls it at once); the
    client's default pool (5 per CPU) is smaller than the operator's workers on a small node, and
    each connection it cannot keep is a new TLS handshake on the next request."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        where = "in-cluster"
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
        where = "kubeconfig"
    if connections:
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, connections)
        client.Configuration.set_default(configuration)
    return where


#: where Kubernetes mounts a Pod's own namespace
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def current_namespace() -> str:
    """The namespace an unqualified name means here, as kubectl decides it: in a Pod, its own
    namespace; elsewhere the current kubeconfig context's namespace; else ``default``."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as fh:
            namespace = fh.read().strip()
        if namespace:
            return namespace
    except OSError:
        pass
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        return "default"
    return str(((active or {}).get("context") or {}).get("namespace") or "default")
