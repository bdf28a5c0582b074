"""The operator: kopf handlers (thin), per-object reconcile loops, and the pure reconcile core."""
