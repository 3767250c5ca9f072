"""The shared behaviour suite, run against RedisTable.

The tests of test_mapping_api (the shared API) and test_locked (LockedTable's
atomic operations and fetch) whose semantics apply to a table on a Redis
server are run here, unchanged, with RedisTable as the ``kind`` (or as the
``impl``'s LockedTable): compiled and reference hit paths, near cache on and
off. The rest are listed in DIFFERENCES with the design difference that
excludes them (RedisTable's own tests in test_redis.py check the Redis
version of each behaviour)."""

import inspect

import pytest

import test_locked
import test_mapping_api
from _redis_support import redis_impl

# test name -> why its semantics do not apply to RedisTable
DIFFERENCES = {
    'test_iteration_order_and_views': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_views_are_live': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_iteration_survives_writes': 'SCAN, not a snapshot: writes made during an iteration may be seen by it',
    'test_to_dict_is_a_new_dict': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_put_and_delete': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_put_many': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_put_many_duplicates_last_value_wins': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_construct_like_dict': 'order, and first-inserted key objects kept (Redis keeps one canonical key: True -> 1)',
    'test_construct_keyword_overrides_data': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_construct_duplicate_pairs': 'the first key object is not kept: a key is stored canonically (1.0/True -> 1)',
    'test_setitem_delitem': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_setdefault': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_update': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_mutable_mapping_mixins': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_popitem_is_lifo': 'popitem removes some item (the first SCAN finds), not the last inserted',
    'test_copy_is_independent': 'copy() returns a local dict, not another table on the server',
    'test_repr': 'repr names the server and namespace; it does not fetch the items',
    'test_repr_self_reference': 'values are codec-encoded copies: a table is not a storable value',
    'test_repr_mutual_reference': 'values are codec-encoded copies: a table is not a storable value',
    'test_repr_deep_nesting_raises_recursion_error': 'values are codec-encoded copies: a table is not a storable value',
    'test_subclass': 'repr names the server and namespace',
    'test_subclass_with_own_init': 'construction takes a server and options, not data',
    'test_subclass_overriding_reads': "values are codec-encoded: arbitrary objects need codec='pickle'",
    'test_insert_new': 'order, and the first key object is not kept (canonical keys)',
    'test_update_counter': "counters are Redis's signed 64-bit integers: OverflowError past 2**63",
    'test_update_counter_keeps_position': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_take': "values are equal copies, not the stored object (and object() needs codec='pickle')",
    'test_select': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_select_predicate_exception_reaches_caller': 'order: SCAN order, not insertion order (test_redis.py checks the same content as sets)',
    'test_select_predicate_runs_outside_the_lock': "order: SCAN order, not insertion order (test_redis.py checks the same content as sets); SCAN may see the predicate's own writes",
    'test_snapshot': 'snapshot() is always the compiled fastkv.FrozenTable, and order',
    'test_info': 'info() reports the namespace and the near cache, no memory figure',
    'test_fetch_single_flight': "the loader's value is stored encoded (object() needs codec='pickle') and read back as a copy; test_redis.py checks single flight across processes",
    'test_pickle_state_taken_after_a_writer_that_held_the_lock': "keys are str, bytes, int, float, None or tuples (no key with a Python __eq__), and a RedisTable is not pickled (it is a connection)",
    'test_pickle_state_is_one_moment_when_a_finalizer_writes_meanwhile': 'a RedisTable is not pickled (it is a connection to a server)',
    'test_locked_table_dealloc_with_haunted_values': "values are codec-encoded: no destructor of a stored object runs on the table's side",
}


def _shared_tests(module, param):
    for name, fn in vars(module).items():
        if name.startswith("test_") and callable(fn) and name not in DIFFERENCES:
            params = list(inspect.signature(fn).parameters)
            if params in ([param], ["request", param]):
                yield pytest.param(fn, id=name)


@pytest.mark.parametrize("test", list(_shared_tests(test_mapping_api, "kind")) + list(_shared_tests(test_mapping_api, "mutable_kind")))
def test_shared_api(test, redis_kind, request):
    args = [redis_kind] if len(inspect.signature(test).parameters) == 1 else [request, redis_kind]
    test(*args)


@pytest.mark.parametrize("test", list(_shared_tests(test_locked, "impl")))
def test_locked_api(test, redis_kind):
    test(redis_impl(redis_kind))
