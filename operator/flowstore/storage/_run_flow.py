"""Child-process entry point of :class:`flowstore.storage.base.EnvRunner`.

Reads ``FLOWSTORE_RUN_SPEC`` (JSON ``{"storage": <Storage.to_status()>, "location": ...}``),
rebuilds the storage, loads the flow and calls its ``run()``. Exit code 0 when the run
returns, 1 when anything raises (the traceback goes to stderr), 2 on a malformed spec.
Credentials are not part of the spec: the backend's default chain (environment) applies.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

RUN_SPEC_ENV = "FLOWSTORE_RUN_SPEC"


def main() -> int:
    raw = os.environ.get(RUN_SPEC_ENV)
    if not raw:
        print(f"{RUN_SPEC_ENV} is not set; Storage.get_env_runner() starts this module", file=sys.stderr)
        return 2
    try:
        spec = json.loads(raw)
        storage_doc = spec["storage"]
        location = str(spec["location"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"{RUN_SPEC_ENV} is not a valid run spec: {exc}", file=sys.stderr)
        return 2
    try:
        from flowstore.storage import from_serialized

        storage = from_serialized(storage_doc)
        flow_name = next((name for name, loc in storage.flows.items() if loc == location), None)
        flow = storage.get_flow(location, flow_name=flow_name)
        flow.run()
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
