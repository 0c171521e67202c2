#!/usr/bin/env bash
# Size limits that keep the tree readable (issue 22): no Rust source file over
# 800 lines, and README.md a front page of at most 250 lines (the rest lives in
# docs/). Prints every file over its limit and exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_RS=800
MAX_README=250
status=0
while IFS= read -r f; do
    n=$(wc -l <"$f")
    if [ "$n" -gt "$MAX_RS" ]; then
        echo "file-sizes: $f has $n lines (limit $MAX_RS): split it by job"
        status=1
    fi
done < <(git ls-files -co --exclude-standard -- '*.rs')
n=$(wc -l <README.md)
if [ "$n" -gt "$MAX_README" ]; then
    echo "file-sizes: README.md has $n lines (limit $MAX_README): move detail into docs/"
    status=1
fi
[ "$status" -eq 0 ] && echo "file-sizes: ok (.rs <= $MAX_RS lines, README.md <= $MAX_README)"
exit "$status"
