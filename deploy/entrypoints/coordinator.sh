#!/bin/sh
# The coordinator image's entrypoint (also what tests/e2e/test_deployment.py runs on loopback).
#   coordinator.sh superlink                 the SuperLink: TLS, registered site keys only
#   coordinator.sh add-site NAME             make NAME's key bundle in $RETINA_PKI/sites/NAME and register it
#   coordinator.sh run [--detach] [HYDRA OVERRIDES]     launch a federated run (configs from $RETINA_CONFIG_DIR)
#   coordinator.sh resume [--detach] RUN_DIR [OVERRIDES]  continue a run from its last complete round
#   coordinator.sh stop RUN_DIR              stop the run that owns RUN_DIR (after a detach or a lost terminal)
#   coordinator.sh status [--run-dir DIR]    sites online, runs, a run's last round
#   coordinator.sh pki-init HOST [HOST ...]  the federation's CA and the SuperLink's certificate
#   coordinator.sh report RUN_DIR | export RUN_DIR --out DIR
set -eu
RETINA_PKI=${RETINA_PKI:-/pki}
RETINA_STATE=${RETINA_STATE:-/state}
RETINA_HOST=${RETINA_HOST:-0.0.0.0}
RETINA_PORT=${RETINA_PORT:-9092}
RETINA_SUPERLINK=${RETINA_SUPERLINK:-localhost:$RETINA_PORT}
RETINA_CONFIG_DIR=${RETINA_CONFIG_DIR:-/config}
RETINA_RUNS=${RETINA_RUNS:-/runs}

command=${1:-superlink}
[ $# -gt 0 ] && shift
# Leading --flags of run/resume (--detach) go before the overrides, where retina-server expects them.
flags=""
if [ "$command" = run ] || [ "$command" = resume ]; then
  while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do flags="$flags $1"; shift; done
fi
case "$command" in
  superlink)
    exec retina-server superlink --state-dir "$RETINA_STATE" --host "$RETINA_HOST" --port "$RETINA_PORT" \
      --certs-dir "$RETINA_PKI" ;;
  pki-init)
    hosts=""
    for host in "$@"; do hosts="$hosts --host $host"; done
    # shellcheck disable=SC2086 # one --host per word
    exec retina-server pki init --dir "$RETINA_PKI" $hosts ;;
  add-site)
    exec retina-server pki add-site "$1" --dir "$RETINA_PKI" --superlink "$RETINA_SUPERLINK" ;;
  run)
    # shellcheck disable=SC2086 # one word per flag
    exec retina-server run --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" $flags \
      --config-dir "$RETINA_CONFIG_DIR" "run_dir=$RETINA_RUNS/${RETINA_RUN_NAME:-run}" "$@" ;;
  resume)
    run_dir=$1
    shift
    # shellcheck disable=SC2086 # one word per flag
    exec retina-server run --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" $flags \
      --resume "$run_dir" "$@" ;;
  stop)
    exec retina-server stop --run-dir "$1" --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" ;;
  status)
    exec retina-server status --superlink "$RETINA_SUPERLINK" --root-certificates "$RETINA_PKI/ca.crt" "$@" ;;
  report)
    exec retina-report "$@" ;;
  export)
    exec retina-export "$@" ;;
  *)
    echo "coordinator.sh: unknown command '$command' (superlink, pki-init, add-site, run, resume, stop, status, report, export)" >&2
    exit 2 ;;
esac
