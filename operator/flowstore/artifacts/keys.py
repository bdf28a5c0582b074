"""The seed's default key format: ``<slug(flow name)>/<slug(UTC timestamp)>``."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def slugify(text: str) -> str:
    """Lowercase ASCII words joined by '-', as python-slugify (the seed's) produces them."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub("-", ascii_text.lower()).strip("-")


def default_key(flow_name: str, now: dt.datetime | None = None) -> str:
    """e.g. ``etl-daily/2026-11-26t10-00-00-000000-00-00``."""
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"{slugify(flow_name)}/{slugify(moment.isoformat(timespec='microseconds'))}"


def join_prefix(prefix: str | None, key: str) -> str:
    """``prefix`` + ``key`` with exactly one '/' between them (an empty prefix adds nothing)."""
    if not prefix:
        return key
    return prefix.rstrip("/") + "/" + key.lstrip("/")
