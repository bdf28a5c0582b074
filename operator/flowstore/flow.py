"""A minimal flow object for scripts that have no workflow engine of their own.

flowstore stores any picklable object with a ``name``; examples and tests use this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Flow:
    name: str
    fn: Callable[..., Any]

    def run(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)
