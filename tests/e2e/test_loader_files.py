"""The loader and files it must not read: a migration file, or a directory such as Sqitch's deploy/, that is a
symlink leading out of the migration directory is refused (exit 2, nothing registered) unless --follow-symlinks asks
for it; links inside the directory keep working. Migration names longer than the extension stores are refused
before connecting.
"""
import json
import os

from conftest import free_port, run_pgdeploy


def outside_file(tmp_path, content="CREATE TABLE public.from_outside (id int)"):
    d = tmp_path / "elsewhere"
    d.mkdir(exist_ok=True)
    f = d / "shared.sql"
    f.write_text(content)
    return f


def test_a_symlink_out_of_the_directory_is_refused_and_nothing_is_registered(pg, write_migrations, tmp_path):
    d = write_migrations({"0001_init.up.sql": "CREATE TABLE public.init_t (id int)"})
    os.symlink(outside_file(tmp_path), os.path.join(d, "0002_shared.up.sql"))
    for command in (["load", d], ["up", "--dir", d]):
        rc, out, err = run_pgdeploy(*command, "--dsn", pg.dsn, "--json")
        assert rc == 2, err
        doc = json.loads(out)
        assert doc["exit_code"] == 2
        assert "0002_shared.up.sql: is a symlink to " in doc["error"]["message"]
        assert "outside the migration directory" in doc["error"]["message"]
        assert "--follow-symlinks" in doc["error"]["message"]
    assert pg.scalar("SELECT count(*) FROM deploy.migrations") == 0
    assert pg.scalar("SELECT to_regclass('public.init_t')") is None

    rc, out, err = run_pgdeploy("up", "--dir", d, "--follow-symlinks", "--dsn", pg.dsn, "--json")
    assert rc == 0, err
    assert [m["version"] for m in json.loads(out)["applied"]] == ["0001", "0002"]
    assert pg.scalar("SELECT to_regclass('public.from_outside') IS NOT NULL")


def test_a_symlinked_sqitch_deploy_directory_is_refused_unless_followed(pg, tmp_path):
    d = tmp_path / "sqitch"
    d.mkdir()
    (d / "sqitch.plan").write_text("%project=p\nshared 2020-01-01T00:00:00Z A <a@example.com>\n")
    outside = tmp_path / "other-project"
    (outside / "deploy").mkdir(parents=True)
    (outside / "deploy" / "shared.sql").write_text("CREATE TABLE public.sq_t (id int)")
    os.symlink(outside / "deploy", d / "deploy")
    rc, _, err = run_pgdeploy("load", d, "--dsn", pg.dsn)
    assert rc == 2 and "/deploy/shared.sql: is a symlink to " in err, err
    rc, _, err = run_pgdeploy("load", d, "--follow-symlinks", "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT name FROM deploy.migrations") == "shared"


def test_links_inside_the_directory_and_to_the_directory_keep_working(pg, write_migrations, tmp_path):
    d = write_migrations({"shared/0001.sql": "CREATE TABLE public.in_t (id int)"})
    os.symlink(os.path.join(d, "shared", "0001.sql"), os.path.join(d, "0001_in.up.sql"))
    current = tmp_path / "current"
    os.symlink(d, current)  # a deploy tool's "current" link to the release
    rc, _, err = run_pgdeploy("up", "--dir", current, "--dsn", pg.dsn)
    assert rc == 0, err
    assert pg.scalar("SELECT to_regclass('public.in_t') IS NOT NULL")


def test_follow_symlinks_without_dir_is_a_usage_error():
    rc, _, err = run_pgdeploy("up", "--follow-symlinks", "--dsn", f"host=127.0.0.1 port={free_port()}")
    assert rc == 2 and "--follow-symlinks needs --dir" in err


def test_an_over_long_migration_name_is_refused_before_connecting(write_migrations):
    d = write_migrations({"0001_" + "n" * 201 + ".up.sql": "SELECT 1"})
    rc, _, err = run_pgdeploy("load", d, "--dsn", f"host=127.0.0.1 port={free_port()} connect_timeout=2")
    assert rc == 2, err  # 2, not 3: the files are refused before any connection is tried
    assert "the migration name is 201 characters long; at most 200 are allowed" in err
