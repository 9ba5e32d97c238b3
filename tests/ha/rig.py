"""The production-topology rig: one etcd, three Patroni-managed PostgreSQL 15 nodes and PgBouncer, all on loopback
ports picked at start, under one temp dir owned by the postgres OS user (removed on close, also after a failure).

- ``HaCluster.start()`` brings it up (etcd, node1 bootstraps, node2/node3 clone it, PgBouncer follows the primary);
  ``close()`` stops everything and removes the temp dir.
- ``multi_dsn(db)``: ``host=127.0.0.1,127.0.0.1,127.0.0.1 port=p1,p2,p3 target_session_attrs=read-write``;
  ``node_dsn(name, db)``, ``bouncer_dsn(db, session=False)``.
- ``switchover()``, ``hard_failover()`` (SIGKILL of the primary's postmaster, its backends and its Patroni),
  ``rejoin(name)`` (restarts a killed node's Patroni: pg_rewind or a fresh clone), ``wait_healthy()`` (a leader and
  two streaming replicas).
- PgBouncer's ``[databases]`` points at the primary's port; a follower thread polls Patroni's REST API (``/primary``
  on each node) every 0.2 s and, on a change, rewrites the line and sends ``RELOAD`` on the admin console.
  ``pool_mode = transaction``; each database created through ``create_database`` also gets a session-mode alias
  ``<db>_session``.

The PostgreSQL binaries: ``$PGDEPLOY_PG_BIN``, else ``$(pg_config --bindir)`` of ``$PG_CONFIG``, else
/usr/lib/postgresql/15/bin (the extension must be installed into that installation).
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import psycopg2


def pg_bin_dir():
    if os.environ.get("PGDEPLOY_PG_BIN"):
        return os.environ["PGDEPLOY_PG_BIN"]
    if os.environ.get("PG_CONFIG"):
        out = subprocess.run([os.environ["PG_CONFIG"], "--bindir"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    return "/usr/lib/postgresql/15/bin"


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


AS_POSTGRES = os.geteuid() == 0


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if AS_POSTGRES else list(cmd)


def clean_env():
    """The environment for etcd, Patroni and PgBouncer: without the PG* variables of the test run (libpq would
    prefer PGPASSWORD to Patroni's own pgpass file, PGHOST/PGPORT would point its tools at another server)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def http_status(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception:
        return None, b""


class Node:
    def __init__(self, cluster, name, pg_port, rest_port):
        self.cluster = cluster
        self.name = name
        self.pg_port = pg_port
        self.rest_port = rest_port
        self.dir = os.path.join(cluster.dir, name)
        self.data = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "patroni.yml")
        self.log_path = os.path.join(self.dir, "patroni.log")
        self.proc = None
        self.log = None
        self.rejoined_at = None   # set by HaCluster.rejoin, cleared once it streams

    @property
    def rest(self):
        return f"http://127.0.0.1:{self.rest_port}"

    def write_config(self):
        c = self.cluster
        cfg = {
            "scope": c.scope,
            "namespace": "/pgdeploy-ha/",
            "name": self.name,
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}", "connect_address": f"127.0.0.1:{self.rest_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{c.etcd_client_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": c.ttl, "loop_wait": c.loop_wait, "retry_timeout": c.retry_timeout,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True, "use_slots": True,
                        "parameters": {"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on",
                                       "max_wal_senders": 10, "max_replication_slots": 10,
                                       "wal_keep_size": "128MB", "max_connections": 100,
                                       "max_prepared_transactions": 0, "max_locks_per_transaction": 64,
                                       "max_worker_processes": 8},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "no-sync"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": self.data,
                "bin_dir": c.bin_dir,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": c.password},
                    "replication": {"username": "replicator", "password": c.repl_password},
                    "rewind": {"username": "postgres", "password": c.password},
                },
                "parameters": {"unix_socket_directories": self.dir, "shared_buffers": "32MB",
                               "fsync": "on", "synchronous_commit": "on", "log_min_messages": "warning",
                               "logging_collector": "off"},
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
                "basebackup": [{"checkpoint": "fast"}],
                # a killed primary that cannot be rewound is cloned again instead of staying out
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }
        # JSON is YAML: no PyYAML needed to write the file.
        with open(self.config, "w") as f:
            json.dump(cfg, f, indent=1)
        if AS_POSTGRES:
            shutil.chown(self.config, "postgres", "postgres")
        os.chmod(self.config, 0o600)

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        if AS_POSTGRES:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        self.write_config()
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(as_postgres(["patroni", self.config]), stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=clean_env())

    def patroni_pid(self):
        """The pid of the patroni process itself (runuser's child when we are root)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        if not AS_POSTGRES:
            return self.proc.pid
        for pid in children_of(self.proc.pid):
            return pid
        return None

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def role(self):
        code, body = http_status(self.rest + "/patroni")
        if code is None:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return doc.get("role"), doc.get("state")

    def is_primary(self):
        return http_status(self.rest + "/primary", timeout=0.5)[0] == 200

    def kill_hard(self):
        """SIGKILL Patroni, the postmaster and every backend (a lost machine)."""
        ppid = self.patroni_pid()
        pm = self.postmaster_pid()
        for pid in [p for p in (ppid, self.proc.pid if self.proc else None) if p]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if pm:
            kids = children_of(pm)
            try:
                os.kill(pm, signal.SIGKILL)
            except OSError:
                pass
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except OSError:
                    pass
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pm and pid_alive(pm):
            time.sleep(0.05)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            pid = self.patroni_pid() or self.proc.pid
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_hard()
        pm = self.postmaster_pid()
        if pm:
            subprocess.run(as_postgres([os.path.join(self.cluster.bin_dir, "pg_ctl"), "-D", self.data, "-m",
                                        "immediate", "-w", "stop"]), capture_output=True, timeout=60, env=clean_env())
        if self.log:
            self.log.close()
            self.log = None


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reap_stale_rigs():
    """Stops what a rig left behind when its test process was killed (a ctest timeout sends SIGKILL, no teardown
    runs): every /tmp/pgdeploy-ha-* whose owner process is gone has its processes killed and is removed."""
    base = tempfile.gettempdir()
    for entry in os.listdir(base):
        d = os.path.join(base, entry)
        if not entry.startswith("pgdeploy-ha-") or not os.path.isdir(d):
            continue
        try:
            with open(os.path.join(d, "owner.pid")) as f:
                owner = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        for entry_pid in os.listdir("/proc"):
            if not entry_pid.isdigit():
                continue
            try:
                with open(f"/proc/{entry_pid}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if d in cmd:
                try:
                    os.kill(int(entry_pid), signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.5)
        shutil.rmtree(d, ignore_errors=True)


class HaCluster:
    def __init__(self, ttl=8, loop_wait=1, retry_timeout=3):
        reap_stale_rigs()
        self.bin_dir = pg_bin_dir()
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        self.dir = tempfile.mkdtemp(prefix="pgdeploy-ha-")
        if AS_POSTGRES:
            shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o755)   # PgBouncer's and etcd's dirs inside; data dirs are 0700
        with open(os.path.join(self.dir, "owner.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.scope = "pgdeploy-ha-" + secrets.token_hex(4)
        self.password = "ha-" + secrets.token_hex(8)
        self.repl_password = "repl-" + secrets.token_hex(8)
        ports = free_ports(10)
        self.etcd_client_port, self.etcd_peer_port, self.bouncer_port = ports[0], ports[1], ports[2]
        self.nodes = [Node(self, f"node{i + 1}", ports[3 + 2 * i], ports[4 + 2 * i]) for i in range(3)]
        self.etcd = None
        self.etcd_log = None
        self.bouncer = None
        self.bouncer_target = None
        self.databases = []
        self._follow_stop = threading.Event()
        self._follower = None
        self.leader_changes = []   # (monotonic time, node name)
        self.events = []           # what the rig did, for failure messages

    # ---- life cycle ---------------------------------------------------------------------------------------------

    def start(self, timeout=120):
        t0 = time.monotonic()
        try:
            self._start_etcd()
            self.nodes[0].start()
            self.wait_for(lambda: self.leader() is not None, timeout, "node1 to bootstrap and lead")
            for n in self.nodes[1:]:
                n.start()
            self.wait_healthy(timeout)
            self._start_bouncer()
            self._follower = threading.Thread(target=self._follow, daemon=True)
            self._follower.start()
        except AssertionError as e:
            logs = self.logs_tail(60)   # read before close() removes them: a rig that cannot start says why
            self.close()
            raise AssertionError(f"{e}\n{logs}") from None
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0

    def close(self):
        self._follow_stop.set()
        if self._follower:
            self._follower.join(timeout=5)
        if self.bouncer and self.bouncer.poll() is None:
            self.bouncer.terminate()
            try:
                self.bouncer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.bouncer.kill()
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill_hard()
        if self.etcd and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
        if self.etcd_log:
            self.etcd_log.close()
        if os.environ.get("PGDEPLOY_HA_KEEP"):
            print(f"[ha] kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start_etcd(self):
        d = os.path.join(self.dir, "etcd")
        os.makedirs(d)
        if AS_POSTGRES:
            shutil.chown(d, "postgres", "postgres")
        os.chmod(d, 0o700)
        self.etcd_log = open(os.path.join(self.dir, "etcd.log"), "w")
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_client_port}"
        self.etcd = subprocess.Popen(as_postgres([
            "etcd", "--name", "e1", "--data-dir", d, "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"e1={peer}",
            "--initial-cluster-token", self.scope, "--initial-cluster-state", "new", "--unsafe-no-fsync"]),
            stdout=self.etcd_log, stderr=subprocess.STDOUT, start_new_session=True, env=clean_env())
        self.wait_for(lambda: http_status(client + "/health")[0] == 200, 30, "etcd")

    # ---- PgBouncer ----------------------------------------------------------------------------------------------

    def _bouncer_ini(self, primary_port):
        d = os.path.join(self.dir, "pgbouncer")
        lines = ["[databases]"]
        for db in self.databases:
            lines.append(f"{db}_session = host=127.0.0.1 port={primary_port} dbname={db} pool_mode=session")
        lines.append(f"* = host=127.0.0.1 port={primary_port}")
        lines += ["", "[pgbouncer]", "listen_addr = 127.0.0.1", f"listen_port = {self.bouncer_port}",
                  f"unix_socket_dir = {d}", "auth_type = scram-sha-256", f"auth_file = {d}/userlist.txt",
                  "admin_users = postgres", "pool_mode = transaction", "max_client_conn = 300",
                  "default_pool_size = 12", "server_round_robin = 1", "server_reset_query =",
                  "server_check_delay = 0", "server_connect_timeout = 3", "server_login_retry = 1",
                  "query_wait_timeout = 120", "ignore_startup_parameters = extra_float_digits,options",
                  f"logfile = {d}/pgbouncer.log", f"pidfile = {d}/pgbouncer.pid", ""]
        path = os.path.join(d, "pgbouncer.ini")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines))
        if AS_POSTGRES:
            shutil.chown(tmp, "postgres", "postgres")
        os.replace(tmp, path)
        return path

    def _start_bouncer(self):
        d = os.path.join(self.dir, "pgbouncer")
        os.makedirs(d)
        with open(os.path.join(d, "userlist.txt"), "w") as f:
            f.write(f'"postgres" "{self.password}"\n')
        if AS_POSTGRES:
            shutil.chown(d, "postgres", "postgres")
            shutil.chown(os.path.join(d, "userlist.txt"), "postgres", "postgres")
        os.chmod(os.path.join(d, "userlist.txt"), 0o600)
        primary = self.primary()
        self.bouncer_target = primary.pg_port
        ini = self._bouncer_ini(primary.pg_port)
        self.bouncer = subprocess.Popen(as_postgres(["pgbouncer", "-q", ini]), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True, env=clean_env())
        self.wait_for(lambda: self._bouncer_admin("SHOW VERSION") is not None, 30, "pgbouncer")

    def _bouncer_admin(self, command):
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=self.bouncer_port, dbname="pgbouncer", user="postgres",
                                    password=self.password, connect_timeout=2)
        except psycopg2.Error:
            return None
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(command)
                return cur.fetchall() if cur.description else []
        except psycopg2.Error:
            return None
        finally:
            conn.close()

    def reload_bouncer(self, primary_port):
        self._bouncer_ini(primary_port)
        self.bouncer_target = primary_port
        if self._bouncer_admin("RELOAD") is None:
            os.kill(self.bouncer.pid, signal.SIGHUP) if AS_POSTGRES is False else subprocess.run(
                ["kill", "-HUP", str(self.bouncer.pid)], check=False)

    def _follow(self):
        last = self.bouncer_target
        while not self._follow_stop.wait(0.2):
            p = self.leader()
            if p is None:
                continue
            if p.pg_port != last:
                self.reload_bouncer(p.pg_port)
                last = p.pg_port
                self.leader_changes.append((time.monotonic(), p.name))
                self.events.append(f"{time.strftime('%H:%M:%S')} pgbouncer -> {p.name}")

    # ---- topology -----------------------------------------------------------------------------------------------

    @staticmethod
    def wait_for(fn, timeout, what, interval=0.1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = fn()
            if v:
                return v
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def leader(self):
        """The node whose Patroni says it is the running primary (GET /primary answers 200), or None."""
        for n in self.nodes:
            if n.is_primary():
                return n
        return None

    def primary(self, timeout=60):
        return self.wait_for(self.leader, timeout, "a primary")

    def replicas(self):
        p = self.leader()
        return [n for n in self.nodes if n is not p]

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)

    def streaming_from(self, p):
        """The names of the nodes streaming from primary p, or None when p cannot be asked."""
        try:
            rows = self.sql(self.node_dsn(p.name), "SELECT application_name FROM pg_stat_replication "
                            "WHERE state = 'streaming'")
        except psycopg2.Error:
            return None
        return {r[0] for r in rows}

    def healthy(self):
        p = self.leader()
        streaming = self.streaming_from(p) if p is not None else None
        if streaming is None:
            return False
        return all(n.name in streaming and (n.role() or ("", ""))[0] == "replica" for n in self.nodes if n is not p)

    def wait_healthy(self, timeout=120):
        """A primary and every other node streaming from it (rejoins killed nodes first)."""
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                self.rejoin(n)
        self.wait_for(self.healthy, timeout, "a primary with two streaming replicas", interval=0.2)

    def wait_ready(self, replicas=1, timeout=120):
        """Restarts killed nodes (in the background) and waits for a primary with at least `replicas` streaming
        replicas: what the next failover needs, without waiting for every rejoin. A rejoined node that is still
        not streaming after REJOIN_GRACE seconds (seen: a killed primary left "starting up as a standby" for good)
        is re-cloned with `patronictl reinit`."""
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                self.rejoin(n)

        def ok():
            p = self.leader()
            streaming = self.streaming_from(p) if p is not None else None
            if streaming is None:
                return False
            for n in self.nodes:
                if n.name in streaming:
                    n.rejoined_at = None
                if n is p or n.rejoined_at is None:
                    continue
                if time.monotonic() - n.rejoined_at > self.REJOIN_GRACE:
                    self.reinit(n)
            return len(streaming & {n.name for n in self.nodes}) >= replicas
        self.wait_for(ok, timeout, f"a primary with {replicas} streaming replica(s)", interval=0.2)

    def wait_caught_up(self, timeout=60):
        """Waits until every replica has replayed what the primary has written so far. With asynchronous
        replication Patroni may promote a replica that lags (within maximum_lag_on_failover), and a database created
        just before would then be missing on the new primary: the scenarios fault a primary whose setup every
        replica already has, so that only the deploy's own last commits can be lost, as in production."""
        p = self.primary()
        lsn = self.sql(self.node_dsn(p.name), "SELECT pg_current_wal_lsn()::text")[0][0]

        def replayed():
            for n in self.nodes:
                if n is p:
                    continue
                try:
                    rows = self.sql(self.node_dsn(n.name), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                except psycopg2.Error:
                    return False
                if not rows or rows[0][0] is not True:
                    return False
            return True
        self.wait_for(replayed, timeout, "every replica to replay the primary's WAL", interval=0.1)

    REJOIN_GRACE = 40

    def reinit(self, node):
        try:
            with open(node.log_path) as f:
                tail = "".join(line for line in f.readlines()[-200:]
                               if not any(noise in line for noise in self.LOG_NOISE))[-1500:]
        except OSError:
            tail = ""
        self.events.append(f"{time.strftime('%H:%M:%S')} {node.name} not streaming {self.REJOIN_GRACE} s after its "
                           f"rejoin: patronictl reinit; its log:\n{tail}")
        node.rejoined_at = time.monotonic()
        subprocess.run(as_postgres(["patronictl", "-c", node.config, "reinit", self.scope, node.name, "--force"]),
                       capture_output=True, text=True, timeout=120, env=clean_env())

    def switchover(self):
        """`patronictl switchover` to a replica; returns (old primary, the time the command started)."""
        old = self.primary()
        candidate = next(n for n in self.nodes if n is not old and n.role() == ("replica", "running"))
        t0 = time.monotonic()
        out = subprocess.run(as_postgres(["patronictl", "-c", old.config, "switchover", "--leader", old.name,
                                          "--candidate", candidate.name, "--force"]),
                             capture_output=True, text=True, timeout=90, env=clean_env())
        self.events.append(f"{time.strftime('%H:%M:%S')} switchover {old.name} -> {candidate.name}: rc {out.returncode}")
        assert out.returncode == 0, out.stdout + out.stderr
        return old, t0

    def hard_failover(self):
        """SIGKILL the primary's postmaster, its backends and its Patroni; returns (old primary, time of the kill)."""
        old = self.primary()
        t0 = time.monotonic()
        old.kill_hard()
        self.events.append(f"{time.strftime('%H:%M:%S')} hard failover: killed {old.name}")
        return old, t0

    def wait_new_primary(self, old, timeout=60):
        return self.wait_for(lambda: (lambda p: p if p is not None and p is not old else None)(self.leader()),
                             timeout, f"a new primary other than {old.name}", interval=0.05)

    def rejoin(self, node):
        """Restarts a node's Patroni after a kill (Patroni rewinds it or, when that fails, clones it again)."""
        if node.proc is not None and node.proc.poll() is None:
            return
        if node.log:
            node.log.close()
        node.start()
        node.rejoined_at = time.monotonic()
        self.events.append(f"{time.strftime('%H:%M:%S')} rejoin {node.name}")

    # ---- connections --------------------------------------------------------------------------------------------

    def _auth(self):
        return f"user=postgres password={self.password}"

    def multi_dsn(self, db, attrs="read-write", connect_timeout=2):
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        return (f"host={hosts} port={ports} dbname={db} {self._auth()} target_session_attrs={attrs} "
                f"connect_timeout={connect_timeout}")

    def node_dsn(self, name, db="postgres"):
        return f"host=127.0.0.1 port={self.node(name).pg_port} dbname={db} {self._auth()} connect_timeout=2"

    def bouncer_dsn(self, db, session=False):
        name = f"{db}_session" if session else db
        return f"host=127.0.0.1 port={self.bouncer_port} dbname={name} {self._auth()} connect_timeout=5"

    @staticmethod
    def sql(dsn, query, params=None):
        conn = psycopg2.connect(dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_database(self, name):
        self.sql(self.multi_dsn("postgres"), f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        self.reload_bouncer(self.bouncer_target)

    def drop_database(self, name):
        try:
            self.sql(self.multi_dsn("postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg2.Error:
            pass
        if name in self.databases:
            self.databases.remove(name)

    def wait_replicated(self, timeout=30):
        """Every running replica has replayed the primary's current WAL position."""
        p = self.primary()
        lsn = self.sql(self.node_dsn(p.name), "SELECT pg_current_wal_lsn()")[0][0]

        def caught_up():
            for n in self.nodes:
                if n is p or n.postmaster_pid() is None:
                    continue
                try:
                    r = self.sql(self.node_dsn(n.name), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
                except psycopg2.Error:
                    return False
                if not r[0][0]:
                    return False
            return True
        self.wait_for(caught_up, timeout, "the replicas to replay the primary's WAL")

    def describe(self):
        rows = []
        for n in self.nodes:
            rows.append(f"{n.name} pg={n.pg_port} rest={n.rest_port} role={n.role()}")
        return "; ".join(rows) + f"; pgbouncer={self.bouncer_port} -> {self.bouncer_target}; etcd={self.etcd_client_port}"

    # Patroni's once-a-loop lines, which would push what went wrong out of a log's tail.
    LOG_NOISE = ("no action", "Lock owner", "not healthy enough for leader race", "bootstrap in progress")

    def logs_tail(self, lines=30):
        out = []
        logs = [(f"{n.name} patroni.log", n.log_path) for n in self.nodes]
        logs.append(("etcd.log", os.path.join(self.dir, "etcd.log")))
        for name, path in logs:
            try:
                with open(path) as f:
                    kept = [line for line in f if not any(noise in line for noise in self.LOG_NOISE)]
                out.append(f"--- {name}\n" + "".join(kept[-lines:]))
            except OSError:
                pass
        return "\n".join(out)
