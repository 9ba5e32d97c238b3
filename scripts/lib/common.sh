# scripts/lib/common.sh — helpers shared by scripts/test and scripts/demo (sourced, not run).

# use_utf8_locale: a UTF-8 locale that glibc always has (no locales package needed), so that a throwaway cluster is
# created UTF8 rather than SQL_ASCII when the caller's environment (CI, a chroot, `env -i`) sets no locale, and so that
# messages are in English whatever the machine's language.
use_utf8_locale() {
  export LANG=C.UTF-8 LC_ALL=C.UTF-8
}

# use_python_with_pytest BUILD_DIR: the suites run `python3 -m pytest`. When the first python3 in PATH (pyenv, a
# virtualenv) lacks pytest or psycopg2, put Debian's python3, for which scripts/setup installed them, in front.
use_python_with_pytest() {
  local dir=$1/debian-python
  if ! python3 -c 'import pytest, psycopg2' >/dev/null 2>&1; then
    mkdir -p "$dir"
    ln -sf /usr/bin/python3 "$dir/python3"
    export PATH="$(cd "$dir" && pwd):$PATH"
    echo "note: using /usr/bin/python3 (the python3 in PATH lacks pytest or psycopg2)"
  fi
}

# wait_for_regress_cluster: pg_virtualenv, run as root, always names its cluster 15/regress, so two runs on one
# machine cannot overlap. Wait (up to 10 minutes) for another run to finish rather than fail at once.
wait_for_regress_cluster() {
  local waited=0
  while [ -d /etc/postgresql/15/regress ]; do
    if [ $waited -ge 600 ]; then
      echo "cluster 15/regress still exists after 10 minutes: another pg_virtualenv run, or a stale one" >&2
      echo "(remove a stale one with: pg_dropcluster --stop 15 regress)" >&2
      return 2
    fi
    [ $waited = 0 ] && echo "note: another pg_virtualenv run holds cluster 15/regress; waiting for it to finish"
    sleep 5
    waited=$((waited + 5))
  done
}
