"""Smoke test of the benchmark harness: `python -m bench --quick --only b` (and
`--only h`, on SQLite and, when the test server answers, Postgres) runs and
writes JSON of the documented shape.  It never asserts a speed.

eventsourcing (the peer) comes with the `bench` extra, which CI installs; then
the peer column is exercised too.  Without it the harness would report an
error (a missing peer is an error there, on purpose), so this test passes
`--no-peer` only when eventsourcing is not importable."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
HAVE_PEER = importlib.util.find_spec("eventsourcing") is not None


def run_quick_bench(tmp_path, *args: str,
                    timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m bench --quick ARGS`` (``--no-peer`` when eventsourcing is missing), which must
    exit 0; returns the process and the JSON it wrote."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "bench", "--quick", *args, "--json", str(out), "--tmpdir",
           str(tmp_path)]
    if not HAVE_PEER:
        cmd.append("--no-peer")
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p, json.loads(out.read_text())


def test_bench_quick_b_writes_expected_json(tmp_path):
    p, doc = run_quick_bench(tmp_path, "--only", "b", "--backend", "sqlite", timeout=120)

    assert set(doc) >= {"meta", "sizes", "results", "skipped", "errors"}
    assert doc["errors"] == []
    meta = doc["meta"]
    assert {"machine", "quick", "settings", "argv"} <= set(meta)
    assert meta["quick"] is True
    assert {"nproc", "cpu", "python", "sqlite", "python_optimize"} <= set(meta["machine"])

    rows = [r for r in doc["results"] if r["workload"] == "b" and r["backend"] == "sqlite"]
    systems = {r["system"] for r in rows}
    expected = {"eventsourcery", "raw"} | ({"eventsourcing"} if HAVE_PEER else set())
    assert systems == expected
    for r in rows:
        assert {"events", "runs", "runs_s", "median_ms", "min_ms", "events_per_s", "us_per_event",
                "vs_eventsourcing", "vs_raw"} <= set(r)
        assert r["events"] == doc["sizes"]["b_events"]
        assert r["runs"] == len(r["runs_s"]) >= 1
        assert r["events_per_s"] > 0 and r["median_ms"] > 0
    raw = next(r for r in rows if r["system"] == "raw")
    assert raw["vs_raw"] == 1.0
    # every store in the run had the durability the comparison claims
    for name in expected:
        assert meta["settings"][f"sqlite/{name}"] == {"journal_mode": "wal", "synchronous": "FULL"}
    assert "(b) batch append" in p.stdout  # the printed table
    # the goals block speaks of the workloads, not of where they were first written down
    assert "\ngoals, eventsourcery in this run:\n" in p.stdout, p.stdout
    assert "issue" not in p.stdout.lower(), p.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_bench_quick_h_snapshot_vs_replay_rows(tmp_path, backend):
    """(h): per system a full-replay row and a snapshot row of the same aggregate, the snapshot
    rows carrying where the snapshot was and the speed-up over the replay (never a speed)."""
    if backend == "postgres":
        from tests.pg_support import require_postgres
        require_postgres()
    p, doc = run_quick_bench(tmp_path, "--only", "h", "--backend", backend, timeout=180)
    assert doc["errors"] == []
    sizes = doc["sizes"]
    n, every = sizes["h_events"], sizes["h_every"]
    at = n // every * every

    rows = [r for r in doc["results"] if r["workload"] == "h" and r["backend"] == backend]
    expected = {"eventsourcery", "raw"} | ({"eventsourcing"} if HAVE_PEER else set())
    assert {(r["system"], r["variant"]) for r in rows} == {(s, v) for s in expected
                                                           for v in ("replay", "snap")}
    for r in rows:
        assert r["events"] == n
        assert r["runs"] == len(r["runs_s"]) >= 1 and r["median_ms"] > 0 and r["loads_per_run"] >= 1
        assert "vs_eventsourcing" in r and "vs_raw" in r
        if r["variant"] == "snap":
            assert ((r["snapshot_every"], r["snapshot_at"], r["replayed_events"])
                    == (every, at, n - at))
            assert r["speedup_vs_replay"] > 0
        else:
            assert r["replayed_events"] == n
    goals = [g for g in doc["goals"] if g["goal"] == "(h) snapshot load vs full replay"]
    assert [g["backend"] for g in goals] == [backend] and goals[0]["target"] == ">= 20.0x"
    assert ("(h) load 1 long aggregate" in p.stdout
            and "(h) snapshot load vs full replay" in p.stdout)


def test_benchmark_docs_speak_of_workloads_not_issues():
    for path in [ROOT / "BENCHMARKS.md", *sorted((ROOT / "bench").glob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"\bissues?\b|\bissue's\b", text, re.I), path


def test_bench_quick_k_runs_processes_together(tmp_path):
    """(k): a row per system and process count, each process's commands counted, latencies
    pooled."""
    p, doc = run_quick_bench(tmp_path, "--only", "k", "--backend", "sqlite", "--runs", "1",
                             timeout=180)
    assert doc["errors"] == []
    sizes = doc["sizes"]
    rows = [r for r in doc["results"] if r["workload"] == "k"]
    expected = {"eventsourcery", "raw"} | ({"eventsourcing"} if HAVE_PEER else set())
    assert ({(r["system"], r["processes"]) for r in rows}
            == {(s, n) for s in expected for n in sizes["k_processes"]})
    for r in rows:
        assert r["events"] == sizes["k_commands"] // r["processes"] * r["processes"]
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert "(k) N processes" in p.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_bench_quick_p_partition_rows(tmp_path, backend):
    """(p): the partitioned reactor's rows per instance count (every backlog event handled, the
    speed-up over one instance given), the projector's rows on Postgres only, and the rebalance
    rows after a join and a kill -9 (times, never a rate); never a speed."""
    if backend == "postgres":
        from tests.pg_support import require_postgres
        require_postgres()
    p, doc = run_quick_bench(tmp_path, "--only", "p", "--backend", backend, timeout=240)
    assert doc["errors"] == []
    sizes = doc["sizes"]
    rows = {r["variant"]: r for r in doc["results"] if r["workload"] == "p"}
    assert all(r["backend"] == backend and r["system"] == "eventsourcery" for r in rows.values())
    proj = ([f"proj{k}" for k in sizes["p_proj_instances"]] + ["whole1"]
            if backend == "postgres" else [])
    assert set(rows) == ({f"react{k}" for k in sizes["p_react_instances"]} | set(proj)
                         | {"join2", "kill1"})
    for k in sizes["p_react_instances"]:
        r = rows[f"react{k}"]
        assert r["instances"] == k and r["partitions"] == 8
        assert r["events"] == sizes["p_react_events"] and r["events_per_s"] > 0
        assert all(calls >= r["events"] for calls in r["handler_calls"])
        assert r["drain_median_s"] > r["first_handled_s"] > 0
        assert 1 <= len(r["starts_s"]) <= k and min(r["starts_s"]) > 0
        assert r["speedup_vs_1"] > 0 and r["drain_speedup_vs_1"] > 0
    for variant in proj:
        assert rows[variant]["events"] == sizes["p_proj_events"]
        assert rows[variant]["median_ms"] > 0 and rows[variant]["work_us"] > 0
    if backend == "sqlite":
        assert any(s["workload"] == "p" and "Postgres only" in s["reason"] for s in doc["skipped"])
    join, kill = rows["join2"], rows["kill1"]
    assert join["instances"] == 2 and kill["instances"] == 1
    assert join["median_ms"] / 1e3 >= join["first_owned_s"] > 0 and join["start_s"] > 0
    assert kill["balanced_s"] >= kill["median_ms"] / 1e3 > 0
    assert join["events_per_s"] is None and kill["events_per_s"] is None
    goals = {g["goal"]: g for g in doc["goals"] if g["goal"].startswith("(p)")}
    assert goals["(p) 20 ms reactor, events/s of 4 instances / 1"]["target"] == ">= 3.5x"
    assert "(p) partitioned processors" in p.stdout and "p.react4" in p.stdout
