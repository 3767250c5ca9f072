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
    result = bench_threads.run_scaling(size=200, reads=400, rounds=2)
    assert list(bench_threads.SCALING_STORES) == STORES
    assert [(r["store"], r["threads"]) for r in result["rows"]] == [(s, n) for s in STORES for n in (1, 2)]
    for r in result["rows"]:
        assert r["ops_per_sec"] > 0 and r["wall_seconds"] > 0 and r["cpu_seconds"] >= 0
        assert r["cpus"] == r["cpu_seconds"] / r["wall_seconds"]
        assert r["ratio"] > 0
        if r["threads"] == 1:
            assert r["ratio"] == 1.0
        # the spread of the rounds (each round in rounds_ops_per_sec)
        assert r["reads"] == 400
        assert len(r["rounds_ops_per_sec"]) == 2
        assert r["ops_per_sec"] == max(r["rounds_ops_per_sec"])
        assert r["ops_per_sec_min"] == min(r["rounds_ops_per_sec"])
        assert r["ops_per_sec_median"] == sum(r["rounds_ops_per_sec"]) / 2
        assert r["ratio_median"] > 0 and r["cpus_median"] >= 0
        if r["threads"] == 1:
            assert r["ratio_median"] == 1.0
    for one, two in zip(result["rows"][::2], result["rows"][1::2]):
        assert two["ratio_median"] == two["ops_per_sec_median"] / one["ops_per_sec_median"]
    assert result["min_seconds"] == 0.0 and result["reads"] == 400
    info = result["interpreter"]
    assert info["python"] == sys.version.split()[0]
    assert info["cpu_count"] == os.cpu_count()
    assert info["affinity_cpus"] == len(os.sched_getaffinity(0))
    assert isinstance(info["free_threaded_build"], bool) and isinstance(info["gil_enabled"], bool)

    text = bench_threads.format_scaling(result).splitlines()
    assert text[0].startswith("thread scaling: 200 str keys, 400 reads per thread")
    assert f"Python {info['python']}" in text[1] and "sched_getaffinity" in text[1]
    assert ("GIL off" if not info["gil_enabled"] else "GIL on") in text[1]
    assert "CPUs got" in text[2] and "median" in text[2] and "min" in text[2]
    rows = [line.split() for line in text[3:-1]]
    assert len(rows) == 2 * len(STORES)
    for line, r in zip(text[3:-1], result["rows"]):
        assert line.startswith(r["store"])
        cells = line.split()[len(r["store"].split()):]
        assert cells[0] == str(r["threads"]) and cells[1] == "400"
        assert cells[2:5] == [f"{r[k]:,.0f}" for k in ("ops_per_sec", "ops_per_sec_median",
                                                        "ops_per_sec_min")]
        assert cells[5:7] == [f"{r['ratio']:.2f}x", f"{r['ratio_median']:.2f}x"]
    assert "median, min: of all rounds" in text[-1]


def test_min_seconds_sets_each_stores_reads_from_a_calibration_round():
    # longer rounds (--full): every store reads at least `reads`, the same
    # count with 1 and 2 threads; the header says the counts differ by store
    stores = ["dict", "LockedTable"]
    result = bench_threads.run_scaling(size=200, reads=300, rounds=1, stores=stores,
                                       min_seconds=0.002)
    assert result["min_seconds"] == 0.002
    rows = result["rows"]
    assert [(r["store"], r["threads"]) for r in rows] == [(s, n) for s in stores for n in (1, 2)]
    for one, two in zip(rows[::2], rows[1::2]):
        assert one["reads"] == two["reads"] >= 300
        assert one["reads"] <= bench_threads.SCALING_MAX_READS
    head = bench_threads.format_scaling(result).splitlines()[0]
    counts = sorted({r["reads"] for r in rows})
    if len(counts) > 1:
        assert f"{counts[0]:,}-{counts[-1]:,} reads per thread (rounds of at least 0.002 s" in head
    else:
        assert f"{counts[0]:,} reads per thread" in head


def test_full_asks_for_rounds_of_half_a_second_quick_does_not(monkeypatch, capsys):
    from fastkv import bench

    seen = []
    real = bench_threads.run_scaling

    def fake(**kwargs):
        seen.append(kwargs)
        return real(size=50, reads=50, rounds=1, stores=["dict"])

    monkeypatch.setattr(bench_threads, "run_scaling", fake)
    common = ["--sizes", "10", "--scenarios", "read", "--strategies", "dict", "--repeat", "1",
              "--min-time", "0.001", "--no-scale", "--scaling"]
    assert bench.main(["--full"] + common) == 0
    assert bench.main(["--quick"] + common) == 0
    assert bench.main(["--full", "--scaling-reads", "100"] + common) == 0
    assert seen[0]["min_seconds"] == bench_threads.SCALING_MIN_SECONDS == 0.5
    assert seen[0]["reads"] == bench_threads.SCALING_READS
    assert seen[1]["min_seconds"] == 0.0 and seen[1]["reads"] == bench_threads.SCALING_READS // 4
    assert seen[2]["min_seconds"] == 0.0 and seen[2]["reads"] == 100
    assert "thread scaling: 50 str keys" in capsys.readouterr().out


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
    assert report["scaling"]["min_seconds"] == 0.0      # --quick: fixed, short rounds
    for r in report["scaling"]["rows"]:
        assert r["reads"] == 200 and len(r["rounds_ops_per_sec"]) == 1
        assert r["ops_per_sec_min"] == r["ops_per_sec_median"] == r["ops_per_sec"]
    no = subprocess.run(cmd[:cmd.index("--scaling")] + ["--no-scaling"], capture_output=True, text=True,
                        timeout=240, cwd=tmp_path, env=env)
    assert no.returncode == 0, no.stderr[-3000:]
    assert "thread scaling:" not in no.stdout
