"""The operator: kopf handlers (thin), per-object reconcile loops, Kubernetes access (the ports
of the pure core, :mod:`flowstore.reconcile`), the image builder and builder Jobs."""
