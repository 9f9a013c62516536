#!/bin/sh
# A hospital site image's entrypoint (also what tests/e2e/test_deployment.py runs on loopback).
#   site.sh join     connect to the coordinator and train when asked (the default)
#   site.sh check    validate the manifest and images, report what would be trained on
# $RETINA_KEYS holds the bundle from the coordinator (site.key, ca.crt); the manifest and images
# are mounted read-only; the trainer state and the privacy ledger live in $RETINA_STATE.
set -eu
RETINA_KEYS=${RETINA_KEYS:-/keys}
RETINA_STATE=${RETINA_STATE:-/state}
RETINA_MANIFEST=${RETINA_MANIFEST:-/data/manifest.csv}
RETINA_DEVICE=${RETINA_DEVICE:-auto}
# The SuperNode's loopback ClientApp port: a free one unless RETINA_CLIENTAPP_PORT names it.
port_args=""
[ -n "${RETINA_CLIENTAPP_PORT:-}" ] && port_args="--port $RETINA_CLIENTAPP_PORT"

command=${1:-join}
[ $# -gt 0 ] && shift
case "$command" in
  join)
    : "${RETINA_SUPERLINK:?set RETINA_SUPERLINK to the coordinator's HOST:PORT}"
    : "${RETINA_SITE:?set RETINA_SITE to the name the coordinator registered}"
    exec retina-client --manifest "$RETINA_MANIFEST" --server "$RETINA_SUPERLINK" --name "$RETINA_SITE" \
      --state-dir "$RETINA_STATE" --auth-key "$RETINA_KEYS/site.key" --root-certificates "$RETINA_KEYS/ca.crt" \
      --device "$RETINA_DEVICE" $port_args "$@" ;;
  check)
    exec retina-client check --manifest "$RETINA_MANIFEST" --device "$RETINA_DEVICE" "$@" ;;
  *)
    echo "site.sh: unknown command '$command' (join, check)" >&2
    exit 2 ;;
esac
