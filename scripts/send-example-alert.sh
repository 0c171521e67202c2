#!/usr/bin/env bash
# Posts examples/alert.json to the running gateway (make run) and prints the answer.
set -euo pipefail
cd "$(dirname "$0")/.."
curl -sS -i -X POST -H 'Content-Type: application/json' \
    --data-binary @examples/alert.json "${1:-http://127.0.0.1:8080}/api/v1/signals/prometheus"
echo
