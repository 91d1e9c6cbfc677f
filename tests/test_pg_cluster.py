"""The private PostgreSQL cluster of tests/pg_cluster.py: that it is private, and that its faults
happen.

One cluster serves the module (tests run in a few seconds); a test that stops
it leaves it to the next test's ``cluster`` fixture to start it again. Skipped
without PostgreSQL server binaries, except with CI=true.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest

from tests import pg_cluster
from tests._util import wait_until
from tests.pg_cluster import (
    SHARED_PORT,
    PrivateCluster,
    find_bindir,
    in_ci,
    private_cluster,
    require_server_binaries,
)

if in_ci():
    import psycopg  # in CI a missing psycopg is a failure, not a skip
else:
    psycopg = pytest.importorskip("psycopg")

__all__ = ["private_cluster"]  # the module-scoped fixture, imported so that pytest finds it here

BOUND = 10.0  # seconds; reached only when a fault did not happen


@pytest.fixture
def cluster(private_cluster):
    private_cluster.ensure_running()
    return private_cluster


def backend_exists(cluster, pid) -> bool:
    return bool(cluster.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,),
                                dbname="postgres"))


def test_private_server_is_up_and_not_the_shared_one(cluster):
    assert cluster.port != SHARED_PORT
    with psycopg.connect(cluster.url, connect_timeout=5) as conn:
        assert (conn.execute("SELECT current_database(), current_user, 1 + 1").fetchone()
                == ("test", "postgres", 2))
        assert int(conn.execute("SHOW port").fetchone()[0]) == cluster.port
        data_dir = pathlib.Path(conn.execute("SHOW data_directory").fetchone()[0])
        assert data_dir.resolve() == cluster.data_dir.resolve()
        assert cluster.directory in data_dir.resolve().parents
        assert conn.execute("SHOW fsync").fetchone()[0] == "off"
        assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == str(cluster.socket_dir)
    assert cluster.execute("SELECT current_database()", dbname="postgres") == [("postgres",)]
    assert cluster.admin_url.endswith("/postgres")
    if os.geteuid() == 0:  # postgres refuses root: the server runs as the postgres OS user
        assert os.stat(f"/proc/{cluster.pid}").st_uid != 0


def test_execute_and_psql(cluster):
    cluster.execute("DROP TABLE IF EXISTS kv")
    assert (cluster.psql("CREATE TABLE kv (k text PRIMARY KEY, v int); INSERT INTO kv VALUES ('a', "
                         "1), ('b', 2); SELECT k FROM kv ORDER BY k; SELECT sum(v) FROM kv")
            == [[("a",), ("b",)], [(3,)]])
    assert cluster.execute("SELECT v FROM kv WHERE k = %s", ("b",)) == [(2,)]
    assert cluster.execute("UPDATE kv SET v = v + 1") == []


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_breaks_open_connection_and_a_new_one_works(cluster, mode):
    cluster.psql(
        "DROP TABLE IF EXISTS kept; CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    pid = cluster.pid
    conn = psycopg.connect(cluster.url, autocommit=True, connect_timeout=5)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        cluster.restart(mode)
        assert cluster.pid != pid
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(cluster.url, connect_timeout=5) as fresh:
        assert fresh.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_stopped_server_refuses_connections_until_started(cluster):
    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.url, connect_timeout=5)
    cluster.start()
    assert cluster.is_running()
    assert cluster.execute("SELECT 1") == [(1,)]


def test_crash_keeps_committed_data_and_runs_crash_recovery(cluster):
    cluster.psql("DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (n int)")
    recoveries = cluster.log_text().count("automatic recovery in progress")
    old_pid = cluster.pid
    committed = psycopg.connect(cluster.url, connect_timeout=5)
    pending = psycopg.connect(cluster.url, connect_timeout=5)
    try:
        committed.execute("INSERT INTO ledger SELECT generate_series(1, 100)")
        committed.commit()
        pending.execute("INSERT INTO ledger VALUES (-1)")  # never committed
        cluster.crash()
        with pytest.raises(psycopg.OperationalError):
            pending.execute("SELECT 1")
    finally:
        committed.close()
        pending.close()
    assert cluster.pid != old_pid
    assert not os.path.exists(f"/proc/{old_pid}"), "the killed postmaster was not collected"
    assert cluster.execute("SELECT count(*), min(n), max(n) FROM ledger") == [(100, 1, 100)]
    assert cluster.log_text().count("automatic recovery in progress") == recoveries + 1


def test_terminate_backends_ends_only_the_matching_sessions(cluster):
    victim = psycopg.connect(cluster.url, autocommit=True, application_name="victim-1",
                             connect_timeout=5)
    bystander = psycopg.connect(cluster.url, autocommit=True, application_name="bystander",
                                connect_timeout=5)
    try:
        assert (cluster.terminate_backends(application_name_like="victim%")
                == [victim.info.backend_pid])
        assert not backend_exists(cluster, victim.info.backend_pid)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        assert cluster.terminate_backends() == [bystander.info.backend_pid]  # every other session
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        victim.close()
        bystander.close()


def test_idle_session_timeout_ends_an_idle_session(cluster):
    with psycopg.connect(cluster.admin_url, connect_timeout=5) as probe:
        if probe.info.server_version < 140000:
            pytest.skip("idle_session_timeout needs PostgreSQL 14")
    cluster.set_database_setting("idle_session_timeout", "200ms")
    try:
        idle = psycopg.connect(cluster.url, autocommit=True, connect_timeout=5)
        try:
            assert idle.execute("SHOW idle_session_timeout").fetchone() == ("200ms",)
            pid = idle.info.backend_pid
            assert wait_until(lambda: not backend_exists(cluster, pid), timeout=BOUND,
                              interval=0.05), (f"idle session {pid} still there after {BOUND} s")
            with pytest.raises(psycopg.OperationalError):
                idle.execute("SELECT 1")
        finally:
            idle.close()
    finally:
        cluster.set_database_setting("idle_session_timeout", None)
    assert cluster.execute("SHOW idle_session_timeout") == [("0",)]


def test_cleanup_stops_the_server_and_removes_the_directory_even_on_errors(private_cluster):
    with pytest.raises(RuntimeError, match="boom"):
        with PrivateCluster(private_cluster.bindir) as other:
            directory, pid, port = other.directory, other.pid, other.port
            assert other.execute("SELECT 1") == [(1,)]
            raise RuntimeError("boom")
    assert not directory.exists()
    assert not os.path.exists(f"/proc/{pid}")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, ("something still listens on the closed "
                                                        "cluster's port")


def test_sweep_removes_clusters_of_dead_owners_only(tmp_path):
    dead_owner = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                capture_output=True, text=True, check=True)
    stale = tmp_path / f"{pg_cluster.DIR_PREFIX}stale"
    (stale / "data").mkdir(parents=True)
    (stale / pg_cluster.OWNER_FILE).write_text(f"{dead_owner.stdout.strip()} 1")
    live = tmp_path / f"{pg_cluster.DIR_PREFIX}live"
    (live / "data").mkdir(parents=True)
    (live / pg_cluster.OWNER_FILE).write_text(pg_cluster._process_identity(os.getpid()))
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                cwd=stale / "data")
    try:
        assert wait_until(
            lambda: leftover.pid in pg_cluster._pids_in(os.path.realpath(stale / "data")), BOUND)
        assert pg_cluster.sweep_stale_clusters(tmp_path) == [stale]
        assert leftover.wait(BOUND) == -signal.SIGKILL  # the dead owner's "server" is killed
    finally:
        leftover.kill()
        leftover.wait(BOUND)
    assert not stale.exists()
    assert live.exists()


# --- finding the binaries (no server needed) ------------------------------------------------------


def fake_bindir(root: pathlib.Path, version: str,
                programs=("initdb", "pg_ctl", "postgres")) -> pathlib.Path:
    bindir = root / version / "bin"
    bindir.mkdir(parents=True)
    for name in programs:
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return bindir


def test_find_bindir_takes_the_newest_complete_installation(tmp_path, monkeypatch):
    monkeypatch.delenv("EVENTSOURCERY_PG_BINDIR", raising=False)
    fake_bindir(tmp_path, "9.6")
    newest = fake_bindir(tmp_path, "15")
    fake_bindir(tmp_path, "10")
    fake_bindir(tmp_path, "99", programs=("initdb",))  # incomplete: no server
    assert find_bindir(f"{tmp_path}/*/bin") == newest


@pytest.mark.parametrize("ci", [None, "true"])
def test_no_server_binaries_skips_but_fails_in_ci(tmp_path, monkeypatch, ci):
    monkeypatch.delenv("EVENTSOURCERY_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    # not pytest.raises: a Skipped it does not expect would skip this test instead of failing it
    try:
        require_server_binaries(f"{tmp_path}/*/bin")
    except BaseException as exc:
        outcome = exc
    else:
        outcome = None
    assert type(outcome) is expected, f"expected {expected.__name__}, got {outcome!r}"
    assert "no PostgreSQL server binaries" in str(outcome)
