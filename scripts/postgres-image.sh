#!/usr/bin/env bash
# Builds the PostgreSQL image the testcontainers tests use where no registry can be reached:
# a Debian root (debootstrap, from the Debian mirror apt is configured with) with PostgreSQL's
# server package, imported into the local Docker engine. Does nothing when the image exists.
#
#   scripts/postgres-image.sh [IMAGE]      # default: $OUTBOX_TEST_IMAGE or outbox-local/postgres:15
#
# Needs root, debootstrap and a running Docker engine.
set -euo pipefail

IMAGE="${1:-${OUTBOX_TEST_IMAGE:-outbox-local/postgres:15}}"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "image $IMAGE is there"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }

# The mirror and release this machine's apt uses.
MIRROR="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SUITE="$(. /etc/os-release && echo "$VERSION_CODENAME")"
VERSION="${IMAGE##*:}"
case "$VERSION" in
    [0-9]*) PACKAGE="postgresql-$VERSION" ;;
    *) PACKAGE="postgresql" ;;
esac

ROOT="$(mktemp -d /var/tmp/outbox-image.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "building $IMAGE: debootstrap $SUITE with $PACKAGE from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGE" "$SUITE" "$ROOT" "$MIRROR" >/dev/null

# The entry point: a trust-auth cluster listening on every address, then PostgreSQL in the
# foreground with the container's arguments (`-c fsync=off`, as the official image takes them).
cat > "$ROOT/entry" <<'ENTRY'
#!/bin/sh
set -e
BIN="$(ls -d /usr/lib/postgresql/*/bin | head -n 1)"
DATA=/var/lib/postgresql/data
if [ ! -s "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA" /var/run/postgresql
    chown -R postgres:postgres "$DATA" /var/run/postgresql
    runuser -u postgres -- "$BIN/initdb" -D "$DATA" --auth=trust -U postgres >/dev/null
    echo "listen_addresses = '*'" >> "$DATA/postgresql.conf"
    echo "host all all 0.0.0.0/0 trust" >> "$DATA/pg_hba.conf"
    echo "host all all ::/0 trust" >> "$DATA/pg_hba.conf"
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$DATA" "$@"
ENTRY
chmod +x "$ROOT/entry"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"*

tar -C "$ROOT" -c . | docker import -c 'ENTRYPOINT ["/entry"]' -c 'EXPOSE 5432' - "$IMAGE" >/dev/null
echo "image $IMAGE built"
