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
