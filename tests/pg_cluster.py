"""A private, throwaway PostgreSQL cluster for fault-injection tests (not a test module).

``PrivateCluster`` runs ``initdb`` into a temporary directory and starts the
server with ``pg_ctl`` on a free TCP port of 127.0.0.1 (never 5432: the shared
test server is not touched), so a test may stop, restart or crash it::

    with PrivateCluster() as cluster:
        conn = psycopg.connect(cluster.url)
        cluster.restart()          # conn is now broken
        cluster.crash()            # kill -9 of every server process, then crash recovery

The ``private_cluster`` fixture gives each test module one cluster; import it
into the test module (``from tests.pg_cluster import private_cluster``, named
in ``__all__`` or marked ``# noqa: F401``). It skips only
when no PostgreSQL server binaries are installed, and fails instead when
CI=true. Binaries: ``$EVENTSOURCERY_PG_BINDIR``, else the newest
``/usr/lib/postgresql/*/bin``, else ``initdb``/``pg_ctl`` on PATH.

Running as root: initdb and postgres refuse to run as root, so then every
server program runs as the ``postgres`` OS user (which owns the directory).
The server is configured for speed, not durability (fsync=off,
full_page_writes=off): committed data survives ``crash()`` (a kill -9 loses
no page cache), but would not survive a machine crash. ``synchronous_commit``
stays on, so a commit that returned is in WAL before ``crash()``.

Every wait is bounded (``TIMEOUT`` seconds); on errors the server is stopped
and the directory removed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

#: Seconds any one wait may take (pg_ctl -t, process exits, connections); reached only when
#: something hangs.
TIMEOUT = 30
BINDIR_ENV = "EVENTSOURCERY_PG_BINDIR"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
SHARED_PORT = 5432  # the shared server's port: never ours
DIR_PREFIX = "es-pgcluster-"
# "PID start-time" of the process that made the cluster, for sweep_stale_clusters
OWNER_FILE = "owner.pid"

_PR_SET_CHILD_SUBREAPER, _PR_GET_CHILD_SUBREAPER = 36, 37


class ClusterError(RuntimeError):
    """A server program failed; the message holds its output and the end of the server log."""


# --- finding the binaries -------------------------------------------------------------------------


def _has_programs(bindir: pathlib.Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


def _version_key(bindir: pathlib.Path) -> tuple:
    # /usr/lib/postgresql/<version>/bin, version "16" or "9.6"
    return tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.]", bindir.parent.name))


def in_ci() -> bool:
    """CI=true (as tests/pg_support.py reads it, but at call time): then a missing server fails, not
    skips."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def find_bindir(pattern: str = "/usr/lib/postgresql/*/bin") -> pathlib.Path | None:
    """The directory of initdb/pg_ctl/postgres: $EVENTSOURCERY_PG_BINDIR, the newest match of
    ``pattern``, or PATH's; None when no PostgreSQL server is installed. A set
    $EVENTSOURCERY_PG_BINDIR without the programs is a ClusterError, not "not installed"."""
    override = os.environ.get(BINDIR_ENV)
    if override:
        path = pathlib.Path(override)
        if not _has_programs(path):
            raise ClusterError(f"${BINDIR_ENV}={override} does not hold all of "
                               f"{', '.join(SERVER_PROGRAMS)}")
        return path
    candidates = [pathlib.Path(p) for p in glob.glob(pattern)]
    candidates = sorted((p for p in candidates if _has_programs(p)), key=_version_key)
    if candidates:
        return candidates[-1]
    on_path = [shutil.which(name) for name in SERVER_PROGRAMS]
    if all(on_path):
        return pathlib.Path(on_path[0]).resolve().parent
    return None


def require_server_binaries(pattern: str = "/usr/lib/postgresql/*/bin") -> pathlib.Path:
    """find_bindir(), or skip the test when no server is installed (fail instead when CI=true)."""
    try:
        bindir = find_bindir(pattern)
    except ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    if bindir is None:
        why = (f"no PostgreSQL server binaries ({', '.join(SERVER_PROGRAMS)}) in ${BINDIR_ENV}, "
               f"{pattern} or PATH; private-cluster tests need a PostgreSQL server installed")
        if in_ci():
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    return bindir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind port 0 and let the kernel choose)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port != SHARED_PORT:
            return port


# --- processes ------------------------------------------------------------------------------------


