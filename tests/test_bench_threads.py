"""The thread-scaling part of `python -m fastkv bench` (fastkv.bench_threads,
issue 12): its rows, its header (interpreter, CPUs), when it runs. Tiny runs:
these tests check the structure, never the timings."""

import json
import os
import subprocess
import sys

import fastkv
from fastkv import bench_threads

STORES = ["dict", "dict copies", "dict+Lock", "FrozenTable", "LockedTable", "OwnerTable protected"]


def test_every_store_has_a_row_per_thread_count():
    result = bench_threads.run_scaling(size=200, reads=400, rounds=1)
    assert list(bench_threads.SCALING_STORES) == STORES
    assert [(r["store"], r["threads"]) for r in result["rows"]] == [(s, n) for s in STORES for n in (1, 2)]
    for r in result["rows"]:
        assert r["ops_per_sec"] > 0 and r["wall_seconds"] > 0 and r["cpu_seconds"] >= 0
        assert r["cpus"] == r["cpu_seconds"] / r["wall_seconds"]
        assert r["ratio"] > 0
        if r["threads"] == 1:
            assert r["ratio"] == 1.0
    info = result["interpreter"]
    assert info["python"] == sys.version.split()[0]
    assert info["cpu_count"] == os.cpu_count()
    assert info["affinity_cpus"] == len(os.sched_getaffinity(0))
    assert isinstance(info["free_threaded_build"], bool) and isinstance(info["gil_enabled"], bool)

    text = bench_threads.format_scaling(result).splitlines()
    assert text[0].startswith("thread scaling: 200 str keys, 400 reads per thread")
    assert f"Python {info['python']}" in text[1] and "sched_getaffinity" in text[1]
    assert ("GIL off" if not info["gil_enabled"] else "GIL on") in text[1]
    assert "CPUs got" in text[2]
    rows = [line.split() for line in text[3:-1]]
    assert len(rows) == 2 * len(STORES)
    for line, r in zip(text[3:-1], result["rows"]):
        assert line.startswith(r["store"]) and line.split()[len(r["store"].split())] == str(r["threads"])


def test_runs_by_default_only_on_a_free_threaded_build_with_the_gil_off(monkeypatch):
    cases = {(True, False): True, (True, True): False, (False, True): False}
    for (ft, gil), expected in cases.items():
        monkeypatch.setattr(bench_threads, "interpreter_info",
                            lambda ft=ft, gil=gil: {"free_threaded_build": ft, "gil_enabled": gil})
        assert bench_threads.runs_by_default() is expected


def test_the_command_prints_the_scaling_table_and_writes_it_to_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastkv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "fastkv", "bench", "--quick", "--sizes", "10", "--scenarios", "read",
           "--strategies", "dict", "--repeat", "1", "--min-time", "0.001", "--no-scale",
           "--scaling", "--scaling-size", "100", "--scaling-reads", "200", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "\nthread scaling: 100 str keys, 200 reads per thread, best of 1 rounds\n" in proc.stdout
    report = json.loads(out.read_text())
    assert [(r["store"], r["threads"]) for r in report["scaling"]["rows"]] == [
        (s, n) for s in STORES for n in (1, 2)]
    no = subprocess.run(cmd[:cmd.index("--scaling")] + ["--no-scaling"], capture_output=True, text=True,
                        timeout=240, cwd=tmp_path, env=env)
    assert no.returncode == 0, no.stderr[-3000:]
    assert "thread scaling:" not in no.stdout
