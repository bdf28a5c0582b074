"""Where the Kubernetes client's configuration comes from, decided in one place: in a Pod,
its ServiceAccount (in-cluster config); elsewhere ``$KUBECONFIG`` or ``~/.kube/config``."""

from __future__ import annotations


def load() -> str:
    """Configure the Kubernetes client; returns ``in-cluster`` or ``kubeconfig``. Raises
    ``kubernetes.config.ConfigException`` when neither is available."""
    from kubernetes import config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return "in-cluster"
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
        return "kubeconfig"


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
