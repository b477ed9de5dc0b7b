#!/bin/sh
# As the official image: `redis-server ARGS` listens on every interface of the container.
set -eu
case "${1:-redis-server}" in -*) set -- redis-server "$@" ;; esac
[ $# -gt 0 ] || set -- redis-server
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
