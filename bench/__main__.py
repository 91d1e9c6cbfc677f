"""python -m bench [--quick] [--json out.json] [--only a,b,...] [--backend sqlite,postgres]
                  [--runs N] [--no-peer] [--tmpdir DIR] [--profile DIR]

Runs each workload for eventsourcery, eventsourcing 9.x and the raw ceiling,
interleaved (A B C A B C ...), fresh stores on disk each run, and prints a
table of medians.  See BENCHMARKS.md for what every number means."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

if __package__ in (None, ""):  # `python bench/__main__.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"  # noqa: A001

from bench import common as C  # noqa: E402

UNITS = {"a": "commands", "b": "events", "c": "events", "d": "events", "e": "events",
         "f": "events", "g": "events", "h": "events", "i": "commands", "j": "reads",
         "k": "commands", "l": "requests", "web": "events", "aio": "commands", "p": "events"}
TITLES = {
    "a": "commands: load + 1 event + save",
    "b": "batch append to 1 aggregate",
    "c": "rebuild 1 aggregate",
    "d": "projector catch-up",
    "e": "live latency commit->handler",
    "f": "growth: per-event cost vs store size",
    "g": "peak memory of catch-up",
    "h": "load 1 long aggregate: from its latest snapshot vs full replay",
    "i": "N threads, one store object: commands (cmdN) and single-event appends (sinkN)",
    "j": "read latency (load a 10-event aggregate) while another thread (j) or process (j.proc) "
         "writes",
    "k": "N processes, one store: commands (load + 1 event + save), a store object per process",
    "l": "the todo app over HTTP under wrk: GET /todos/outstanding (200 todos), POST adds; N "
         "connections",
    "web": "event browser: a page of 50 events of a 1,000,000-event store, by HTTP (web_pages.py)",
    "aio": "8 asyncio tasks (tsk8, AsyncRepository) against 8 threads (thr8, Repository): commands",
    "p": "partitioned processors (8 partitions) run by k instances: a 20 ms reactor's backlog "
         "(react), a CPU-bound projector's catch-up (proj), rebalancing (join, kill)",
}


class Harness:
    def __init__(self, args):
        self.args = args
        self.sizes = C.Sizes(args.quick, args.runs)
        self.results: list[dict] = []
        self.skipped: list[dict] = []
        self.errors: list[dict] = []
        self.settings: dict = {}
        self.tmp = tempfile.mkdtemp(prefix="esbench-", dir=args.tmpdir)
        self.templates: dict = {}
        self.pg_dbs = None
        self.pg_version = None
        self.probe: dict = {}
        self.targets: dict[str, list] = {}

    # ------------------------------------------------------------------ setup
    def log(self, msg):
        print(msg, file=sys.stderr, flush=True)

    def error(self, where, exc):
        msg = f"{type(exc).__name__}: {exc}"
        self.errors.append({"where": where, "error": msg,
                            "traceback": traceback.format_exc(limit=6)})
        self.log(f"  ERROR in {where}: {msg}")

    def skip(self, workload, backend, system, reason):
        self.skipped.append({"workload": workload, "backend": backend, "system": system,
                             "reason": reason})
        self.log(f"  skipped {workload}/{backend}/{system}: {reason}")

    def build_targets(self):
        a = self.args
        if C.on_tmpfs(self.tmp):
            self.log(f"WARNING: {self.tmp} is on tmpfs; numbers will not include real fsyncs")
        # SQLite
        if "sqlite" in a.backends:
            ts = []
            try:
                from bench.sys_es import ESSQLite
                ts.append(ESSQLite(self.tmp))
            except Exception as e:  # noqa: BLE001
                self.error("import eventsourcery", e)
            if not a.no_peer:
                try:
                    from bench.sys_peer import PeerSQLite
                    ts.append(PeerSQLite(self.tmp))
                except Exception as e:  # noqa: BLE001
                    self.error("import eventsourcing (pip install 'eventsourcing>=9.5,<10', "
                               "the bench extra; or pass --no-peer)", e)
            from bench.sys_raw import RawSQLite
            raw = RawSQLite(self.tmp, ddl=self.library_sqlite_ddl(ts))
            ts.append(raw)
            self.targets["sqlite"] = ts
        # Postgres
        if "postgres" in a.backends:
            reason = None
            ci = C.pg_conninfo()
            try:
                import eventsourcery_pg
                if not hasattr(eventsourcery_pg, "PostgresEventStore"):
                    reason = "eventsourcery_pg has no PostgresEventStore yet"
                elif C.pg_reachable(ci)[0]:
                    try:  # a placeholder class that raises NotImplementedError counts as missing
                        eventsourcery_pg.PostgresEventStore(ci).close()
                    except NotImplementedError as e:
                        reason = f"eventsourcery_pg.PostgresEventStore is not implemented yet ({e})"
            except Exception as e:  # noqa: BLE001
                reason = f"eventsourcery_pg not importable ({type(e).__name__}: {e})"
            if reason is None or a.force_postgres:
                ok, info = C.pg_reachable(ci)
                if not ok:
                    reason = info
                else:
                    self.pg_version = info
            if reason is not None and not (a.force_postgres and self.pg_version):
                self.log(f"Postgres rows skipped: {reason}")
                self.skip("*", "postgres", "*", reason)
            else:
                if reason:
                    self.log(f"--force-postgres: eventsourcery column skipped ({reason}); peer and "
                             "raw run")
                    self.skip("*", "postgres", "eventsourcery", reason)
                self.pg_dbs = C.PGDatabases(ci)
                ts = []
                if reason is None:
                    try:
                        from bench.sys_es import ESPostgres
                        ts.append(ESPostgres(self.pg_dbs))
                    except Exception as e:  # noqa: BLE001
                        self.error("eventsourcery_pg target", e)
                if not a.no_peer:
                    try:
                        from bench.sys_peer import PeerPostgres
                        ts.append(PeerPostgres(self.pg_dbs))
                    except Exception as e:  # noqa: BLE001
                        self.error("import eventsourcing (postgres)", e)
                from bench.sys_raw import RawPostgres
                ts.append(RawPostgres(self.pg_dbs))
                self.targets["postgres"] = ts
        if a.no_peer:
            self.log("--no-peer: eventsourcing columns not run")
            self.skip("*", "*", "eventsourcing", "--no-peer")

    def library_sqlite_ddl(self, ts):
        """The raw ceiling uses the library's own DDL (from sqlite_master of a store
        it created) when its events table has the expected columns."""
        es_t = next((t for t in ts if t.name == "eventsourcery"), None)
        if es_t is None:
            return None
        try:
            path = es_t.new_store()
            roles = es_t.schema_table_roles(path)
            schema = C.sqlite_schema(path)
            es_t.drop_store(path)
            if roles["table"] == "events" and set(C.EVENT_COLUMNS) <= set(roles["columns"]):
                ddl = [sql for typ, name, sql in schema]
                self.settings["raw_sqlite_schema"] = "copied from the library's sqlite_master"
                self.settings["library_sqlite_schema"] = ddl
                return ddl
            self.settings["raw_sqlite_schema"] = (
                f"library schema has other columns {roles['columns']}; raw uses design.md's schema")
        except Exception as e:  # noqa: BLE001
            self.error("reading the library's SQLite schema", e)
        return None

    def record_settings(self):
        for backend, ts in self.targets.items():
            for t in ts:
                try:
                    spec = t.new_store()
                    self.settings[f"{backend}/{t.name}"] = t.settings(spec)
                    t.drop_store(spec)
                except Exception as e:  # noqa: BLE001
                    self.error(f"settings {backend}/{t.name}", e)

    # ------------------------------------------------------------------ recording
    def add(self, workload, backend, system, events, runs_s, variant="", **extra):
        row = {"workload": workload, "variant": variant, "backend": backend, "system": system,
               "events": events, "runs": len(runs_s), "runs_s": [round(x, 6) for x in runs_s]}
        if runs_s:
            med = C.median(runs_s)
            row.update(median_ms=med * 1e3, min_ms=min(runs_s) * 1e3,
                       events_per_s=events / med if med else None,
                       us_per_event=med * 1e6 / events if events else None)
        else:
            row.update(median_ms=None, min_ms=None, events_per_s=None, us_per_event=None)
        row.update(extra)
        self.results.append(row)
        return row

    def interleaved(self, workload, backend, n_runs, fn, variant=""):
        """fn(target, run_index) -> seconds (or list of seconds); targets run A B C A B C."""
        ts = self.targets.get(backend, [])
        times = {t.name: [] for t in ts}
        failed = set()
        for r in range(n_runs):
            for t in ts:
                if t.name in failed:
                    continue
                gc.collect()
                try:
                    out = fn(t, r)
                except Exception as e:  # noqa: BLE001
                    self.error(f"{workload}{variant}/{backend}/{t.name}", e)
                    failed.add(t.name)
                    continue
                times[t.name].append(out)
        return times, failed

    # ------------------------------------------------------------------ templates
    def template(self, t, n_events, per_agg=10):
        """A closed, checkpointed store file holding n_events: one written by the
        library itself, the rest bulk-cloned from it with the raw inserter into
        the library's own table (schema found through sqlite_master)."""
        key = (t.backend, t.name, n_events, per_agg)
        if key in self.templates:
            return self.templates[key]
        path = t.new_store()
        t.write_sample(path, C.agg_ids(1, prefix=0xA)[0])
        roles = dict(t.schema_table_roles(path) if hasattr(t, "schema_table_roles")
                     else t.clone_roles)
        roles.pop("columns", None)
        t0 = time.perf_counter()
        C.sqlite_clone_fill(path, n_events=n_events - 1, events_per_agg=per_agg,
                            agg_id_fn=t.fill_agg_id, **roles)
        self.log(f"  built {C.size_label(n_events)}-event template for {t.name} "
                 f"in {time.perf_counter() - t0:.1f}s")
        self.templates[key] = path
        return path

    def copy_of(self, template, t):
        path = t.new_store()
        t.drop_store(path)
        C.sqlite_copy(template, path)
        return path

    # ------------------------------------------------------------------ workloads
    def w_a(self, backend):
        s = self.sizes
        ids = C.agg_ids(s.a_aggregates)

        def run(t, r):
            spec = t.new_store()
            try:
                return t.a(spec, ids, s.a_commands)
            finally:
                t.drop_store(spec)

        times, _ = self.interleaved("a", backend, s.runs, run)
        for name, xs in times.items():
            self.add("a", backend, name, s.a_commands, xs, aggregates=s.a_aggregates)

    def w_b(self, backend):
        s = self.sizes
        aid = C.agg_ids(1, prefix=0xB)[0]

        def run(t, r):
            spec = t.new_store()
            try:
                return t.b(spec, aid, s.b_events, s.b_batch)
            finally:
                t.drop_store(spec)

        times, _ = self.interleaved("b", backend, s.runs, run)
        for name, xs in times.items():
            self.add("b", backend, name, s.b_events, xs, batch=s.b_batch)

    def w_c(self, backend):
        s = self.sizes
        aid = C.agg_ids(1, prefix=0xC)[0]
        each = {}

        def run(t, r):
            spec = t.new_store()
            try:
                t.c_build(spec, aid, s.c_events)
                xs = t.c(spec, aid, s.c_repeats)
                each.setdefault(t.name, []).append(xs)
                return sum(xs) / len(xs)
            finally:
                t.drop_store(spec)

        times, _ = self.interleaved("c", backend, s.runs, run)
        for name, xs in times.items():
            self.add("c", backend, name, s.c_events, xs, repeats=s.c_repeats,
                     rebuild_s=each.get(name),
                     note="time of one rebuild (mean of the repeats in a run)")

    def w_d(self, backend):
        s = self.sizes
        n = s.d_events
        stores = {}
        for t in self.targets.get(backend, []):
            try:
                if backend == "sqlite":
                    stores[t.name] = self.template(t, n)
                else:
                    spec = t.new_store()
                    t.d_build(spec, n, max(1, n // 100))
                    stores[t.name] = spec
            except Exception as e:  # noqa: BLE001
                self.error(f"d build/{backend}/{t.name}", e)

        def run(t, r):
            if t.name not in stores:
                raise RuntimeError("no store (build failed)")
            wd = tempfile.mkdtemp(dir=self.tmp)
            try:
                if backend == "sqlite":
                    spec = self.copy_of(stores[t.name], t)
                    try:
                        return t.d(spec, n, wd, s.d_page, tag=f"_{r}")
                    finally:
                        t.drop_store(spec)
                return t.d(stores[t.name], n, wd, s.d_page, tag=f"_{r}")
            finally:
                shutil.rmtree(wd, ignore_errors=True)

        times, _ = self.interleaved("d", backend, s.runs, run)
        for name, xs in times.items():
            self.add("d", backend, name, n, xs, page=s.d_page)
        if backend == "postgres":
            for spec in stores.values():
                with contextlib.suppress(Exception):
                    self.pg_dbs.drop(spec)

    def w_e(self, backend):
        s = self.sizes
        for t in self.targets.get(backend, []):
            why = t.e_unsupported() if hasattr(t, "e_unsupported") else None
            if why:
                self.skip("e", backend, t.name, why)
                self.add("e", backend, t.name, s.e_events, [], note=why)
                continue
            try:
                self.add("e", backend, t.name, s.e_events, [], **self.latency_once(t, backend))
            except Exception as e:  # noqa: BLE001
                self.error(f"e/{backend}/{t.name}", e)

    def latency_once(self, t, backend):
        s = self.sizes
        spec = t.new_store()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        sub = subprocess.Popen(C.child_cmd("e-sub", t.name, backend, spec, str(s.e_events),
                                           str(s.e_idle_s), str(s.e_settle_s)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = sub.stdout.readline()
            if not line.startswith("IDLE"):
                sub.kill()
                raise RuntimeError(f"subscriber did not report idle CPU: {line!r} "
                                   f"{sub.stderr.read()[-1500:]}")
            idle = float(line.split()[1])
            app = C.run_child(["e-append", t.name, backend, spec, str(s.e_events),
                               str(s.e_interval[0]), str(s.e_interval[1])], timeout=300)
            out, err = sub.communicate(timeout=60)
            if sub.returncode != 0:
                raise RuntimeError(f"subscriber failed: {err[-1500:]}")
            handled = json.loads([ln for ln in out.splitlines()
                                  if ln.startswith("{")][-1])["stamps"]
        finally:
            if sub.poll() is None:
                sub.kill()
            t.drop_store(spec)
        commits = app["stamps"]
        lat = [(handled[str(i)] - c) / 1e6 for i, c in enumerate(commits) if str(i) in handled]
        return {"p50_ms": C.percentile(lat, 50), "p99_ms": C.percentile(lat, 99),
                "max_ms": max(lat) if lat else None, "samples": len(lat),
                "missing": len(commits) - len(lat),
                "idle_cpu_pct": idle, "idle_seconds": s.e_idle_s,
                "interval_ms": [x * 1e3 for x in s.e_interval]}

    def w_f(self, backend):
        s = self.sizes
        if backend != "sqlite":
            self.skip("f", backend, "*", "growth workload runs on SQLite only")
            return
        ids = C.agg_ids(s.a_aggregates, prefix=0xE)
        cid = C.agg_ids(1, prefix=0x1)[0]
        for n in s.f_sizes:
            label = C.size_label(n)
            tmpl = {}
            for t in self.targets.get(backend, []):
                try:
                    tmpl[t.name] = self.template(t, n)
                except Exception as e:  # noqa: BLE001
                    self.error(f"f build {label}/{t.name}", e)
            c_times = {}

            def run(t, r, tmpl=tmpl, c_times=c_times):
                spec = self.copy_of(tmpl[t.name], t)
                try:
                    ta = t.a(spec, ids, s.a_commands)
                    t.c_build(spec, cid, s.c_events)
                    xs = t.c(spec, cid, s.c_repeats)
                    c_times.setdefault(t.name, []).append(sum(xs) / len(xs))
                    return ta
                finally:
                    t.drop_store(spec)

            times, _ = self.interleaved("f", backend, s.f_runs, run, variant=f"a@{label}")
            for name, xs in times.items():
                self.add("f", backend, name, s.a_commands, xs, variant=f"a@{label}", prefilled=n)
            for name, xs in c_times.items():
                self.add("f", backend, name, s.c_events, xs, variant=f"c@{label}", prefilled=n)
        # growth factors: per-event cost at the big size / at the small size
        small, big = (C.size_label(x) for x in s.f_sizes)
        for row in [r for r in self.results if r["workload"] == "f"
                    and r["variant"].endswith("@" + big)]:
            kind = row["variant"].split("@")[0]
            base = next((r for r in self.results if r["workload"] == "f"
                         and r["system"] == row["system"] and r["backend"] == backend
                         and r["variant"] == f"{kind}@{small}"), None)
            if base and base.get("us_per_event") and row.get("us_per_event"):
                row["growth_vs_" + small] = row["us_per_event"] / base["us_per_event"]

    def w_g(self, backend):
        s = self.sizes
        if backend != "sqlite":
            self.skip("g", backend, "*", "peak-memory workload runs on SQLite only")
            return
        n = s.g_events
        for t in self.targets.get(backend, []):
            try:
                tmpl = self.template(t, n)
                spec = self.copy_of(tmpl, t)
                try:
                    base = C.run_child(["baseline", t.name, backend])
                    out = C.run_child(["g", t.name, backend, spec, str(n), str(s.d_page)],
                                      timeout=1800)
                finally:
                    t.drop_store(spec)
                self.add("g", backend, t.name, n, [out["seconds"]], peak_rss_mb=out["maxrss_mb"],
                         baseline_rss_mb=base["maxrss_mb"])
            except Exception as e:  # noqa: BLE001
                self.error(f"g/{backend}/{t.name}", e)

    def w_h(self, backend):
        """One store per system with one aggregate of h_events events, saved h_batch at a time by a
        class that keeps a snapshot every h_every versions; then, per run, full replays and snapshot
        loads alternately on it (SQLite: a fresh copy of that store each run)."""
        s = self.sizes
        n, every = s.h_events, s.h_every
        aid = C.agg_ids(1, prefix=0x8)[0]
        stores = {}
        for t in self.targets.get(backend, []):
            spec = None
            try:
                spec = t.new_store()
                t0 = time.perf_counter()
                with (self.pg_dbs.unsynced(spec) if backend == "postgres"
                      else contextlib.nullcontext()):
                    key = t.h_build(spec, aid, n, s.h_batch, every)
                self.log(f"  built the {n:,}-event aggregate for {t.name} in "
                         f"{time.perf_counter() - t0:.1f}s")
                if backend == "sqlite":
                    C.sqlite_checkpoint(spec)
                stores[t.name] = (spec, key)
            except Exception as e:  # noqa: BLE001
                self.error(f"h build/{backend}/{t.name}", e)
                if spec is not None:
                    with contextlib.suppress(Exception):
                        t.drop_store(spec)
        loads = {}

        def run(t, r):
            if t.name not in stores:
                raise RuntimeError("no store (build failed)")
            spec, key = stores[t.name]
            copy = self.copy_of(spec, t) if backend == "sqlite" else None
            try:
                snap, full = t.h(copy or spec, key, n, every, s.h_replays, s.h_snap_loads)
            finally:
                if copy:
                    t.drop_store(copy)
            mine = loads.setdefault(t.name, {"snap": [], "replay": []})
            mine["snap"].append(snap)
            mine["replay"].append(full)
            return {"snap": sum(snap) / len(snap), "replay": sum(full) / len(full)}

        try:
            times, _ = self.interleaved("h", backend, s.runs, run)
        finally:
            for t in self.targets.get(backend, []):
                if t.name in stores:
                    with contextlib.suppress(Exception):
                        t.drop_store(stores[t.name][0])
        at = n // every * every
        snap_per_run = max(1, s.h_snap_loads // s.h_replays) * s.h_replays
        for name, xs in times.items():
            rows = {}
            for variant in ("replay", "snap"):
                every_load = [x for run_loads in loads.get(name, {}).get(variant, [])
                              for x in run_loads]
                rows[variant] = self.add(
                    "h", backend, name, n, [x[variant] for x in xs], variant=variant,
                    loads_per_run=s.h_replays if variant == "replay" else snap_per_run,
                    load_p50_ms=(C.median(every_load) * 1e3) if every_load else None,
                    snapshot_every=every if variant == "snap" else None,
                    snapshot_at=at if variant == "snap" else None,
                    replayed_events=n - at if variant == "snap" else n,
                    note="time of one load (mean of the loads in a run)")
            snap, full = rows["snap"], rows["replay"]
            snap["speedup_vs_replay"] = (full["median_ms"] / snap["median_ms"]
                                         if snap.get("median_ms") and full.get("median_ms")
                                         else None)

    def w_i(self, backend):
        """N threads of one process share one store object (one application; raw: a connection per
        thread): each runs its share of i_commands, on 10 aggregates of its own (no conflicts)."""
        s = self.sizes
        for mode in ("cmd", "sink"):
            for n in s.i_threads:
                lat_all: dict[str, list[float]] = {}

                def run(t, r, mode=mode, n=n, lat_all=lat_all):
                    spec = t.new_store()
                    try:
                        wall, lat = t.i(spec, n, s.i_commands, mode)
                    finally:
                        t.drop_store(spec)
                    lat_all.setdefault(t.name, []).extend(lat)
                    return wall

                times, _ = self.interleaved("i", backend, s.runs, run, variant=f"{mode}{n}")
                for name, xs in times.items():
                    self.add("i", backend, name, s.i_commands // n * n, xs, variant=f"{mode}{n}",
                             threads=n, **C.latency_fields(lat_all.get(name, [])))

    def w_j(self, backend):
        """Loads of a 10-event aggregate, one every ms, while another thread of the same process
        writes single events without pause (raw: the reader and the writer on connections of their
        own)."""
        s = self.sizes
        # the writer: a thread of the reader's process, or another process
        for variant in ("", "proc"):
            lat_all: dict[str, list[float]] = {}
            writes: dict[str, list[int | None]] = {}

            def run(t, r, variant=variant, lat_all=lat_all, writes=writes):
                spec = t.new_store()
                try:
                    writer = (lambda: self.writer_process(t, backend, spec)) if variant else None
                    lat, w = t.j(spec, s.j_reads, writer)
                finally:
                    t.drop_store(spec)
                lat_all.setdefault(t.name, []).extend(lat)
                writes.setdefault(t.name, []).append(w)
                return sum(lat)

            times, _ = self.interleaved("j", backend, s.runs, run, variant=variant)
            for name, xs in times.items():
                self.add("j", backend, name, s.j_reads, xs, variant=variant,
                         **C.latency_fields(lat_all.get(name, [])),
                         writes_meanwhile=writes.get(name),
                         note="events/s here: reads per second of read time")

    @contextlib.contextmanager
    def writer_process(self, t, backend, spec):
        """(j)'s writer in a child process of the same system, appending without pause while
        open."""
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        child = subprocess.Popen(C.child_cmd("writer", t.name, backend, spec),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=root)
        try:
            line = child.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"(j) writer not ready: {line!r} {child.stderr.read()[-1500:]}")
            time.sleep(0.2)  # under way
            yield
            if child.poll() is not None:
                raise RuntimeError(f"(j) writer stopped early (rc={child.returncode}): "
                                   f"{child.stderr.read()[-1500:]}")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    def w_aio(self, backend):
        from bench.async_cmds import workload
        workload(self, backend)

    def w_p(self, backend):
        from bench.partitions import workload
        workload(self, backend)

    def w_k(self, backend):
        """N processes on one store, started together, each running its share of k_commands on 10
        aggregates of its own; commands/s over the span from the first start to the last end."""
        s = self.sizes
        for n in s.k_processes:
            lat_all: dict[str, list[float]] = {}

            def run(t, r, n=n, lat_all=lat_all):
                spec = t.new_store()
                try:
                    start, end, lat = self.processes_together(
                        t, backend, spec, n, s.k_commands // n, r)
                finally:
                    t.drop_store(spec)
                lat_all.setdefault(t.name, []).extend(lat)
                return end - start

            times, _ = self.interleaved("k", backend, s.runs, run, variant=f"proc{n}")
            for name, xs in times.items():
                self.add("k", backend, name, s.k_commands // n * n, xs, variant=f"proc{n}",
                         processes=n, **C.latency_fields(lat_all.get(name, [])))

    def processes_together(self, t, backend, spec, n, per, run):
        """Start n (k) children, release them at once; (first start, last end, every latency)."""
        # one untimed command: the tables exist before n processes start
        t.i(spec, 1, 1, "cmd", prefix="warm-")
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        children = [subprocess.Popen(C.child_cmd("k", t.name, backend, spec, str(per),
                                                 f"p{run}-{k}-"), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=root) for k in range(n)]
        try:
            for child in children:
                line = child.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"(k) child not ready: {line!r} "
                                       f"{child.stderr.read()[-1500:]}")
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            outs = []
            for child in children:
                out, err = child.communicate(timeout=600)
                if child.returncode != 0:
                    raise RuntimeError(f"(k) child failed (rc={child.returncode}): {err[-1500:]}")
                outs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
        return (min(o["start"] for o in outs), max(o["end"] for o in outs),
                [x for o in outs for x in o["latencies"]])

    def w_l(self, backend):
        """The todo example's HTTP server (bench/todo_http.py), eventsourcery only; needs wrk."""
        from bench import todo_http

        if todo_http.wrk_path() is None:
            self.skip("l", backend, "eventsourcery", "wrk is not installed")
            return
        seconds = 2.0 if self.args.quick else 3.0
        with contextlib.ExitStack() as stack:
            store = None
            if backend == "postgres":
                store = stack.enter_context(todo_http.postgres_database(C.pg_conninfo()))
            points = todo_http.run(store=store, seconds=seconds, log=self.log)
        for r in points:
            if not r.get("req_per_s") or not r.get("requests"):
                continue
            extra = ({"created": r["created"], "stored": r.get("events")} if r["kind"] == "add"
                     else {})
            self.add("l", backend, "eventsourcery", r["requests"], [r["requests"] / r["req_per_s"]],
                     variant=f"{r['kind']}{r['connections']:02d}", p50_ms=r["p50_ms"],
                     p99_ms=r["p99_ms"],
                     non_2xx=r["non_2xx"], socket_errors=r["socket_errors"], **extra)

    def w_web(self, backend):
        """The event browser's pages over a 1,000,000-event SQLite store (bench/web_pages.py)."""
        from bench import web_pages

        if backend != "sqlite":
            self.skip("web", backend, "eventsourcery", "the 1,000,000-event store is SQLite only")
            return
        t = next(t for t in self.targets[backend] if t.name == "eventsourcery")
        path = self.copy_of(self.template(t, web_pages.EVENTS), t)
        for row in web_pages.run(path, runs=self.sizes.runs, log=self.log):
            self.add("web", backend, "eventsourcery", row["events"], row["runs_s"],
                     variant=row["variant"], **row["extra"])
        t.drop_store(path)

    # ------------------------------------------------------------------ ratios, table
    def ratios(self):
        for row in self.results:
            if row["workload"] in ("e", "g") or not row.get("events_per_s"):
                row["vs_eventsourcing"] = row["vs_raw"] = None
                continue
            for other, key in (("eventsourcing", "vs_eventsourcing"), ("raw", "vs_raw")):
                o = next((r for r in self.results if r["workload"] == row["workload"]
                          and r["variant"] == row["variant"] and r["backend"] == row["backend"]
                          and r["system"] == other and r.get("events_per_s")), None)
                row[key] = row["events_per_s"] / o["events_per_s"] if o else None
                if other == "raw" and o and row["workload"] in ("i", "j", "k") and o.get("p99_ms"):
                    row["p99_vs_raw"] = row["p99_ms"] / o["p99_ms"]

    def goals(self) -> list[dict]:
        """The workloads' goals (BENCHMARKS.md), checked against this run's eventsourcery rows."""
        out = []

        def row(w, backend, variant=""):
            return next((r for r in self.results if r["workload"] == w and r["backend"] == backend
                         and r["variant"] == variant and r["system"] == "eventsourcery"), None)

        def check(goal, backend, value, op, target, unit=""):
            if value is None:
                return
            met = (value >= target if op == ">=" else value <= target if op == "<="
                   else value < target)
            out.append({"goal": goal, "backend": backend, "measured": value,
                        "target": f"{op} {target}{unit}", "met": met})

        big = C.size_label(self.sizes.f_sizes[1])
        small = C.size_label(self.sizes.f_sizes[0])
        for backend in ("sqlite", "postgres"):
            r = row("a", backend)
            if r:
                check("(a) commands vs eventsourcing", backend, r.get("vs_eventsourcing"), ">=",
                      4.0 if backend == "sqlite" else 3.0, "x")
            for w, key, target, name in (("b", "vs_raw", 0.8, "(b) batch append vs raw"),
                                         ("c", "vs_eventsourcing", 4.0,
                                          "(c) rebuild vs eventsourcing"),
                                         ("d", "vs_raw", 0.7, "(d) catch-up vs raw read+decode")):
                r = row(w, backend)
                if r:
                    check(name, backend, r.get(key), ">=", target, "x")
            r = row("e", backend)
            if r and r.get("p50_ms") is not None:
                check("(e) p50 commit->handler", backend, r["p50_ms"], "<=",
                      5.0 if backend == "sqlite" else 2.0, " ms")
                check("(e) idle subscriber CPU", backend, r["idle_cpu_pct"], "<", 2.0,
                      " % of a core")
            for kind in ("a", "c"):
                r = row("f", backend, f"{kind}@{big}")
                if r and r.get("growth_vs_" + small) is not None:
                    check(f"(f) per-event cost of ({kind}) at {big} / at {small}", backend,
                          r["growth_vs_" + small], "<=", 1.25, "x")
            r = row("g", backend)
            if r:
                check(f"(g) peak RSS of catch-up over {C.size_label(r['events'])}", backend,
                      r["peak_rss_mb"], "<", 100.0, " MB")
            r = row("h", backend, "snap")
            if r:
                check("(h) snapshot load vs full replay", backend, r.get("speedup_vs_replay"), ">=",
                      20.0, "x")
            r = row("i", backend, "sink16")
            if r:
                check("(i) durable single-event appends/s, 16 threads", backend,
                      r.get("events_per_s"), ">=", 7000.0 if backend == "sqlite" else 8000.0, "/s")
            for n in (8, 16):
                r = row("i", backend, f"cmd{n}")
                if not r:
                    continue
                if backend == "postgres":
                    check(f"(i) commands/s, {n} threads", backend, r.get("events_per_s"), ">=",
                          3500.0, "/s")
                    check(f"(i) commands, {n} threads, vs eventsourcing", backend,
                          r.get("vs_eventsourcing"), ">=", 4.0, "x")
                if backend == "postgres" or n == 8:
                    check(f"(i) commands, {n} threads, vs raw", backend, r.get("vs_raw"), ">=", 0.9,
                          "x")
                if backend == "sqlite" and n == 8 and r.get("p99_ms") is not None:
                    check("(i) command p99, 8 threads", backend, r["p99_ms"], "<=", 7.0, " ms")
            for variant, where in (("", "thread"), ("proc", "process")):
                r = row("j", backend, variant)
                if r and r.get("p99_vs_raw") is not None:
                    check(f"(j) read p99 under a writer {where} vs raw", backend, r["p99_vs_raw"],
                          "<=", 1.5, "x")
            r = row("k", backend, "proc8")
            if r and backend == "postgres":
                check("(k) commands, 8 processes, vs raw", backend, r.get("vs_raw"), ">=", 0.9, "x")
            r = row("aio", backend, "tsk8")
            if r and r.get("throughput_vs_threads") is not None:
                check("(aio) commands/s, 8 tasks / 8 threads", backend, r["throughput_vs_threads"],
                      ">=", 0.8, "x")
                check("(aio) command p99, 8 tasks / 8 threads", backend, r["p99_vs_threads"],
                      "<=", 2.0, "x")
            r = row("p", backend, "react4")
            if r and r.get("speedup_vs_1") is not None:
                check("(p) 20 ms reactor, events/s of 4 instances / 1", backend, r["speedup_vs_1"],
                      ">=", 3.5, "x")
            for variant, what in (("join2", "join 1 -> 2"), ("join4", "join 2 -> 4"),
                                  ("busy2", "busy join 1 -> 2"),
                                  ("kill3", "kill -9 4 -> 3"), ("kill1", "kill -9 2 -> 1")):
                r = row("p", backend, variant)
                if r and r.get("median_ms") is not None:
                    check(f"(p) rebalance after {what} instances", backend,
                          r["median_ms"] / 1e3, "<=", 15.0, " s")
            one, many = row("l", backend, "get01"), row("l", backend, "get32")
            if one and one.get("p50_ms") is not None:
                check("(l) keep-alive GET p50, 1 connection", backend, one["p50_ms"], "<", 2.0,
                      " ms")
            if one and many and one.get("events_per_s"):
                check("(l) GETs/s at 32 connections / at 1", backend,
                      many["events_per_s"] / one["events_per_s"], ">=", 1.0, "x")
        return out

    def table(self) -> str:
        def f(x, fmt):
            return "-" if x is None else format(x, fmt)

        lines = []
        hdr = (f"{'workload':<10}{'backend':<9}{'system':<14}{'n':>9}{'runs':>5}{'events/s':>11}"
               f"{'median ms':>11}{'min ms':>10}{'vs es':>7}{'vs raw':>7}  notes")
        order = {w: i for i, w in enumerate(C.WORKLOADS)}
        border = {"sqlite": 0, "postgres": 1}
        rows = sorted(self.results, key=lambda r: (order[r["workload"]], border[r["backend"]],
                                                   r.get("prefilled", 0), r.get("rank", 0),
                                                   r["variant"],
                                                   C.SYSTEMS.index(r["system"])))
        last = None
        for r in rows:
            head = (r["workload"], r["backend"], r["variant"])
            if head != last:
                if r["workload"] != (last or ("",))[0]:
                    lines.append("")
                    lines.append(f"({r['workload']}) {TITLES[r['workload']]}")
                    lines.append(hdr)
                last = head
            w = r["workload"] + ("." + r["variant"] if r["variant"] else "")
            notes = ""
            if r["workload"] == "e":
                if r.get("p50_ms") is not None:
                    notes = (f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  idle CPU "
                             f"{r['idle_cpu_pct']:.2f}% of a core  ({r['samples']} events)")
                else:
                    notes = r.get("note", "")
            elif r["workload"] == "g":
                notes = (f"peak RSS {r['peak_rss_mb']:.1f} MB (interpreter+imports alone "
                         f"{r['baseline_rss_mb']:.1f} MB)")
            elif r["workload"] == "f":
                g = [k for k in r if k.startswith("growth_vs_")]
                notes = f"{r['us_per_event']:.1f} us/event" if r.get("us_per_event") else ""
                if g:
                    notes += f"  x{r[g[0]]:.2f} vs {g[0][10:]}"
            elif r["workload"] == "h" and r.get("median_ms"):
                notes = (
                    f"{r['median_ms']:.3f} ms per load, {r['replayed_events']:,} events replayed")
                if r.get("snapshot_at"):
                    notes += f" after the snapshot at {r['snapshot_at']:,}"
                if r.get("speedup_vs_replay"):
                    notes += f"  x{r['speedup_vs_replay']:.1f} vs full replay"
            elif r["workload"] == "c":
                notes = f"{r['median_ms']:.1f} ms per rebuild" if r.get("median_ms") else ""
            elif r["workload"] == "l" and r.get("p50_ms") is not None:
                notes = f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                if r.get("stored") is not None:
                    notes += f"  201s {r['created']}, events stored {r['stored']}"
            elif r["workload"] == "aio":
                from bench.async_cmds import notes as async_notes
                notes = async_notes(r)
            elif r["workload"] == "p":
                from bench.partitions import notes as partition_notes
                notes = partition_notes(r)
            elif r["workload"] in ("i", "j", "k") and r.get("p50_ms") is not None:
                notes = (f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max "
                         f"{r['max_ms']:.1f} ms")
                if r.get("p99_vs_raw") is not None:
                    notes += f"  p99 x{r['p99_vs_raw']:.2f} of raw"
            rate, median = f(r.get("events_per_s"), ",.0f"), f(r.get("median_ms"), ",.1f")
            fastest, vs_peer = f(r.get("min_ms"), ",.1f"), f(r.get("vs_eventsourcing"), ".2f")
            lines.append(f"{w:<10}{r['backend']:<9}{r['system']:<14}{r['events']:>9}{r['runs']:>5}"
                         f"{rate:>11}{median:>11}{fastest:>10}{vs_peer:>7}"
                         f"{f(r.get('vs_raw'), '.2f'):>7}  {notes}")
        goals = self.goals()
        if goals:
            lines.append("")
            lines.append("goals, eventsourcery in this run:")
            for g in goals:
                lines.append(f"  {'met ' if g['met'] else 'MISS'}  {g['goal']:<48}{g['backend']:<9}"
                             f"{g['measured']:>9.2f}   target {g['target']}")
        if self.skipped:
            lines.append("")
            lines.append("skipped:")
            seen = set()
            for s in self.skipped:
                k = (s["workload"], s["backend"], s["system"], s["reason"])
                if k not in seen:
                    seen.add(k)
                    lines.append(f"  {s['workload']}/{s['backend']}/{s['system']}: {s['reason']}")
        if self.errors:
            lines.append("")
            lines.append("ERRORS:")
            for e in self.errors:
                lines.append(f"  {e['where']}: {e['error']}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ profile
    def profile(self, outdir):
        """cProfile eventsourcery's (a)-(d) once each (SQLite, run sizes); prints the top
        functions by own time and writes .prof files into outdir."""
        import cProfile
        import pstats
        os.makedirs(outdir, exist_ok=True)
        t = next(t for t in self.targets["sqlite"] if t.name == "eventsourcery")
        s = self.sizes
        aid = C.agg_ids(1)[0]
        calls = {
            "a": lambda spec, wd: t.a(spec, C.agg_ids(s.a_aggregates), s.a_commands),
            "b": lambda spec, wd: t.b(spec, aid, s.b_events, s.b_batch),
            "c": lambda spec, wd: t.c(spec, aid, s.c_repeats),
            "d": lambda spec, wd: t.d(spec, s.d_events, wd, s.d_page),
        }
        for w in [w for w in "abcd" if w in self.args.only]:
            spec = t.new_store() if w != "d" else self.copy_of(self.template(t, s.d_events), t)
            if w == "c":
                t.c_build(spec, aid, s.c_events)
            path = os.path.join(outdir, f"{w}.prof")
            wd = tempfile.mkdtemp(dir=self.tmp)
            cProfile.runctx("call(spec, wd)", {}, {"call": calls[w], "spec": spec, "wd": wd}, path)
            t.drop_store(spec)
            st = pstats.Stats(path)
            total = st.total_tt
            print(f"\n=== profile ({w}) {TITLES[w]}: total {total:.2f}s; top by own time ===")
            rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:18]
            for (fn, line, name), (_cc, nc, tt, ct, _) in rows:
                print(f"  {100 * tt / total:5.1f}% own {100 * ct / total:5.1f}% cum  {nc:>9} "
                      f"calls  {os.path.basename(fn)}:{line}({name})")

    # ------------------------------------------------------------------ main
    def run(self):
        a = self.args
        t_start = time.perf_counter()
        self.build_targets()
        if a.profile:
            self.profile(a.profile)
            return 0
        self.record_settings()
        self.probe = C.probe_commits(self.tmp, 0.6 if a.quick else 2.0)
        self.log(f"disk probe: {self.probe['commits_per_s_full']:,.0f} durable 1-row commits/s "
                 f"(WAL, FULL), {self.probe['commits_per_s_normal']:,.0f}/s with NORMAL")
        for w in a.only:
            for backend in a.backends:
                if backend not in self.targets:
                    continue
                self.log(f"[{time.perf_counter() - t_start:6.1f}s] workload {w} on {backend} ...")
                try:
                    getattr(self, "w_" + w)(backend)
                except Exception as e:  # noqa: BLE001
                    self.error(f"workload {w}/{backend}", e)
        self.ratios()
        probe_end = C.probe_commits(self.tmp, 0.6 if a.quick else 2.0)
        elapsed = time.perf_counter() - t_start
        print(self.table())
        print("\ndisk probe (1-row BEGIN IMMEDIATE/INSERT/COMMIT, WAL, synchronous=FULL): "
              f"{self.probe['commits_per_s_full']:,.0f} commits/s at the start, "
              f"{probe_end['commits_per_s_full']:,.0f} at the end "
              f"({self.probe['us_per_commit_full']:.0f} / {probe_end['us_per_commit_full']:.0f} us "
              "each)")
        print(f"\ntotal wall time {elapsed:.1f}s; python {sys.version.split()[0]} "
              f"(-O level {sys.flags.optimize}); sqlite {C.sqlite3.sqlite_version}")
        doc = {
            "meta": {
                "argv": sys.argv, "quick": a.quick,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "wall_seconds": elapsed, "machine": C.machine_info(self.pg_version),
                "tmpdir_on_tmpfs": C.on_tmpfs(self.tmp), "backends": list(self.targets),
                "settings": self.settings, "no_peer": a.no_peer,
                "disk_probe_start": self.probe, "disk_probe_end": probe_end,
            },
            "sizes": self.sizes.as_dict(),
            "results": self.results,
            "goals": self.goals(),
            "skipped": self.skipped,
            "errors": self.errors,
        }
        if a.json:
            with open(a.json, "w") as f:
                json.dump(doc, f, indent=1, default=str)
            self.log(f"wrote {a.json}")
        return 1 if self.errors else 0

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.pg_dbs:
            self.pg_dbs.drop_all()


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, fewer runs: < 60 s in total")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--only", default=None,
                   help="workloads, e.g. a,b,d (default: all; with --quick all but l, the todo app "
                        "under wrk, and web, the event browser over 1,000,000 events)")
    p.add_argument("--backend", default="sqlite,postgres", help="sqlite,postgres (default: both)")
    p.add_argument("--runs", type=int, default=None,
                   help="runs per measurement (default 5; --quick 2)")
    p.add_argument("--no-peer", action="store_true",
                   help="do not run eventsourcing (otherwise its absence is an error)")
    p.add_argument("--force-postgres", action="store_true",
                   help="run the Postgres peer/raw rows even when eventsourcery_pg is missing")
    p.add_argument("--tmpdir", default=None,
                   help="where the store files go (default: the system temp dir)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="instead of the benchmark: cProfile eventsourcery's a-d once, print hot "
                        "spots")
    a = p.parse_args(argv)
    if a.only is None:
        a.only = ",".join(w for w in C.WORKLOADS if not (a.quick and w in ("l", "web")))
    a.only = [w.strip() for w in a.only.split(",") if w.strip()]
    bad = [w for w in a.only if w not in C.WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(C.WORKLOADS)}")
    a.backends = [b.strip() for b in a.backend.split(",") if b.strip()]
    bad = [b for b in a.backends if b not in ("sqlite", "postgres")]
    if bad:
        p.error(f"unknown backend(s) {bad}")
    return a


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    h = Harness(args)
    try:
        return h.run()
    finally:
        h.cleanup()


if __name__ == "__main__":
    sys.exit(main())
