"""flowstore: workflow flows stored declaratively, by a Kubernetes operator.

Agents use :mod:`flowstore.client` (find a StoredFlow, load and verify its flow) and
:mod:`flowstore.storage` (the seed's Storage classes, usable with no cluster).
"""

__version__ = "0.1.0"
