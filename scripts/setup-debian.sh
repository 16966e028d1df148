#!/bin/sh
# Install what whisperd's demo and tests need on Debian 12, and make sure RabbitMQ runs.
# Idempotent: installs only missing packages, starts the broker only if it is not answering.
set -eu
PACKAGES="rabbitmq-server ffmpeg amqp-tools python3-venv python3-dev"
[ "$(id -u)" = 0 ] && SUDO="" || SUDO="sudo"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if ! $SUDO rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
    echo "setup: starting rabbitmq-server"
    $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
    $SUDO rabbitmqctl -q await_startup --timeout 120
fi
echo "setup: system packages present, RabbitMQ running"
