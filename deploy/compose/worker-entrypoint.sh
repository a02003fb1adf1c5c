#!/bin/sh
# Starts a compose worker: on its first start the rack enrols its key with
# the single-use token the enrollment-tokens service wrote; later starts find
# the key enrolled (<key_file>.enrolled) and need no token.
set -eu
token_file="/var/lib/cardfleet/enrollment/${CARDFLEET__WORKER__RACK_ID}"
if [ ! -e "${CARDFLEET__WORKER__KEY_FILE}.enrolled" ] && [ -r "$token_file" ]; then
  CARDFLEET__WORKER__ENROLLMENT_TOKEN="$(cat "$token_file")"
  export CARDFLEET__WORKER__ENROLLMENT_TOKEN
fi
[ "$#" -gt 0 ] || set -- run
exec cardfleet-worker "$@"
