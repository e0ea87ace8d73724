# Shared by the e2e scripts that need PostgreSQL (sourced, not run). The script sets `work` (its scratch
# folder) first.

own_services=""
database=""

# fresh_database NAME: a new database NAME in the tests' PostgreSQL (STRATA_TEST_POSTGRES, else one that
# tools/services starts under $work/services); sets admin_url and database_url (postgresql://…/NAME).
fresh_database() {
  if [ -z "${STRATA_TEST_POSTGRES:-}" ]; then
    own_services=1
    # Run as root, tools/services runs PostgreSQL as its own user, which must reach its folder under
    # $work (mktemp -d makes it private).
    chmod go+x "$work"
    tools/services start "$work/services" >/dev/null
    source "$work/services/env"
  fi
  admin_url=${STRATA_TEST_POSTGRES/#postgres:/postgresql:}
  psql "$admin_url" -q -c "CREATE DATABASE $1" >/dev/null
  database=$1
  database_url="${admin_url%/*}/$1"
}

# drop_database: drops the database fresh_database made and stops the services it started (for the
# script's EXIT trap; never fails).
drop_database() {
  if [ -n "$database" ]; then psql "$admin_url" -q -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true; fi
  if [ -n "$own_services" ]; then tools/services stop "$work/services" >/dev/null 2>&1 || true; fi
}
