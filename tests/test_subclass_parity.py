"""Dict parity that other projects' test suites rely on (issue 11, items 8-10),
over every kind of both implementations:

- ``__missing__`` on a subclass is honoured by ``t[k]`` (the memo-dict idiom),
  never by ``get``/``in``/the items view, as for a dict subclass;
- a subclass with its own ``__init__``/``__new__`` copies, pickles and builds
  with ``fromkeys`` as a dict subclass does: ``copy``/``pickle`` rebuild it
  with ``cls.__new__(cls)`` and never call its ``__init__``; ``fromkeys``
  calls ``cls()`` and then sets the items (through ``__setitem__`` where
  there is one);
- items views answer ``in`` and ``isdisjoint`` like dict's for any operand.
"""

import copy
import pickle
import sys

import pytest

from _support import KIND_PARAMS, kind_id

# Subclasses must be importable by name for pickle: one set per kind, made at
# import time under this module's globals.
_THIS = sys.modules[__name__]


def _subclass_name(param, what):
    impl, name = param
    return f"_{what}_{impl}_{name}".replace("-", "_")


def _make_subclasses():
    from _support import Kind

    for param in KIND_PARAMS:
        base = Kind(*param).cls

        class Memo(base):
            calls = []

            def __missing__(self, key):
                type(self).calls.append(key)
                value = key * 2
                if hasattr(self, "__setitem__"):
                    self[key] = value
                return value

        class Strict(base):
            """A subclass whose __init__ takes arguments the table does not."""

            inits = []

            def __new__(cls, *args, **kwargs):
                obj = super().__new__(cls)
                obj.made_by_new = True
                return obj

            def __init__(self, label, *, size):
                type(self).inits.append((label, size))
                super().__init__({"label": label}, **_access_kwargs(self))
                self.label = label

        class Recording(base):
            """fromkeys must call cls() with no arguments, then set items."""

            inits = []
            sets = []

            def __init__(self, *args, **kwargs):
                type(self).inits.append((args, kwargs))
                super().__init__(*args, **kwargs)

            def __setitem__(self, key, value):
                type(self).sets.append(key)
                super().__setitem__(key, value)

        for cls, what in ((Memo, "Memo"), (Strict, "Strict"), (Recording, "Recording")):
            qualname = _subclass_name(param, what)
            cls.__name__ = cls.__qualname__ = qualname
            cls.__module__ = __name__
            cls.kind_name = param[1]
            setattr(_THIS, qualname, cls)


def _access_kwargs(table):
    name = type(table).kind_name
    return {"access": name.split("-")[1]} if name.startswith("owner") else {}


_make_subclasses()


def _cls(kind, what):
    return getattr(_THIS, _subclass_name((kind.impl_name, kind.name), what))


def _close(*tables):
    for t in tables:
        t.close()


# -- item 8: __missing__ ---------------------------------------------------------


def test_missing_is_honoured_by_getitem_of_a_subclass(kind):
    Memo = _cls(kind, "Memo")
    Memo.calls = []
    m = kind.make_as(Memo, {"a": 1})
    assert m["a"] == 1
    assert m[3] == 6
    assert m.get(4) is None and 4 not in m          # get and in never call it
    assert ("zz", 0) not in m.items()               # nor does the items view
    assert Memo.calls == [3]
    if kind.mutable:
        assert m[3] == 6 and Memo.calls == [3]      # the memo-dict idiom: stored
        assert m.to_dict() == {"a": 1, 3: 6}
    plain = kind.make({"a": 1})
    with pytest.raises(KeyError):
        plain[3]


def test_missing_can_raise_its_own_error(kind):
    class Loud(kind.cls):
        def __missing__(self, key):
            raise LookupError(f"no {key}")

    t = kind.make_as(Loud)
    with pytest.raises(LookupError, match="no x"):
        t["x"]


# -- item 9: subclasses with their own __init__/__new__ ---------------------------


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_subclass_with_its_own_init_copies_and_pickles(kind, how):
    Strict = _cls(kind, "Strict")
    t = kind.track(Strict("one", size=3))
    t.extra = [1]
    Strict.inits = []
    if how == "copy":
        u = copy.copy(t)
    elif how == "deepcopy":
        u = copy.deepcopy(t)
    else:
        u = pickle.loads(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL))
    kind.track(u)
    assert type(u) is Strict and u is not t
    assert Strict.inits == []                       # __init__ not called, as dict
    assert u.made_by_new is True                    # __new__ was
    assert u.to_dict() == {"label": "one"} and u.label == "one" and u.extra == [1]
    if kind.owner:
        assert u.info()["access"] == kind.access
    if how == "copy":
        assert u.extra is t.extra
    else:
        assert u.extra is not t.extra


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_skips_a_subclass_init(kind, protocol):
    Strict = _cls(kind, "Strict")
    t = kind.track(Strict("two", size=1))
    Strict.inits = []
    u = kind.track(pickle.loads(pickle.dumps(t, protocol=protocol)))
    assert type(u) is Strict and Strict.inits == [] and u.to_dict() == {"label": "two"}


def test_fromkeys_calls_cls_without_arguments_then_sets_items(kind):
    Recording = _cls(kind, "Recording")
    Recording.inits, Recording.sets = [], []
    t = kind.track(Recording.fromkeys(["a", "b"], 0))
    assert type(t) is Recording
    assert Recording.inits == [((), {})]
    assert t.to_dict() == {"a": 0, "b": 0}
    if kind.mutable:
        assert Recording.sets == ["a", "b"]         # through __setitem__, as dict
    Strict = _cls(kind, "Strict")
    with pytest.raises(TypeError):                  # as dict: cls() must work
        Strict.fromkeys(["a"])


def test_fromkeys_of_the_class_itself(kind):
    t = kind.track(kind.cls.fromkeys("ab", 1))
    assert type(t) is kind.cls and t.to_dict() == {"a": 1, "b": 1}
    if kind.owner:
        assert t.info()["access"] == "private"


# -- item 10: items views ---------------------------------------------------------

NOT_ITEMS = [1, None, "ab", "x", ("a",), ("a", 1, 2), ["a", 1], {"a": 1}, b"a1", 1.5]


@pytest.mark.parametrize("operand", NOT_ITEMS, ids=repr)
def test_items_view_contains_anything_as_dict(kind, operand):
    t = kind.make({"a": 1})
    d = {"a": 1}
    assert (operand in t.items()) is (operand in d.items()) is False


def test_items_view_contains_and_isdisjoint_as_dict(kind):
    t = kind.make({"a": 1, "n": None, 2: (3, 4)})
    d = {"a": 1, "n": None, 2: (3, 4)}
    for probe in [("a", 1), ("a", 2), ("n", None), ("b", None), (2, (3, 4)), (1.0, 1), ("a", 1.0)]:
        assert (probe in t.items()) is (probe in d.items()), probe
    for other in (["x"], [1], ["a"], [("a", 1)], [("a", 2), 1, "zz"], [], "ab", {("n", None)}):
        assert t.items().isdisjoint(other) is d.items().isdisjoint(other), other
    with pytest.raises(TypeError):                  # an unhashable key: as dict
        ([], 1) in t.items()
    with pytest.raises(TypeError):
        ([], 1) in d.items()
