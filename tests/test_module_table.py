"""ModuleTable: data compiled into a generated module.

ModuleTable exists once (Python by nature), so these tests take no ``impl``.
"""

import gc
import importlib
import math
import sys
import threading
import types
from collections.abc import Mapping, MutableMapping

import pytest

import fastkv
import fastkv.module
from fastkv import ModuleTable


def constants(module):
    return {k: v for k, v in vars(module).items() if k.startswith("_C") and k[2:].isdigit()}


def test_is_exported_and_a_mapping_not_a_mutable_mapping():
    assert fastkv.ModuleTable is fastkv.module.ModuleTable
    t = ModuleTable({"a": 1})
    assert isinstance(t, Mapping)
    assert not isinstance(t, MutableMapping)
    with pytest.raises(TypeError):
        t["a"] = 2
    with pytest.raises(TypeError):
        hash(t)


def test_construction_like_dict():
    assert ModuleTable({"a": 1}, b=2).to_dict() == {"a": 1, "b": 2}
    assert ModuleTable([("a", 1), ("b", 2)]).to_dict() == {"a": 1, "b": 2}
    assert ModuleTable().to_dict() == {}
    assert ModuleTable(data=1).to_dict() == {"data": 1}  # data is positional-only
    with pytest.raises(TypeError):
        ModuleTable(5)


def test_generated_module_state_function():
    t = ModuleTable({"fr": "France", "jp": "Japan"})
    module = t.module
    assert isinstance(module, types.ModuleType)
    assert module.state("fr") == "France"
    assert module.state() == {"fr": "France", "jp": "Japan"}
    with pytest.raises(TypeError):
        module.state()["x"] = 1  # state() is read-only
    with pytest.raises(KeyError) as info:
        module.state("de")
    assert info.value.args == ("de",)
    assert t["fr"] == "France" and t.get("de") is None and "jp" in t and len(t) == 2


def test_default_name_is_unique_and_registered():
    a, b = ModuleTable(x=1), ModuleTable(x=2)
    assert a.name != b.name
    for t in (a, b):
        assert t.name.startswith("fastkv._generated.table_")
        assert t.module.__name__ == t.name
        assert sys.modules[t.name] is t.module
        assert importlib.import_module(t.name) is t.module
    generated = importlib.import_module("fastkv._generated")
    assert getattr(generated, a.name.rpartition(".")[2]) is a.module


def test_custom_name_is_importable():
    name = "fastkv_test_countries"
    t = ModuleTable({"fr": "France"}, name=name)
    try:
        mod = importlib.import_module(name)
        assert mod is t.module and mod.state("fr") == "France"
        t.put("br", "Brazil")
        assert importlib.import_module(name).state("br") == "Brazil"
    finally:
        del t, mod
        gc.collect()
    assert name not in sys.modules


def test_names_in_use_or_invalid_are_refused():
    with pytest.raises(ValueError):
        ModuleTable(name="sys")  # never clobbers a real module
    with pytest.raises(ValueError):
        ModuleTable(name="not a name")
    with pytest.raises(ValueError):
        ModuleTable(name="")
    with pytest.raises(TypeError):
        ModuleTable(name=3)
    first = ModuleTable(a=1, name="fastkv_test_taken")
    with pytest.raises(ValueError):
        ModuleTable(a=2, name="fastkv_test_taken")
    assert sys.modules["fastkv_test_taken"] is first.module
    del first
    gc.collect()
    second = ModuleTable(a=2, name="fastkv_test_taken")  # released by the collected table
    assert sys.modules["fastkv_test_taken"].state("a") == 2
    del second
    gc.collect()


def test_collected_table_leaves_sys_modules():
    t = ModuleTable(a=1)
    name = t.name
    assert name in sys.modules
    del t
    gc.collect()
    assert name not in sys.modules


def test_literals_are_written_out_and_other_values_are_constants():
    obj, nan = object(), float("nan")
    literal_list = [1, "two", (3.5, -0.0), {"k": b"v"}, {7, 8}, None, True]
    t = ModuleTable(
        {
            "list": literal_list,
            "big": 10**50,
            "obj": obj,
            "nan": nan,
            "inf": math.inf,
            "frozen": frozenset({1}),
            "empty_set": set(),
            "complex": 1 + 2j,
            nan: "nan key",
        }
    )
    bound = constants(t.module)
    assert sorted(map(id, bound.values())) == sorted(
        map(id, [obj, nan, t["inf"], t["frozen"], t["empty_set"], t["complex"]])
    )
    assert t["list"] == literal_list and t["list"] is not literal_list  # rebuilt from source
    assert type(t["list"][2][1]) is float and math.copysign(1, t["list"][2][1]) == -1
    assert t["big"] == 10**50
    assert t["obj"] is obj and t["nan"] is nan  # constants keep their identity
    assert t[nan] == "nan key"  # a NaN key is found by identity
    assert t["inf"] == math.inf


