#!/bin/sh
# Creates bench/.venv-baselines with the baseline apps' dependencies (not pushsvc's).
# Nchan: apt-get install -y nginx libnginx-mod-nchan
set -e
here=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$here/.venv-baselines"
"$here/.venv-baselines/bin/pip" install -q flask flask-sse gunicorn gevent sse-starlette uvicorn starlette 'redis[hiredis]>=5' uvloop httptools packaging
