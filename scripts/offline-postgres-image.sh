#!/usr/bin/env bash
# offline-postgres-image.sh NAME: make a PostgreSQL server image from this
# machine's own Debian PostgreSQL install, for machines that cannot pull
# postgres from Docker Hub. It takes the subset of the official image's
# interface the demo uses: POSTGRES_PASSWORD, POSTGRES_USER (postgres),
# POSTGRES_DB, PGDATA (/var/lib/postgresql/data), port 5432, and carries
# pg_dump, pg_restore, psql and pg_isready for hooks and health checks.
set -euo pipefail
name=${1:?usage: offline-postgres-image.sh IMAGE_NAME}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "no PostgreSQL server installed here: apt-get install postgresql" >&2; exit 1; }
ver=$(basename "$(dirname "$bin")")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

copy() { # copy PATH... keeping their paths, following links to their targets
  for f in "$@"; do
    mkdir -p "$stage$(dirname "$f")"
    cp -aL "$f" "$stage$f"
  done
}
copy_tree() { mkdir -p "$stage$(dirname "$1")"; cp -a "$1" "$stage$1"; }

copy_tree "/usr/lib/postgresql/$ver"
# JIT pulls in LLVM (100+ MB) for nothing a demo needs; without it the
# server simply does not JIT.
rm -rf "$stage/usr/lib/postgresql/$ver"/lib/llvmjit* "$stage/usr/lib/postgresql/$ver"/lib/bitcode
copy_tree "/usr/share/postgresql/$ver"
copy_tree /usr/share/zoneinfo
sh_bin=$(readlink -f /bin/sh)
# setpriv and chown let the entrypoint start as root and hand the server to
# the postgres user, as the official image does with gosu: commands run in
# the image (a backup job) run as root, like there.
extra="$(readlink -f "$(command -v setpriv)") $(readlink -f "$(command -v chown)")"
copy "$sh_bin" $extra
# Every shared object the server, its tools and its modules load.
for f in "$sh_bin" $extra "$bin"/* "$stage/usr/lib/postgresql/$ver"/lib/*.so; do
  ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true
done | sort -u | while read -r lib; do copy "$lib"; done

mkdir -p "$stage/bin" "$stage/etc" "$stage/tmp" "$stage/var/run/postgresql" "$stage/var/lib/postgresql/data" "$stage/docker-entrypoint-initdb.d"
chmod 1777 "$stage/tmp"
ln -sf "$sh_bin" "$stage/bin/sh"
for t in postgres initdb pg_ctl pg_dump pg_restore psql pg_isready; do
  [ -e "$bin/$t" ] && ln -sf "$bin/$t" "$stage/bin/$t"
done
for f in $extra; do ln -sf "$f" "$stage/bin/$(basename "$f")"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
echo 'postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh' >>"$stage/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$stage/etc/group"
chown -R 999:999 "$stage/var/lib/postgresql" "$stage/var/run/postgresql"

cat >"$stage/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Initialise the cluster on first start, then run the server. Only shell
# built-ins and PostgreSQL's own programs: the image has nothing else.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
if [ "${1:-}" != "--as-postgres" ]; then # started as root
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  exec setpriv --reuid=999 --regid=999 --clear-groups "$0" --as-postgres "$@"
fi
[ "${1:-}" = "--as-postgres" ] && shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=/tmp/.pwfile
  printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" >"$pw"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" -A scram-sha-256 -E UTF8 --locale=C >/dev/null
  : >"$pw"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != "$POSTGRES_USER" ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "initialised $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
chmod 755 "$stage/docker-entrypoint.sh"

tar -C "$stage" -cf - . | docker import \
  -c 'ENV PATH=/bin' -c 'ENV PGDATA=/var/lib/postgresql/data' -c 'ENV TZ=UTC' \
  -c 'EXPOSE 5432' -c 'VOLUME /var/lib/postgresql/data' \
  -c 'ENTRYPOINT ["/docker-entrypoint.sh"]' \
  - "$name" >/dev/null
echo "$name"