def test_cyclic_and_deep_values_are_constants():
    cyclic = [1]
    cyclic.append(cyclic)
    deep = []
    for _ in range(1000):
        deep = [deep]
    t = ModuleTable(cyclic=cyclic, deep=deep)
    assert t["cyclic"] is cyclic and t["deep"] is deep


def test_key_semantics_survive_regeneration():
    t = ModuleTable({1: "int"})
    t.put(True, "bool")  # 1 and True are one key; the first key object stays
    t.put(2.0, "float")
    assert t.to_dict() == {1: "bool", 2: "float"}
    assert [type(k) for k in t] == [int, float]
    assert t[1.0] == "bool" and t[2] == "float"


def test_put_regenerates_and_old_module_keeps_its_version():
    t = ModuleTable(a=1)
    before = t.module
    t.put("b", 2)
    assert t.module is not before
    assert sys.modules[t.name] is t.module
    assert before.state() == {"a": 1}
    assert t.module.state() == {"a": 1, "b": 2}
    assert t.delete("a") is True
    assert t.module.state() == {"b": 2}


def test_one_rebuild_per_write_and_none_for_a_missing_delete(monkeypatch):
    builds = []
    real = fastkv.module._build_module

    def counting(*args):
        builds.append(args[0])
        return real(*args)

    monkeypatch.setattr(fastkv.module, "_build_module", counting)
    t = ModuleTable(a=1)
    assert len(builds) == 1
    t.put_many({str(i): i for i in range(100)})
    assert len(builds) == 2
    t.put_many([("x", 1), ("y", 2)])
    assert len(builds) == 3
    module = t.module
    assert t.delete("missing") is False
    assert len(builds) == 3 and t.module is module
    t.put("z", 3)
    assert len(builds) == 4


def test_bad_input_changes_nothing():
    t = ModuleTable(a=1)
    module = t.module
    with pytest.raises(TypeError):
        t.put([], 1)
    with pytest.raises(TypeError):
        t.put_many([("b", 2), ([], 3)])
    with pytest.raises(ValueError):
        t.put_many([("b", 2), ("too", "many", "items")])
    assert t.to_dict() == {"a": 1} and t.module is module


def test_readers_see_whole_versions_during_writes():
    t = ModuleTable(a=0, b=0)
    stop = threading.Event()
    torn = []

    def reader():
        while not stop.is_set():
            snapshot = t.module.state()
            if snapshot["a"] != snapshot["b"]:
                torn.append(dict(snapshot))
            a, b = t.get_many(["a", "b"])
            if a != b:
                torn.append((a, b))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    for i in range(1, 60):
        t.put_many({"a": i, "b": i})
    stop.set()
    for r in readers:
        r.join()
    assert torn == []
    assert t.to_dict() == {"a": 59, "b": 59}


def test_iteration_walks_one_version():
    t = ModuleTable({i: i for i in range(10)})
    seen = []
    for key in t:
        seen.append(key)
        if key == 0:
            t.put(100, 100)
            t.delete(5)
    assert seen == list(range(10))
    assert list(t.values())[-1] == 100


def test_copy_repr_eq_close():
    t = ModuleTable({"a": [1]})
    c = t.copy()
    assert type(c) is ModuleTable and c == t and c.name != t.name
    c.put("b", 2)
    assert "b" not in t
    assert repr(t) == "ModuleTable({'a': [1]})"
    assert t == {"a": [1]} and t != {"a": [2]}
    assert (t == 5) is False
    with t as same:
        assert same is t
    t.close()
    assert t["a"] == [1]  # close is a no-op


def test_subclass():
    class Countries(ModuleTable):
        def label(self, code):
            return f"{code}: {self[code]}"

    t = Countries({"fr": "France"})
    assert t.label("fr") == "fr: France"
    assert repr(t) == "Countries({'fr': 'France'})"
    assert type(t.copy()) is ModuleTable


def test_reentrant_write_from_a_key_raises_runtime_error():
    t = ModuleTable()

    class Meddler:
        def __hash__(self):
            return 1

        def __eq__(self, other):
            t.put("meddle", 1)
            return False

    t.put(1, "one")
    with pytest.raises(RuntimeError):
        t.put(Meddler(), "x")  # compares with the key 1 while writing
    assert t.to_dict() == {1: "one"}
