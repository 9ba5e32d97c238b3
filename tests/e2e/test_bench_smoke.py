"""Smoke run of the benchmarks (bench/run --smoke): tiny N, one round, every section.

It asserts that the bench runs against the test cluster and prints a figure for every contender; it asserts no speed
(the figures of a loaded CI machine mean nothing). The one timing it checks is the live-traffic section's reference:
`psql -1 -f` queues the application behind its ALTER TABLE for as long as the open transaction lasts, whatever the
machine. The full run is `bench/run` (docs/benchmarks.md). The smoke runs once per module (a few minutes) and each
test reads its output.
"""
import os
import re
import subprocess

import pytest

from conftest import PGDEPLOY_BIN, SOURCE_DIR

BENCH = os.path.join(SOURCE_DIR, "bench", "run")


def run_smoke(tmp_path):
    results = tmp_path / "smoke.md"
    env = dict(os.environ)
    env["PGDEPLOY_BIN"] = PGDEPLOY_BIN
    env.setdefault("PGDEPLOY_BUILD_DIR", os.path.dirname(PGDEPLOY_BIN))
    env["BENCH_BUILD_DIR"] = env["PGDEPLOY_BUILD_DIR"]
    proc = subprocess.run([BENCH, "--smoke", "--no-build", "--results", str(results)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    return proc, results


def table_row(text, label):
    """The cells of the first markdown table row whose first cell starts with label."""
    for line in text.splitlines():
        if line.startswith("| ") and line[2:].startswith(label):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"no table row for {label!r} in the bench output:\n{text}")


NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def assert_measured(text, label, cells=(2, 3)):
    row = table_row(text, label)
    assert not any("not measured" in c for c in row), f"{label}: {row}"
    for i in cells:
        assert NUMBER.match(row[i]), f"{label}: cell {i} is not a figure: {row}"
    return row


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke(tmp_path_factory.mktemp("bench-smoke"))


def test_bench_smoke_prints_every_contender(smoke):
    proc, results = smoke
    out = proc.stdout
    assert proc.returncode == 0, f"bench/run --smoke exited {proc.returncode}\n{proc.stderr[-4000:]}\n{out}"

    # section 1: every contender of the apply table has runs, best and median
    for label in ("floor: one simple-query message", "floor: psql -1 -f", "floor: one DO block of EXECUTEs",
                  "SELECT deploy.up() / deploy.rollback()", "pgdeploy up --dir (load + apply)",
                  "sqitch deploy / revert"):
        assert_measured(out, label)
    # the goals table has a ratio for deploy.up(), pgdeploy and the revert
    goals = table_row(out, "5 |")
    assert all(re.match(r"^[0-9.]+x", c) for c in goals[1:5]), goals

    # section 2: one more migration on the ledger, and pgbench for both functions
    assert_measured(out, "SELECT deploy.up(target => next)")
    assert re.search(r"deploy\.up\(\) costs \*\*-?[0-9.]+ ms\*\* more than the floor", out), out
    for label in ("`SELECT deploy.current_version()`", "`SELECT deploy.status()`"):
        assert_measured(out, label, cells=(2, 4))

    # section 3: the watcher's cycle, its steady state (bare, with state file and metrics, libcurl's floor), and one
    # rollback
    assert_measured(out, "20 |", cells=(1, 2, 3))
    for label in ("`pgdeploy watch` (no state_file", "`pgdeploy watch` with state_file", "libcurl alone"):
        assert_measured(out, label, cells=(1, 2, 3))
    assert_measured(out, "1 |", cells=(1, 2, 3, 4))

    # the results file holds the same tables
    saved = results.read_text()
    assert "## 1. Applying and reverting" in saved and "## 3. The watcher" in saved
    assert "not measured" not in saved, saved


def live_traffic_section(out):
    head = "## 5. Live traffic"
    assert head in out, f"no live-traffic section in the bench output:\n{out[-3000:]}"
    return out.split(head, 1)[1]


def test_bench_smoke_live_traffic(smoke):
    proc, results = smoke
    assert proc.returncode == 0, f"bench/run --smoke exited {proc.returncode}\n{proc.stderr[-4000:]}"
    section = live_traffic_section(proc.stdout)
    blocker_s = float(re.search(r"SELECT pg_sleep\(([0-9.]+)\); COMMIT;", section).group(1))

    # every contender deployed and rolled back the release, and the app's figures are printed for both phases
    for label in ("psql -1 -f per file", "sqitch deploy / revert", "SELECT deploy.up() / deploy.rollback()",
                  "pgdeploy up --dir / rollback"):
        for phase in ("deploy", "rollback"):
            row = table_row(section, f"{label} | {phase} |")
            assert row[2] == "ok", f"{label} {phase}: {row}"
            for i in (3, 6, 7, 8):   # took s, p50, p99, max
                assert NUMBER.match(row[i]), f"{label} {phase}: cell {i} is not a figure: {row}"
            assert re.match(r"^[+-][0-9]+\.[0-9]+$", row[4]), row   # completion after the open transaction
            assert re.match(r"^[0-9]+", row[9]), row                 # failed app transactions

    # the reference: psql -1 -f stalls the app for about as long as the transaction stays open
    for phase in ("deploy", "rollback"):
        row = table_row(section, f"psql -1 -f per file | {phase} |")
        assert float(row[8].replace(",", "")) >= 0.8 * blocker_s * 1000, row

    # the goals are judged (PASS or FAIL, whichever it is on this machine) against the lock timeout the server reports
    assert re.search(r"pg_deploy\.lock_timeout: (n/a|[0-9,]+ ms)", section), section
    assert re.search(r"\| \*\*(PASS|FAIL)\*\* \|", section), section
    assert "Picture:" in section
    csv = str(results)[:-len(".md")] + "-live-traffic.csv"
    assert os.path.exists(csv) and os.path.getsize(csv) > 100, csv
