"""`python -m fastkv bench` end to end: the command runs, its JSON is complete,
its chart is written, missing peers are skipped (never an error).

The runs use tiny sizes and `--repeat 1 --min-time 0.001`: these tests check
the command, never its timings.
"""

import json
import os
import subprocess
import sys

import pytest

import fastkv
from fastkv import bench

FAST = ["--repeat", "1", "--min-time", "0.001", "--threads", "2", "--procs", "2"]
SIZES = [10, 200]

# Strategies that must be measured wherever fastkv runs: never skipped.
ALWAYS = {"dict", "frozen", "module", "module-state", "locked", "owner-private", "owner-protected",
          "agent", "dict-lock", "queue-owner"}


def _env():
    """The subprocess imports the very fastkv this test process imported."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastkv.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    cmd = [sys.executable, "-m", "fastkv", "bench", "--quick",
           "--sizes", ",".join(map(str, SIZES)), *FAST, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_quick_run_has_the_processes_scenario(quick_run):
    proc, report = quick_run
    assert "\nprocesses: 2 worker processes read one 200-key table" in proc.stdout
    assert "SharedTable targets at 200 keys" in proc.stdout
    rows = {(r["store"], r.get("method")): r for r in report["processes"]["results"]}
    for store in ("shared", "frozen-copy", "manager"):
        for method in ("fork", "spawn"):
            r = rows[store, method]
            assert r["status"] == "ok" and r["reads_per_s"] > 0 and r["procs"] == 2, r
    assert set(report["processes"]["targets"]) >= {
        "hot_read_ns", "dict_read_ns", "cold_read_us", "manager_read_us", "open_ms", "unpickle_ms",
        "publish_ms", "frozen_put_ms"}


def test_quick_run_prints_header_and_one_table_per_scenario(quick_run):
    proc, _ = quick_run
    out = proc.stdout
    assert "quick mode" in out
    assert f"{os.cpu_count()} CPUs" in out
    assert sys.version.split()[0] in out
    assert "compiled:" in out
    assert "only the ratios within this run mean something" in out
    for scenario in bench.SCENARIOS:
        assert f"\n{scenario}: " in out
    for s in bench.STRATEGIES.values():
        assert s.label in out
    for size in SIZES:
        assert f"{size:,} keys" in out
    assert "slower" in out
    assert proc.stderr.strip(), "no progress display on stderr"


def test_json_is_complete(quick_run):
    _, report = quick_run
    assert report["sizes"] == SIZES
    assert report["scenarios"] == list(bench.SCENARIOS)
    m = report["machine"]
    assert m["cpu_count"] == os.cpu_count()
    assert m["python_version"] == sys.version.split()[0]
    assert m["compiled"] == list(fastkv.COMPILED)
    assert "ratio" in report["note"]
    assert [s["id"] for s in report["strategies"]] == list(bench.STRATEGIES)

    cells = {}
    for r in report["results"]:
        key = (r["scenario"], r["size"], r["strategy"])
        assert key not in cells, key
        cells[key] = r
    expected = {(scn, size, sid) for scn in bench.SCENARIOS for size in SIZES
                for sid in bench.STRATEGIES}
    assert set(cells) == expected

    for key, r in cells.items():
        assert r["status"] in ("ok", "skipped"), (key, r)
        if r["status"] == "skipped":
            assert r["reason"], key
            assert key[2] not in ALWAYS, (key, r["reason"])
        else:
            assert r["ops"] > 0 and r["best_seconds"] > 0 and r["runs"] >= 1
            assert r["ops_per_sec"] == pytest.approx(r["ops"] / r["best_seconds"])
            assert 0 < r["median_ops_per_sec"] <= r["ops_per_sec"]
            assert r["slower_than_fastest"] >= 1.0
            assert r["vs_dict"] > 0
    for scn in bench.SCENARIOS:
        for size in SIZES:
            ok = [cells[(scn, size, sid)] for sid in bench.STRATEGIES
                  if cells[(scn, size, sid)]["status"] == "ok"]
            assert min(r["slower_than_fastest"] for r in ok) == pytest.approx(1.0)
            assert cells[(scn, size, "dict")]["vs_dict"] == pytest.approx(1.0)

    builds = {(b["size"], b["strategy"]): b for b in report["builds"]}
    assert set(builds) == {(size, sid) for size in SIZES for sid in bench.STRATEGIES}


def test_reference_rows_are_measured_or_name_the_class_standing_in(quick_run):
    _, report = quick_run
    for r in report["results"]:
        if r["strategy"].startswith("ref-") and r["status"] == "skipped":
            name = bench.STRATEGIES[r["strategy"]].label.split()[1].split("(")[0]
            assert name in fastkv.NOT_COMPILED, r
            assert "not compiled" in r["reason"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    rc = bench.main(["bench", "--sizes", "10,50", "--scenarios", "read,mix",
                     "--strategies", "dict,frozen,locked,ref-*", *FAST,
                     "--plot", str(png), "--no-progress"])
    assert rc == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_missing_peer_is_skipped_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cachebox", None)  # import cachebox -> ImportError
    out = tmp_path / "b.json"
    rc = bench.main(["--sizes", "10", "--scenarios", "read,write",  # no "bench": the console script
                     "--strategies", "dict,cachebox", *FAST, "--json", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["strategy"]): r for r in report["results"]}
    for scn in ("read", "write"):
        assert rows[(scn, "dict")]["status"] == "ok"
        assert rows[(scn, "cachebox")]["status"] == "skipped"
        assert "cachebox not installed" in rows[(scn, "cachebox")]["reason"]
    assert "cachebox not installed" in capsys.readouterr().out


def test_strategy_patterns_scenario_filter_and_markdown(tmp_path):
    out = tmp_path / "b.json"
    md = tmp_path / "b.md"
    rc = bench.main(["bench", "--sizes", "20", "--scenarios", "write",
                     "--strategies", "ref-*,dict", *FAST, "--json", str(out),
                     "--markdown", str(md), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    ids = [s["id"] for s in report["strategies"]]
    assert ids == ["dict"] + [i for i in bench.STRATEGIES if i.startswith("ref-")]
    assert {r["scenario"] for r in report["results"]} == {"write"}
    lines = md.read_text().splitlines()
    assert lines[0].startswith("**write: ")
    assert "| strategy | 20 keys |" in lines
    assert any(line.startswith("| dict | ") for line in lines)
    # which row is fastest is a measurement (a noisy one at --repeat 1): only
    # that the table names one
    assert any("(1.00x)" in line for line in lines)


@pytest.mark.parametrize("argv", [
    ["--strategies", "nosuch"],
    ["--scenarios", "read,fly"],
    ["--sizes", "0"],
    ["--sizes", "ten"],
    ["--threads", "0"],
    ["--quick", "--full"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["bench", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_sizes_accept_suffixes():
    assert bench._parse_sizes("10,1k,100_000,1M") == [10, 1_000, 100_000, 1_000_000]


def test_list(capsys):
    assert bench.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for sid in bench.STRATEGIES:
        assert sid in out


def test_hand_rolled_peers_behave():
    owner = bench.QueueOwner({"a": 1})
    try:
        assert owner.get("a") == 1
        owner.put("b", 2)
        owner.sync()
        assert owner.get("b") == 2
        assert owner.get("missing") is None
        with pytest.raises(TypeError):
            owner.get([])  # an error on the owner reaches the caller
        assert owner.get("a") == 1  # and the owner keeps serving
    finally:
        owner.close()
    locked = bench.LockedDict({"a": 1})
    locked.put("b", 2)
    assert (locked.get("a"), locked.get("b"), locked.get("c", 3)) == (1, 2, 3)


def test_records_are_shaped_like_the_articles():
    data = bench.make_data(2_000)
    assert len(data) == 2_000
    rec = data["key:1999"]
    assert len(rec) == 12 and all(isinstance(v, str) for v in rec.values())
    assert len({id(v) for v in data.values()}) == bench.RECORD_POOL


def test_a_build_expected_past_the_budget_is_skipped():
    # sizes past the trial build's are extrapolated from it: with a budget no
    # build meets, the store is skipped with the reason, nothing is measured
    report = bench.run([bench.PROBE_SIZE * 2], ["read"], [bench.STRATEGIES["module"]],
                       repeat=1, min_time=0.001, build_budget=1e-9, progress=False)
    (r,) = report["results"]
    assert r["status"] == "skipped" and r["reason"].startswith("build estimated at"), r
