"""The agent's cache: verified artifacts and extracted bundles, by digest, for ``flowstore.client``
and ``flowstore.prefect`` alike (one cache, one meaning of ``FLOWSTORE_CACHE_DIR``).

Nothing on disk is trusted because it is in the cache. Layout, under the root::

    artifacts/<hex>     an artifact's bytes (read-only); rehashed against <hex> on every use
    bundles/<hex>/      a bundle's files (read-only tree); compared with the bundle's manifest,
                        taken from artifacts/<hex>, on every use, and extracted again otherwise
    locks/<hex>.use     shared (flock) by every process using or pinning the entry; eviction
                        takes it exclusively, without waiting, so it never removes an entry in use
    locks/<hex>.fill    exclusive while one process downloads or extracts the entry (the others
                        wait for it, then find it there: one download among many processes)

An entry is only used when it is what this process would have written: a regular file (or a
tree of directories and regular files) owned by this user, writable by nobody else, never a
link. A directory or link planted at a digest's name (digests are public) is removed and the
entry made again; when it cannot be removed, the load fails saying where. The root and each
directory above it must not be writable by other users (unless sticky, like /tmp), or someone
could swap an entry between its check and its use: the cache then refuses to work, saying why.

Bounded by ``FLOWSTORE_CACHE_MAX_BYTES`` (default 1Gi): after an entry is added, and on
``flowstore cache prune``, the least recently used entries that have not been used for
``FLOWSTORE_CACHE_MIN_AGE`` (default 10m) are evicted until the cache fits; entries in use or
pinned are never evicted. A process pins what it runs (a bundle it imported, the revision a pull
step prepared) until it exits: the kernel drops its locks when it ends, however it ends.

Standard library only, no I/O at import.
"""

from flowstore.artifacts.cache.settings import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIN_AGE,
    CacheError,
    Entry,
    PruneResult,
    Settings,
    hex_of,
    parse_duration,
    parse_size,
)
from flowstore.artifacts.cache.store import Cache

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MIN_AGE", "Cache", "CacheError", "Entry", "PruneResult", "Settings", "hex_of",
           "parse_duration", "parse_size"]
