"""What an agent believes about a StoredFlow, and why: its status read as hostile input
(:mod:`.status`), checked against what the agent trusts before any request that carries the
agent's credentials (:mod:`.trust`). No I/O here: :mod:`flowstore.client` reads the cluster."""
