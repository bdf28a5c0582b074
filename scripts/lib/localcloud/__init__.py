"""The local cloud as a program: real servers on 127.0.0.1 for development, the demo and the tests.

Stdlib only: it runs before any virtualenv exists. `scripts/localcloud` is the executable; the
program is this package (design: LOCAL-CLOUD.md, REAL-NODE.md):

  cloud.py         one local cloud: its state directory, cache and pinned versions
  state.py         state.json (ports, pids, command lines) and the lock around it
  procs.py         ports, processes, logs and the HTTP probes every readiness check uses
  install.py       what is installed on demand (apt packages, `go install`), cached and locked
  model.py         what a service is: servers, how each starts/checks/stops, what it exports
  kube.py          etcd + kube-apiserver
  node.py          containerd, kubelet, kube-scheduler, kube-controller-manager (the node)
  node_files.py    the node's own files and kernel state (configs, CNI, mounts, shims, bridge)
  pause.py         the node's pause image, made here (nothing is pulled from outside)
  objectstores.py  s3 (moto), gcs (fake-gcs-server), azure (Azurite)
  webhook.py       the webhook HTTP service
  git.py           git smart HTTP behind basic auth
  engine.py        the registry (htpasswd) and the Docker Engine API (podman)
  table.py         the one table of services, in the order `up` starts them
  commands.py      up, down, start, stop, env, status
  cli.py           the command line
"""
