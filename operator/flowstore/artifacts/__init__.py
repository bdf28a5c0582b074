"""What a stored flow is, as bytes: the seed's default keys, the pickle envelope, signatures.

Pure functions; nothing here runs user code or talks to a backend or the cluster.
"""
