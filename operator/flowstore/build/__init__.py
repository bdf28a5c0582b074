"""From flow sources to stored bytes: keys, the pickle envelope, digests, the build sandbox.

Pure functions and a subprocess boundary; nothing here talks to a backend or the cluster.
"""
