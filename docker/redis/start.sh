#!/bin/sh
# Entry point of the `redis` service (redis:7.4-alpine): renders the ACL file from the
# template docker/redis/users.acl and the passwords in the environment, then starts Redis
# through the image's own entrypoint (which drops root for the `redis` user).
#
# Rendering: comment and blank lines are dropped, runs of blanks squeezed (Redis's ACL file
# format has no comments and splits on single spaces), and every `>${NAME}` is replaced by
# `#<hex SHA-256 of $NAME>`, a password hash in Redis's own notation. A missing variable
# stops the container.
#
#   ESS_REDIS_ACL_TEMPLATE  the template (default /etc/ess/redis/users.acl)
#   ESS_REDIS_ACL_FILE      the rendered file (default /tmp/ess-users.acl, mode 0600)
#   start.sh --render-only  render and exit (tests/policystore/test_redis_acl.py)
#   start.sh [ARGS...]      render, then redis-server --aclfile FILE (no persistence) ARGS
set -eu
# The single quotes around ${...} below are literal on purpose (placeholders, not expansions).
# shellcheck disable=SC2016

template=${ESS_REDIS_ACL_TEMPLATE:-/etc/ess/redis/users.acl}
out=${ESS_REDIS_ACL_FILE:-/tmp/ess-users.acl}

fail() {
    echo "ess-redis: ERROR: $*" >&2
    exit 1
}

umask 077
rendered=$(mktemp "$out.XXXXXX")
trap 'rm -f "$rendered"' EXIT
sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -e 's/[[:space:]][[:space:]]*/ /g' \
    -e 's/^ //' -e 's/ $//' "$template" >"$rendered"

for name in $(grep -o '>\${[A-Z][A-Z0-9_]*}' "$rendered" | sed -e 's/^>\${//' -e 's/}$//' | sort -u); do
    eval "value=\${$name-}"
    [ -n "$value" ] || fail "$name is not set: define it in docker/.env (see docker/.env.example)"
    # Passwords also travel in redis:// URLs (ESS_REDIS_URL): keep them URL-safe.
    case "$value" in
    *[!A-Za-z0-9._~-]*) fail "$name may only contain letters, digits and . _ ~ - (e.g. openssl rand -hex 24)" ;;
    change-me*) echo "ess-redis: WARNING: $name still holds the placeholder of docker/.env.example: change it" >&2 ;;
    esac
    hash=$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)
    sed -i -e "s/>\${$name}/#$hash/g" "$rendered"
done
if grep -q '\${' "$rendered"; then
    fail "unresolved placeholder in $template: $(grep -o '\${[^}]*}' "$rendered" | head -n 1)"
fi

mv "$rendered" "$out"
trap - EXIT
# Redis runs as `redis` (the image's entrypoint drops root): let it read the file.
if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
    chown redis "$out"
fi

if [ "${1-}" = --render-only ]; then
    exit 0
fi
# No persistence on purpose: the projector re-writes the record every second, and a gate that
# finds no record after a Redis restart fails closed until it does.
exec docker-entrypoint.sh redis-server --save '' --appendonly no --aclfile "$out" "$@"
