"""The local cloud: real servers on 127.0.0.1 for development, the demo and the tests.

Usage:
  scripts/localcloud up [SERVICE ...]      start (or reuse) services; no args = all
  scripts/localcloud env                   print `export NAME=value` lines for running services
  scripts/localcloud status                one line per server: name pid port up/down
  scripts/localcloud down [SERVICE ...]    stop services and remove their runtime state
  scripts/localcloud stop SERVER           stop one server, keeping its port and data
  scripts/localcloud start SERVER          start it again on the same port

State lives in $FLOWSTORE_LOCALCLOUD_DIR (default <repo>/.localcloud/): state.json, logs,
etcd data, certs, kubeconfig, the node's containerd and kubelet directories. Binaries are cached
under ~/.cache/flowstore/ and never removed. The program: scripts/lib/localcloud/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from . import commands, table
from .cloud import Cloud, LocalCloudError, log


def _services_help() -> str:
    lines = ["services:"]
    for svc in table.SERVICES:
        servers = ", ".join(s.name for s in svc.servers)
        needs = f"; needs {', '.join(svc.needs)}" if svc.needs else ""
        lines.append(f"  {svc.name:<8} {svc.summary} [{servers}]{needs}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localcloud", description=__doc__, epilog=_services_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down"):
        one = sub.add_parser(cmd)
        one.add_argument("services", nargs="*", metavar="SERVICE",
                         help=f"{', '.join(table.names())} (default: all)")
    servers = [s.name for s in table.servers()]
    for cmd in ("start", "stop"):
        one = sub.add_parser(cmd)
        one.add_argument("server", choices=servers)
    sub.add_parser("env")
    sub.add_parser("status")
    return p


def main(argv: list[str] | None = None, cloud: Cloud | None = None) -> int:
    args = parser().parse_args(argv)
    cloud = cloud or Cloud.from_environ()
    try:
        if args.cmd == "up":
            commands.up(cloud, args.services)
        elif args.cmd == "down":
            commands.down(cloud, args.services)
        elif args.cmd == "start":
            commands.start(cloud, args.server)
        elif args.cmd == "stop":
            commands.stop(cloud, args.server)
        elif args.cmd == "env":
            sys.stdout.write(commands.env(cloud))
        elif args.cmd == "status":
            sys.stdout.write(commands.status(cloud))
    except (LocalCloudError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    return 0
