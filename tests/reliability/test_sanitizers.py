"""ASan + UBSan on pgdeploy (tests/reliability/sanitizers.sh).

The full run builds a second tree (build-asan): longer than the quick mode's budget on two shared cores, so it runs
in the long mode only (PGDEPLOY_LONG=1). The quick mode checks what it can afford: the sanitizer build configures
with the flags it promises (a broken PGDEPLOY_SANITIZE option would otherwise go unnoticed until the long run).
"""
import json
import os
import subprocess

from conftest import LONG, SOURCE_DIR, stats

SCRIPT = os.path.join(SOURCE_DIR, "tests", "reliability", "sanitizers.sh")


def test_sanitizer_build_configures_with_asan_and_ubsan(tmp_path):
    build = tmp_path / "build-asan-check"
    proc = subprocess.run(["cmake", "-S", SOURCE_DIR, "-B", str(build), "-DPGDEPLOY_SANITIZE=ON"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(build / "compile_commands.json") as f:
        commands = json.load(f)
    ours = [c for c in commands if "/watcher/src/" in c["file"]]
    assert ours, "no pgdeploy source in the sanitizer build"
    for c in ours:
        assert "-fsanitize=address,undefined" in c["command"], c["command"]
        assert "-fno-sanitize-recover=undefined" in c["command"], c["command"]
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


if LONG:
    def test_sanitizers_script_passes():
        env = dict(os.environ)
        env.setdefault("SANITIZE_BUILD_DIR", os.path.join(SOURCE_DIR, "build-asan"))
        proc = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=3600, env=env)
        stats.add("sanitizers.runs")
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
        assert "sanitizers: all passed" in proc.stdout
