#!/bin/sh
# Install what whisperd's demo and tests need on Debian 12, and make sure RabbitMQ runs.
# Idempotent: installs only missing packages, starts the broker only if it is not answering.
set -eu
PACKAGES="rabbitmq-server ffmpeg amqp-tools python3-venv python3-dev iproute2"
[ "$(id -u)" = 0 ] && SUDO="" || SUDO="sudo"
sh "$(dirname "$0")/apt-ensure.sh" $PACKAGES
if ! $SUDO rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; then
    echo "setup: starting rabbitmq-server"
    $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
    $SUDO rabbitmqctl -q await_startup --timeout 120
fi
echo "setup: system packages present, RabbitMQ running"
