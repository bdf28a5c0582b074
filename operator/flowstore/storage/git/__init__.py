"""The git family: read-only storages for flows kept as ``.py`` files in a git repository,
pinned to a commit (the seed's GitHub, GitLab, Bitbucket and CodeCommit storages, plus ``Git``).

- :mod:`.base` — :class:`GitHosted`, what every provider shares (the seed's interface, pinning,
  ``stat``, the read-only refusals), the directory bounds and the HTTP failure mapping;
- :mod:`.tree` — reading a directory at a commit: bounds, symlinks and submodules, written once;
- :mod:`.plain` — :class:`Git`: any repository, through the ``git`` command over https or ssh;
- :mod:`.github`, :mod:`.gitlab`, :mod:`.bitbucket` — the providers' REST APIs, on what
  :mod:`.rest` writes once (the shared session; for GitHub and GitLab the token, the endpoint,
  the status document and how a refused token is explained); :mod:`._bitbucket_tree` walks
  Bitbucket's directory listings;
- :mod:`.codecommit` — AWS CodeCommit through boto3 (the ``codecommit`` extra, imported only
  when a client is needed).

Users reach the classes as ``flowstore.storage.GitHub`` etc. (the backend table in
:mod:`flowstore.api.backends` names each module).
"""

from __future__ import annotations

from flowstore.storage.git.base import (
    MAX_DIRECTORY_BYTES,
    MAX_DIRECTORY_FILES,
    GitHosted,
    is_commit_id,
    normalize_path,
    raise_for_http,
)
from flowstore.storage.git.bitbucket import Bitbucket
from flowstore.storage.git.codecommit import CodeCommit
from flowstore.storage.git.github import GitHub
from flowstore.storage.git.gitlab import GitLab
from flowstore.storage.git.plain import Git
from flowstore.storage.git.tree import TreeEntry, read_tree

__all__ = [
    "MAX_DIRECTORY_BYTES",
    "MAX_DIRECTORY_FILES",
    "Bitbucket",
    "CodeCommit",
    "Git",
    "GitHosted",
    "GitHub",
    "GitLab",
    "TreeEntry",
    "is_commit_id",
    "normalize_path",
    "raise_for_http",
    "read_tree",
]
