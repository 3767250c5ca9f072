"""ModuleTable: data compiled into a generated module.

ModuleTable exists once (Python by nature), so these tests take no ``impl``.
"""

import gc
import importlib
import sys
import threading
import types
import weakref
from collections.abc import Mapping, MutableMapping

import pytest

import fastkv
import fastkv.module
from fastkv import ModuleTable


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


def test_keys_and_values_are_stored_as_given():
    obj, nan, big = object(), float("nan"), 10**5000
    value_list = [1, "two", (3.5, -0.0), {"k": b"v"}, {7, 8}, None, True]
    cyclic = [1]
    cyclic.append(cyclic)
    deep = []
    for _ in range(1000):
        deep = [deep]
    data = {"list": value_list, "obj": obj, "nan": nan, "big": big, "empty_set": set(),
            "cyclic": cyclic, "deep": deep, nan: "nan key"}
    t = ModuleTable(data)
    for key, value in data.items():
        assert t[key] is value and t.module.state(key) is value  # as in a dict
    assert [k for k in t] == list(data)
    assert [k is d for k, d in zip(t, data)] == [True] * len(data)
    t.put("more", 1)
    assert t["list"] is value_list and t[nan] == "nan key"  # a write keeps them


def test_data_is_a_constant_of_state_not_written_into_the_source():
    t = ModuleTable({f"k{i}": i for i in range(1000)})
    state = t.module.state
    assert state.__qualname__ == "state" and state.__module__ == t.name
    held = [cell.cell_contents for cell in state.__closure__]
    assert any(type(c) is dict and c == t.to_dict() for c in held)
    assert sorted(k for k in vars(t.module) if not k.startswith("__")) == ["state"]
    # the source is the same size for 1 item or 100,000: nothing is parsed per item
    small = fastkv.module._generate("fastkv_test_src", {"a": 1})
    large = fastkv.module._generate("fastkv_test_src", {i: i for i in range(100_000)})
    assert len(large) - len(small) == len("100000") - len("1")


def test_build_memory_is_the_data_not_a_compiler_peak():
    import tracemalloc

    data = {f"key-{i}": i for i in range(100_000)}
    tracemalloc.start()
    try:
        copy = dict(data)
        _, dict_peak = tracemalloc.get_traced_memory()
        del copy
        tracemalloc.reset_peak()
        t = ModuleTable(data)
        _, table_peak = tracemalloc.get_traced_memory()
        t.put("one more", 1)
        _, write_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a copy of the dict per version, plus a small module; compiling the items
    # as a literal peaked at ~23 KB per item (2.3 GB here)
    assert table_peak < 3 * dict_peak, (table_peak, dict_peak)
    assert write_peak < 4 * dict_peak, (write_peak, dict_peak)


def test_cycle_through_the_data_is_collected(released_modules):
    # a value that refers to the module holding it: module -> state() -> its
    # data -> value -> module. The collector must see the whole cycle (a
    # code object's constants would hide the data from it: a leak)
    t = ModuleTable(a=1)
    box = []
    t.put("box", box)
    box.append(t.module)
    old = weakref.ref(t.module)
    t.put("b", 2)  # the old version is out of sys.modules, still in a cycle
    newest, name, alive = weakref.ref(t.module), t.name, weakref.ref(t)
    del t, box
    gc.collect()
    assert alive() is None and name not in sys.modules
    assert old() is None and newest() is None


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
