#!/usr/bin/env python3
"""An external drover plugin, in a few lines: a read-only check that a filesystem has
enough free space. Declared in the config as

    plugins:
      - {name: disk-free, command: [../plugins/external/disk_free.py], kind: check}

and used as `uses: ext.disk-free` with `with: {path: /var/lib, min_free_mb: 512}`.
drover writes one JSON request on stdin and reads one JSON answer from stdout
(docs/PLUGINS.md)."""
import json
import shutil
import sys

request = json.load(sys.stdin)
params = request["params"]
path = params.get("path", "/")
need = float(params.get("min_free_mb", 1))
try:
    free = shutil.disk_usage(path).free / 2**20
except OSError as e:
    print(json.dumps({"status": "permanent", "message": f"cannot inspect {path}: {e}"}))
    sys.exit(0)
if free >= need:
    print(json.dumps({"status": "ok", "summary": f"{path}: {free:.0f} MiB free", "data": {"free_mb": free}}))
else:
    # Retryable: a check polled with `within` tries again.
    print(json.dumps({"status": "retryable", "message": f"{path}: only {free:.0f} MiB free, need {need:.0f}"}))
