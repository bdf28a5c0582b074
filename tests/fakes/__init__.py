"""Fakes: the reconcile core's Ports over dicts (``ports.py``), and contract fakes for provider
APIs that have no local server (GitHub, GitLab, Bitbucket, CodeCommit). Each contract fake
implements exactly the endpoints flowstore calls, with the response shapes, status codes, auth
and rate-limit headers from the provider's API docs (cited in each module), serving real git
repositories (:class:`tests.helpers.gitrepo.LocalGitRepo`)."""
