"""The CLI's side of the security issue, performed for real:

- over-long --reason / --app-version are usage errors (exit 2) before anything is sent: the limits are the
  extension's (reason 1000 characters, app version 200), so a 200 kB reason never reaches the ledger or a hook;
- passwords never reach stdout or stderr: a DSN libpq cannot parse (its message quotes the DSN), a connection
  failure, and a server error message that carries the password verbatim or in a conninfo.
"""
import json
import os
import uuid

import pytest

from conftest import free_port, run_pgdeploy

CLOSED = f"host=127.0.0.1 port={free_port()} connect_timeout=2"

TOO_LONG = [
    (["rollback", "--reason", "r" * 1001], "--reason is 1001 characters long; at most 1000 are allowed"),
    (["rollback", "--reason", "r" * 100 * 1024], "--reason is 102400 characters long"),  # argv caps one at 128 KiB
    (["markers", "request", "--reason", "r" * 1001], "--reason is 1001 characters long"),
    (["up", "--app-version", "v" * 201], "--app-version is 201 characters long; at most 200 are allowed"),
    (["down", "--app-version", "v" * 201], "--app-version is 201 characters long"),
    (["baseline", "--through", "0001", "--app-version", "v" * 201], "--app-version is 201 characters long"),
]


@pytest.mark.parametrize("args,message", TOO_LONG, ids=[" ".join(a[:2]) for a, _ in TOO_LONG])
def test_over_long_text_options_exit_2_before_connecting(args, message):
    rc, out, err = run_pgdeploy(*args, "--dsn", CLOSED, "--json")
    assert rc == 2, err  # 2, not 3: refused before any connection is tried
    doc = json.loads(out)
    assert doc["exit_code"] == 2 and message in doc["error"]["message"]


def test_limits_count_characters_not_bytes(pg):
    pg.sql("SELECT deploy.register('0001', 'a', 'CREATE TABLE public.lim_t (id int)', 'DROP TABLE public.lim_t')")
    assert pg.scalar("SELECT deploy.up(app_version => %s)", ("é" * 200,))["ok"]
    reason = "€" * 1000  # 1000 characters, 3000 bytes
    rc, out, err = run_pgdeploy("markers", "request", "--reason", reason, "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    assert pg.scalar("SELECT reason FROM deploy.rollback_markers WHERE id = %s", (json.loads(out)["marker_id"],)) \
        == reason


def secret_leaks(text, *secrets):
    return [s for s in secrets if s in text]


@pytest.mark.parametrize("dsn_template", [
    # libpq cannot parse these and quotes the piece it stumbled on, which is (part of) the password:
    "postgresql://deployer:{pw}%00@db.invalid/app",             # "forbidden value %00 in percent-encoded value: ..."
    "host=db.invalid password=first-half {pw}",                  # unquoted space: 'missing "=" after "..."'
    # these parse, and the connection fails:
    "host=127.0.0.1 port={port} password={pw} connect_timeout=2",
    "postgresql://deployer:{pw}@127.0.0.1:{port}/app?connect_timeout=2",
])
def test_a_password_in_a_bad_or_unreachable_dsn_never_reaches_the_output(dsn_template):
    pw = "pw-" + uuid.uuid4().hex
    dsn = dsn_template.format(pw=pw, port=free_port())
    for extra in ([], ["--json"], ["--log-format", "json", "-v"]):
        rc, out, err = run_pgdeploy("status", "--dsn", dsn, *extra)
        assert rc == 3, (dsn, err)
        assert secret_leaks(out + err, pw, pw[3:]) == [], (dsn, out, err)
        assert "connection string" in err or "cannot connect" in err


def test_a_server_message_with_the_password_is_scrubbed_on_stdout_and_stderr(pg, write_migrations):
    secret = os.environ.get("PGPASSWORD") or "pgdeploy-e2e-" + uuid.uuid4().hex
    d = write_migrations({
        "0001_leaky.up.sql":
            "DO $$ BEGIN RAISE EXCEPTION 'cannot reach %', "
            f"'host=replica password=conninfo-pw-123 user=x; also {secret}'; END $$",
    })
    env = {"PGPASSWORD": secret}
    for extra in ([], ["--json"]):  # the human lines (FAILED at ...: message) and the JSON document
        rc, out, err = run_pgdeploy("up", "--dir", d, "--dsn", pg.dsn, *extra, env=env)
        assert rc == 1, err
        assert secret_leaks(out + err, secret, "conninfo-pw-123") == [], out + err
        assert "password=***" in out + err