def _pids_in(directory: str) -> list[int]:
    """Live processes whose working directory is ``directory``: every process of a server
    (the postmaster chdirs to its data directory and its children inherit it). Linux /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == directory:
                out.append(int(entry))
        except OSError:  # gone, a zombie, or not ours to read
            pass
    return out


def _alive(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _reap(pid: int, timeout: float = TIMEOUT) -> None:
    """Collect ``pid`` if it is our child (see _adopting) once it exits; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (or already collected)
            return
        if done:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"process {pid} did not exit within {timeout} s")
        time.sleep(0.01)


@contextlib.contextmanager
def _adopting():
    """Make this process the child subreaper while pg_ctl runs, so the postmaster it leaves behind
    becomes our child: we can then reap it after kill -9. Otherwise it is re-parented to PID 1,
    which in containers often never reaps, and a zombie postmaster's PID in postmaster.pid makes
    the next start fail ("Is another postmaster running?")."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    # not Linux: crash() falls back to removing a stale postmaster.pid
    except (OSError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, before.value, 0, 0, 0)


def _process_identity(pid: int) -> str:
    """"PID start-time": tells a live owner from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid} {f.read().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return f"{pid} ?"


def _kill_dir_processes(data_dir: str, timeout: float = TIMEOUT) -> None:
    """SIGKILL every process working in data_dir until none is left (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _pids_in(data_dir)
        if not left:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"server processes {left} survived SIGKILL for {timeout} s")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def sweep_stale_clusters(base_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Kill the servers of, and remove, cluster directories whose owning process is gone (a test run
    killed by SIGKILL or SIGTERM never ran its cleanup). Clusters of live processes are left
    alone."""
    removed = []
    for directory in pathlib.Path(base_dir or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = directory.joinpath(OWNER_FILE).read_text()
            pid = int(owner.split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not (yet) a cluster directory with an owner: not ours to judge
        if _alive(pid) and _process_identity(pid) == owner:
            continue
        with contextlib.suppress(ClusterError):
            _kill_dir_processes(os.path.realpath(directory / "data"))
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


# --- the cluster ----------------------------------------------------------------------------------


class PrivateCluster:
    """A throwaway PostgreSQL server in a temp directory, on 127.0.0.1:<free port> (a context
    manager).

    ``url`` is its ``test`` database (created at start), ``admin_url`` its
    ``postgres`` database; user ``postgres``, trust auth, no password.
    """

    def __init__(self, bindir: str | os.PathLike | None = None, *, base_dir: str | os.PathLike
                 | None = None, settings: dict[str, object] | None = None, database: str = "test"):
        found = pathlib.Path(bindir) if bindir is not None else find_bindir()
        if found is None:
            raise ClusterError("no PostgreSQL server binaries found (see find_bindir)")
        self.bindir = found
        self.base_dir = base_dir
        self.database = database
        self.settings = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.directory: pathlib.Path | None = None
        #: (operation, seconds) for every initdb/start/stop/crash, in order.
        self.timings: list[tuple[str, float]] = []
        self._closed = False
        self._as_user = self._server_user()

    # --- setup / teardown

    def __enter__(self) -> PrivateCluster:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def setup(self) -> None:
        """initdb, start on a free port, create the ``test`` database."""
        atexit.register(self.close)
        sweep_stale_clusters(self.base_dir)
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=self.base_dir))
        self.directory.joinpath(OWNER_FILE).write_text(_process_identity(os.getpid()))
        self.socket_dir.mkdir()
        if self._as_user is not None:
            uid, gid = self._as_user[1], self._as_user[2]
            for path in (self.directory, self.socket_dir):
                os.chown(path, uid, gid)
        t0 = time.monotonic()
        self._run([self._bin("initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"], timeout=4 * TIMEOUT)
        self.timings.append(("initdb", time.monotonic() - t0))
        for attempt in range(5):  # the free port may be taken before the server binds it
            self.port = free_port(self.host)
            self._write_config()
            try:
                self.start()
                break
            except ClusterError as exc:
                if attempt == 4 or "could not bind" not in str(exc).lower():
                    raise
        from psycopg import sql

        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)),
                     dbname="postgres")

    def close(self) -> None:
        """Stop the server (immediate; kill -9 if that fails) and remove the directory.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.directory is None:
            return
        try:
            if self.data_dir.joinpath("postmaster.pid").exists():
                try:
                    self.stop("immediate")
                except Exception:
                    self._kill_all()
        finally:
            # whatever is left, with or without a postmaster.pid
            with contextlib.suppress(Exception):
                _kill_dir_processes(os.path.realpath(self.data_dir), timeout=5)
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- where things are

    @property
    def data_dir(self) -> pathlib.Path:
        assert self.directory is not None, "the cluster is not set up"
        return self.directory / "data"

    @property
    def socket_dir(self) -> pathlib.Path:
        assert self.directory is not None, "the cluster is not set up"
        return self.directory / "sock"

    @property
    def log_path(self) -> pathlib.Path:
        assert self.directory is not None, "the cluster is not set up"
        return self.directory / "server.log"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """postgresql:// URL of the ``test`` database."""
        return self.url_for(self.database)

    @property
    def admin_url(self) -> str:
        """postgresql:// URL of the ``postgres`` database."""
        return self.url_for("postgres")

    @property
    def pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid (None when there is no such file)."""
        try:
            return int(self.data_dir.joinpath("postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and _alive(pid)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- server control

    def start(self) -> None:
        """pg_ctl start -w (bounded); returns once the server accepts connections."""
        pid = self.pid
        if pid is not None and not _alive(pid):  # died without us: clear its leftovers first
            self._kill_all()
        t0 = time.monotonic()
        with _adopting():
            self._run([self._bin("pg_ctl"), "start", "-D", str(self.data_dir), "-l",
                       str(self.log_path), "-w", "-t", str(TIMEOUT), "-s"])
        self.timings.append(("start", time.monotonic() - t0))

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast|smart|immediate -w (bounded). "immediate" skips the shutdown
        checkpoint, so the next start runs crash recovery; "fast" disconnects clients and shuts down
        cleanly."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be 'smart', 'fast' or 'immediate', not {mode!r}")
        pid = self.pid
        t0 = time.monotonic()
        self._run([self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t",
                   str(TIMEOUT), "-s"])
        if pid is not None:
            _reap(pid)
        self.timings.append((f"stop {mode}", time.monotonic() - t0))

    def restart(self, mode: str = "fast") -> None:
        """stop(mode) then start(), on the same port."""
        self.stop(mode)
        self.start()

    def crash(self) -> None:
        """kill -9 of the postmaster and then of every other server process (as if the machine's
        server processes died at once), then start(): the server runs crash recovery."""
        t0 = time.monotonic()
        self._kill_all()
        self.timings.append(("kill -9", time.monotonic() - t0))
        self.start()

    def ensure_running(self) -> None:
        """start() unless the server is running (for tests after a test that stopped it)."""
        if not self.is_running():
            self.start()

    # --- SQL helpers (new autocommit connections through psycopg)

    def connect(self, dbname: str | None = None, **kwargs):
        """A new psycopg connection (connect_timeout 5 s unless given)."""
        import psycopg

        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.url_for(dbname or self.database), **kwargs)

    def execute(self, sql, params=None, *, dbname: str | None = None) -> list[tuple]:
        """Run one statement (with %s params) in autocommit; its rows, or [] when it returns
        none."""
        with self.connect(dbname, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def psql(self, script: str, *, dbname: str | None = None) -> list[list[tuple]]:
        """Run a script of ;-separated statements (no params) in autocommit, like ``psql -c``;
        the rows of every statement that returns rows, one list per statement."""
        out = []
        with self.connect(dbname, autocommit=True) as conn:
            cur = conn.execute(script)
            while True:
                if cur.description is not None:
                    out.append(cur.fetchall())
                if not cur.nextset():
                    break
        return out

    def terminate_backends(self, application_name_like: str | None = None, *,
                           dbname: str | None = None) -> list[int]:
        """pg_terminate_backend of every other client session (those whose application_name is
        LIKE the pattern, when given; in ``dbname`` only, when given), waiting (bounded) until they
        have exited. Returns their PIDs."""
        where = ["pid <> pg_backend_pid()", "backend_type = 'client backend'"]
        params: list[object] = []
        if application_name_like is not None:
            where.append("application_name LIKE %s")
            params.append(application_name_like)
        if dbname is not None:
            where.append("datname = %s")
            params.append(dbname)
        with self.connect("postgres", autocommit=True) as conn:
            pids = [r[0] for r in conn.execute(
                f"SELECT pid FROM pg_stat_activity WHERE {' AND '.join(where)}", params).fetchall()]
            if not pids:
                return []
            if conn.info.server_version >= 140000:  # waits for the exit itself
                rows = conn.execute("SELECT pid FROM unnest(%s::int[]) AS pid WHERE NOT "
                                    "pg_terminate_backend(pid, %s)",
                                    (pids, TIMEOUT * 1000)).fetchall()
                stuck = [pid for (pid,) in rows
                         if conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                         (pid,)).fetchone()]
            else:
                conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                             (pids,))
                deadline = time.monotonic() + TIMEOUT
                while True:
                    stuck = [r[0] for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchall()]
                    if not stuck or time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
            if stuck:
                raise ClusterError(f"backends {stuck} did not exit within {TIMEOUT} s of "
                                   "pg_terminate_backend")
        return pids

    def set_database_setting(self, name: str, value: object, *, dbname: str | None = None) -> None:
        """ALTER DATABASE <dbname> SET name = value (RESET when value is None). Sessions started
        afterwards get it; open sessions keep their value."""
        from psycopg import sql

        target = sql.Identifier(dbname or self.database)
        setting = sql.Identifier(*name.split("."))
        if value is None:
            stmt = sql.SQL("ALTER DATABASE {} RESET {}").format(target, setting)
        else:
            stmt = sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                target, setting, sql.Literal(value))
        self.execute(stmt, dbname="postgres")

    # --- internals

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    @staticmethod
    def _server_user():
        """None to run the server programs as ourselves; (name, uid, gid, home) of ``postgres`` as
        root."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterError("running as root, and initdb/postgres refuse root, but there is no "
                               "'postgres' OS user to run them as (useradd --system postgres)")
        return pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir

    def _run(self, argv: list[str], timeout: float = TIMEOUT + 15) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        kwargs: dict = {}
        if self._as_user is not None:
            name, uid, gid, home = self._as_user
            env.update(USER=name, LOGNAME=name, HOME=home)
            kwargs.update(user=uid, group=gid, extra_groups=[])
        try:
            proc = subprocess.run(argv, cwd=self.directory, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{' '.join(argv)} took over {timeout} s\n--- server log:\n"
                               f"{self._log_tail()}") from exc
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} exited {proc.returncode}\n"
                               f"{proc.stdout}{proc.stderr}--- server log:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.directory is None:
            return ""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _write_config(self) -> None:
        settings: dict[str, object] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": 40,
            "wal_level": "minimal",
            "max_wal_senders": 0,
            **self.settings,
        }

        def literal(value):
            return "'" + str(value).replace("'", "''") + "'"

        text = "".join(f"{key} = {literal(value)}\n" for key, value in settings.items())
        # the last assignment wins: a file of our own, included last, may be rewritten on a port
        # retry
        self.data_dir.joinpath("private_cluster.conf").write_text(text)
        conf = self.data_dir / "postgresql.conf"
        include = "include = 'private_cluster.conf'\n"
        if include not in conf.read_text():
            with conf.open("a") as f:
                f.write("\n" + include)

    def _kill_all(self) -> None:
        """SIGKILL the postmaster, then every process left in the data directory; wait (bounded)
        until all are gone. The postmaster goes first so that it cannot react (restart children).
        Being the subreaper meanwhile, we collect the orphans too instead of leaving zombies to PID
        1."""
        data = os.path.realpath(self.data_dir)
        pid = self.pid
        seen = set(_pids_in(data))  # before the kill: a child may exit before a later look finds it
        with _adopting():
            if pid is not None and pid in seen:
                os.kill(pid, signal.SIGKILL)
            _kill_dir_processes(data)
            for other in seen - {pid}:
                _reap(other)
        if pid is not None:
            _reap(pid)
            if os.path.exists(f"/proc/{pid}"):
                # a zombie we cannot reap (not our child: _adopting did not work here), whose PID
                # postgres would take for a running postmaster: remove its stale lock files, as
                # postgres would
                for lock in [self.data_dir / "postmaster.pid",
                             *self.socket_dir.glob(".s.PGSQL.*.lock")]:
                    with contextlib.suppress(OSError):
                        if lock.read_text().split("\n", 1)[0].strip() == str(pid):
                            lock.unlink()


@pytest.fixture(scope="module")
def private_cluster():
    """One PrivateCluster per test module (skips without PostgreSQL server binaries; fails then when
    CI=true). Tests may stop or crash it; call ``ensure_running()`` first when a previous test may
    have left it stopped."""
    bindir = require_server_binaries()
    with PrivateCluster(bindir) as cluster:
        yield cluster
