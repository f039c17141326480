#!/bin/sh
# Start sshd in the foreground so that horovodrun on an Airflow worker (or on another trainer)
# can start ranks here. Host keys are made per container at start, never stored in the image; the
# authorized key comes from the deployment (compose: the ssh-keygen job's volume).
set -eu
KEYS=${DLPIPE_SSH_DIR:-/opt/dlpipe/ssh}
if [ ! -r "$KEYS/authorized_keys" ]; then
  echo "trainer: $KEYS/authorized_keys is missing: mount the deployment's public key there" >&2
  exit 1
fi
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
if [ "$#" -gt 0 ]; then
  /usr/sbin/sshd -e
  exec "$@"
fi
exec /usr/sbin/sshd -D -e
