#!/usr/bin/env python3
"""Picks a small corpus from a libFuzzer merge control file (fuzz/run.sh --merge).

usage: minimize.py CONTROL_FILE OUT_DIR MAX_FILES

The control file (`-merge=1 -merge_control_file=F`) lists every input and the coverage
edges (`COV`) it reaches. The seeds (inputs whose file name is not a 40-digit SHA-1, i.e.
the repository's examples and real bundles) are kept first, under their names; then,
greedily, the input that adds the most edges not yet covered (the smaller on a tie),
until nothing adds an edge or MAX_FILES inputs are kept. Prints how many of all the
edges the kept inputs cover.
"""

import hashlib
import os
import re
import shutil
import sys

SHA1 = re.compile(r"^[0-9a-f]{40}$")


def main() -> int:
    control, out, max_files = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(control, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    n = int(lines[0])
    paths = lines[2 : 2 + n]
    cov: dict[int, set[int]] = {}
    for line in lines[2 + n :]:
        if line.startswith("COV "):
            parts = line.split()
            cov[int(parts[1])] = {int(x) for x in parts[2:]}
    every = set().union(*cov.values()) if cov else set()
    size = {i: os.path.getsize(p) for i, p in enumerate(paths)}
    seeds = [i for i, p in enumerate(paths) if not SHA1.match(os.path.basename(p))]
    # The same seed may be listed twice (from the corpus and the work folder): once.
    chosen, names, covered = [], set(), set()
    for i in seeds:
        if os.path.basename(paths[i]) not in names:
            names.add(os.path.basename(paths[i]))
            chosen.append(i)
            covered |= cov.get(i, set())
    rest = [i for i in cov if i not in seeds]
    while len(chosen) < max_files:
        best = max(rest, key=lambda i: (len(cov[i] - covered), -size[i]), default=None)
        if best is None or not cov[best] - covered:
            break
        chosen.append(best)
        covered |= cov[best]
        rest.remove(best)
    os.makedirs(out, exist_ok=True)
    for i in chosen:
        name = os.path.basename(paths[i])
        if SHA1.match(name):
            with open(paths[i], "rb") as f:
                name = hashlib.sha1(f.read()).hexdigest()
        shutil.copyfile(paths[i], os.path.join(out, name))
    print(f"{len(chosen)} inputs ({len(names)} seeds) cover {len(covered)} of {len(every)} edges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
