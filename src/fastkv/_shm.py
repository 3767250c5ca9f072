"""The file protocol of SharedTable, shared by the compiled table
(``fastkv._core``, ``_shared.pxi``) and its reference twin: pure Python over
``os``, ``fcntl`` and ``mmap``. The file layout, the hashing and the value
encoding are described in ``_shared.pxi``; this module owns the files.

Files of a table whose control path is ``P`` (``/dev/shm/fastkv-NAME`` for a
bare name; any path allowed), all mode 0600 unless the creator asks for more:

- ``P``: the control file, 64 bytes: magic ``FKVCTRL1``, format version,
  state (0 live, 1 dead), the generation counter (u64 at offset 16, stored
  with release order by writers, loaded by readers on every read) and the
  table's token (16 hex digits, random per create).
- ``P.fkv-TOKEN-GEN``: the index of generation GEN (header, slots, entries),
  immutable once published.
- ``P.fkv-TOKEN-dEPOCH``: the data file the index points into (keys and
  values): append-only, every published byte immutable. A publish appends its
  new bytes past the published length and writes a new index; compaction
  (once garbage outweighs live bytes) writes a new data file, EPOCH+1.
- ``P.fkv-lock``: writers serialize on ``flock(LOCK_EX)`` of a fresh
  descriptor of this file (fresh per publish: threads and forked children
  never share the lock's owner).
- ``P.fkv-tmp-*``: a control file being created (linked into place complete).

Liveness: every open table holds ``flock(LOCK_SH)`` on its descriptor of
``P``. ``close()`` closes that descriptor, then tries ``LOCK_EX|LOCK_NB`` on a
fresh one: success means no process has the table open any more, so it marks
the control file dead and unlinks every file of the table. The lock belongs to
the open file description, shared by every ``dup`` of it: the control file is
therefore mapped from a second, never-locked descriptor, because ``mmap``
keeps a ``dup`` of the descriptor it maps, and a mapping that outlives
``close()`` (Python refuses to close an mmap while a buffer of it is
exported: another thread mid-read; on free-threaded 3.13 mmap's export count
is not thread-safe and can stay above zero for good) must not keep the
table alive. The kernel drops
the locks of a killed process, so a SIGKILLed user never keeps a table alive;
a table whose users all died without closing is swept by the next ``create``
of its name (or ``SharedTable.unlink(name)``). A process closes what it still
has open at exit: atexit, and in multiprocessing's fork children (which end in
``os._exit``) one of multiprocessing's exit finalizers.

Publish (under the writers' lock): read the generation G, write the complete
file of G+1 (``O_TRUNC``: a leftover of a writer killed mid-publish is
overwritten), store G+1 in the control file, unlink the files of G and G-1
(G-1: left by a writer killed between its store and its unlink). A reader
that loaded G before the store keeps its mapping (an unlinked file lives on
while mapped); its next read sees G+1 and it remaps. A reader that finds the
file of a generation gone re-reads the counter (a newer one was published).
"""

import atexit
import errno
import fcntl
import mmap
import os
import re
import struct
import sys
import threading
import weakref
from collections.abc import ItemsView, KeysView, ValuesView

from fastkv._errors import ClosedError

# -- the formats (mirrored in _shared.pxi) ---------------------------------------

MAGIC = b"FASTKVSH"
VERSION = 1
FLAG_PICKLE = 1
# magic, version, flags, index_size, count, nslots, seed, data_epoch, data_len,
# garbage, index_sum, data_a, data_b, reserved, head_sum (over bytes 0..104)
HEADER = struct.Struct("<8sIIQQQQQQQQQQQQ")
HEADER_SIZE = HEADER.size  # 112
HEAD_SUM_AT = HEADER_SIZE - 8
ENTRY = struct.Struct("<QQII")  # hash, data offset, key length, value length
ENTRY_SIZE = ENTRY.size  # 24
SLOT = struct.Struct("<I")  # entry index + 1, 0 = empty
MAX_COUNT = 2**32 - 2
MIN_SLOTS = 8
COMPACT_MIN = 1 << 16  # garbage bytes below which data is never compacted

CTL_MAGIC = b"FKVCTRL1"
CTL = struct.Struct("<8sIIQ16s")  # magic, version, state, generation, token
CTL_SIZE = 64
GEN_OFFSET = 16
STATE_LIVE, STATE_DEAD = 0, 1

M64 = 2**64 - 1

_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}\Z")

# A test hook: called (with the snapshot path) after a publish's file is
# complete and before the generation is stored. Tests SIGKILL a writer here.
before_publish = None


def control_path(name):
    """The control file path of ``name``: a bare name lives in /dev/shm."""
    name = os.fspath(name)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if "/" in name:
        return os.path.abspath(name)
    if not _NAME.match(name):
        raise ValueError(
            f"SharedTable name must be 1-200 of [A-Za-z0-9_-] (or a path): {name!r}")
    return "/dev/shm/fastkv-" + name


def snapshot_path(ctl_path, token, gen):
    return f"{ctl_path}.fkv-{token}-{gen}"


def data_path(ctl_path, token, epoch):
    return f"{ctl_path}.fkv-{token}-d{epoch}"


def fletcher(a, b, data, mask=M64):
    """Continue the data file's running sums (a, b) over ``data`` (LE u64
    words, length a multiple of 8), in Python: the reference's."""
    for (w,) in struct.iter_unpack("<Q", bytes(data)):
        a = (a + w) & mask
        b = (b + a) & mask
    return a, b


def checksum(data, mask=M64):
    """The format's checksum of ``data`` (Fletcher-style over LE u64 words,
    the tail zero-padded), in Python: the reference's."""
    data = bytes(data)
    if len(data) % 8:
        data += b"\0" * (8 - len(data) % 8)
    a, b = fletcher(0, 0, data, mask)
    return ((a * 0x9E3779B97F4A7C15) ^ b ^ (len(data) * 0xC2B2AE3D27D4EB4F)) & mask


class Header:
    """An index file's header, validated (every size checked against the
    index file's and the data file's real sizes)."""

    __slots__ = ("flags", "size", "count", "nslots", "seed", "epoch", "data_len", "garbage",
                 "index_sum", "data_a", "data_b", "entries_off")

    def __init__(self, buf, file_size, data_file_size, head_sum_fn):
        if file_size < HEADER_SIZE:
            raise ValueError(f"not a SharedTable snapshot: {file_size} bytes, shorter than a header")
        (magic, version, flags, size, count, nslots, seed, epoch, data_len, garbage,
         index_sum, data_a, data_b, _reserved, head_sum) = HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise ValueError("not a SharedTable snapshot (bad magic)")
        if version != VERSION:
            raise ValueError(f"SharedTable snapshot format version {version}, this fastkv reads {VERSION}")
        if head_sum_fn(bytes(buf[0:HEAD_SUM_AT])) != head_sum:
            raise ValueError("corrupt SharedTable snapshot: header checksum mismatch")
        if flags & ~FLAG_PICKLE:
            raise ValueError(f"corrupt SharedTable snapshot: unknown flags {flags:#x}")
        if size != file_size:
            raise ValueError(f"corrupt SharedTable snapshot: header says {size} bytes, file has {file_size}")
        if nslots < MIN_SLOTS or nslots & (nslots - 1) or nslots > 2**34:
            raise ValueError(f"corrupt SharedTable snapshot: {nslots} slots")
        if count > MAX_COUNT or count >= nslots:
            raise ValueError(f"corrupt SharedTable snapshot: {count} entries for {nslots} slots")
        entries_off = HEADER_SIZE + 4 * nslots
        if size != entries_off + ENTRY_SIZE * count:
            raise ValueError("corrupt SharedTable snapshot: regions do not fit the file")
        if data_len % 8 or data_len > data_file_size:
            raise ValueError(f"corrupt SharedTable snapshot: {data_len} data bytes, "
                             f"the data file has {data_file_size}")
        if garbage > data_len:
            raise ValueError("corrupt SharedTable snapshot: garbage larger than the data")
        self.flags, self.size, self.count, self.nslots = flags, size, count, nslots
        self.seed, self.epoch, self.data_len, self.garbage = seed, epoch, data_len, garbage
        self.index_sum, self.data_a, self.data_b = index_sum, data_a, data_b
        self.entries_off = entries_off


def pack_header(mv, flags, size, count, nslots, seed, epoch, data_len, garbage, index_sum,
                data_a, data_b, sum_fn):
    HEADER.pack_into(mv, 0, MAGIC, VERSION, flags, size, count, nslots, seed, epoch, data_len,
                     garbage, index_sum, data_a, data_b, 0, 0)
    struct.pack_into("<Q", mv, HEAD_SUM_AT, sum_fn(bytes(mv[0:HEAD_SUM_AT])))


# -- views over one snapshot --------------------------------------------------------


class SharedKeysView(KeysView):
    """keys() of a SharedTable: iterates one snapshot (reversed() too)."""

    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter_snapshot(0)

    def __reversed__(self):
        return self._mapping._iter_snapshot(3)


class SharedValuesView(ValuesView):
    """values() of a SharedTable: iterates one snapshot (reversed() too)."""

    __slots__ = ()

    def __iter__(self):
        return self._mapping._iter_snapshot(1)

    def __reversed__(self):
        return self._mapping._iter_snapshot(4)


_ABSENT = object()


class SharedItemsView(ItemsView):
    """items() of a SharedTable: iterates one snapshot (reversed() too)."""

    __slots__ = ()

    def __contains__(self, item):
        """As dict's items view: anything but a 2-tuple is not an item (False,
        where the abc's unpacking raised); an unhashable key is a TypeError."""
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        v = self._mapping.get(key, _ABSENT)
        if v is _ABSENT:
            return False
        return v is value or v == value

    def __iter__(self):
        return self._mapping._iter_snapshot(2)

    def __reversed__(self):
        return self._mapping._iter_snapshot(5)


# -- the segment: control file, locks, publish, reclamation ---------------------------


def _flock(fd, op):
    while True:
        try:
            fcntl.flock(fd, op)
            return
        except InterruptedError:  # pragma: no cover (PEP 475 retries already)
            continue


class Segment:
    """One process's handle on a table's files: the control descriptor (held
    with LOCK_SH while open) and its mapping. ``gen_view`` is the control
    mapping (its u64 at GEN_OFFSET is the generation)."""

    def __init__(self, path, fd, ctl_mm, token, mode, writable):
        self.path = path
        self.fd = fd
        self.ctl = ctl_mm
        self.token = token
        self.mode = mode
        self.writable = writable
        self.closed = False
        # this process's users of fd's LOCK_SH: the table (until close) and
        # each publish in flight; the last one out closes fd (under _HOLDS)
        self._users = 1
        # the generation as one native u64 (the file's is little-endian): a
        # view taken once, read and written with single 8-byte loads/stores
        # (and no export of the mapping per read, which 3.13t miscounts)
        self._genv = _gen_view(ctl_mm)
        _SEGMENTS.add(self)

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, name):
        path = control_path(name)
        for _ in range(1000):
            writable = True
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                writable = False
            try:
                _flock(fd, fcntl.LOCK_SH)  # waits out a last user's cleanup
                st = os.fstat(fd)
                if st.st_size != CTL_SIZE:
                    raise ValueError(f"not a SharedTable control file: {path} has {st.st_size} bytes")
                ctl = _map_control(path, st, writable)  # None: path names another file now
                if ctl is not None:
                    magic, version, state, gen, token = CTL.unpack_from(ctl, 0)
                    if magic != CTL_MAGIC or version != VERSION or not re.fullmatch(rb"[0-9a-f]{16}", token):
                        ctl.close()
                        raise ValueError(f"not a SharedTable control file: {path}")
                    if state == STATE_LIVE:
                        return cls(path, fd, ctl, token.decode(), st.st_mode & 0o777, writable)
                    ctl.close()
                os.close(fd)  # a last user removed it while we waited: look again
                continue
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
        raise FileNotFoundError(errno.ENOENT, "SharedTable kept disappearing while opened", path)

    @classmethod
    def create(cls, name, mode, write_first):
        """Create the table's files: ``write_first(path_of_snapshot_1, seed)``
        writes generation 1, then the control file is linked into place
        complete. FileExistsError if a live table has this name."""
        path = control_path(name)
        if os.path.lexists(path):
            if not sweep_if_dead(path):
                raise FileExistsError(errno.EEXIST, "a SharedTable of this name is open", path)
        token = os.urandom(8).hex()
        snap = snapshot_path(path, token, 1)
        tmp = f"{path}.fkv-tmp-{token}"
        fd = -1
        ctl = None
        try:
            write_first(snap)
            mfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                os.fchmod(mfd, mode)  # umask must not narrow what the caller asked for
                os.ftruncate(mfd, CTL_SIZE)
                ctl = mmap.mmap(mfd, CTL_SIZE)  # keeps a dup of mfd: never locked
            finally:
                os.close(mfd)
            CTL.pack_into(ctl, 0, CTL_MAGIC, VERSION, STATE_LIVE, 1, token.encode())
            fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)  # the liveness lock's own description
            _flock(fd, fcntl.LOCK_SH)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "a SharedTable of this name was created concurrently", path)
            finally:
                _unlink_quiet(tmp)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if ctl is not None:
                ctl.close()
            _unlink_quiet(snap)
            _unlink_quiet(data_path(path, token, 1))
            _unlink_quiet(tmp)
            raise
        return cls(path, fd, ctl, token, mode, True)

    # -- reading ------------------------------------------------------------------

    def generation(self):
        """The current generation: one 8-byte load from the control mapping."""
        return self._genv[0]

    def store_generation(self, gen):
        """Publish ``gen`` (writers' lock held): one 8-byte store. Not
        struct.pack_into, which zeroes its bytes before it writes them: a
        reader in another process (or thread, with the GIL off) saw
        generation 0 in between."""
        self._genv[0] = gen

    def load(self, gen_fn):
        """(gen, index mmap, data mmap or None, data file size) of the current
        snapshot; retries while generations move on."""
        for _ in range(10000):
            gen = gen_fn()
            try:
                fd = os.open(snapshot_path(self.path, self.token, gen), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if gen_fn() == gen:
                    raise ValueError(
                        f"corrupt SharedTable {self.path}: the snapshot of generation {gen} is missing") from None
                continue
            try:
                size = os.fstat(fd).st_size
                if size < HEADER_SIZE:
                    raise ValueError(f"not a SharedTable snapshot: {size} bytes, shorter than a header")
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            # the data file this index names (the header is validated by the caller)
            epoch, data_len = struct.unpack_from("<QQ", mm, 48)
            if data_len == 0 or mm[:8] != MAGIC:  # (a foreign file: the header check says so)
                return gen, mm, None, 0
            try:
                dfd = os.open(data_path(self.path, self.token, epoch), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ValueError(f"corrupt SharedTable {self.path}: data file {epoch} is missing") from None
            try:
                dsize = os.fstat(dfd).st_size
                if data_len > dsize:
                    raise ValueError(f"corrupt SharedTable snapshot: {data_len} data bytes, "
                                     f"the data file has {dsize}")
                return gen, mm, mmap.mmap(dfd, data_len, mmap.MAP_SHARED, mmap.PROT_READ), dsize
            finally:
                os.close(dfd)
        raise RuntimeError("SharedTable: could not catch up with concurrent publishers")

    # -- writing ------------------------------------------------------------------

    def lock(self):
        """The writers' lock: LOCK_EX on a fresh descriptor of ``P.fkv-lock``,
        released by ``unlock(fd)``. Until then the publish holds the segment
        open: a ``close()`` by another thread meanwhile leaves closing the
        control descriptor and the cleanup to ``unlock`` (else the cleanup
        could run first and the publish create files nobody removes).
        ClosedError once closed."""
        if not self.writable:
            raise PermissionError(errno.EACCES, "SharedTable opened read-only (no write permission)", self.path)
        with _HOLDS:  # nothing that allocates under it (a GC pass could run a __del__ that closes)
            closed = self.closed
            if not closed:
                self._users += 1
        if closed:
            raise ClosedError("SharedTable is closed")
        try:
            fd = os.open(self.path + ".fkv-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
            try:
                _flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            self._drop()
            raise
        return fd

    def unlock(self, fd):
        """Release the writers' lock taken by ``lock()``, and its hold."""
        try:
            os.close(fd)
        finally:
            self._drop()

    def publish(self, gen, write, store_gen):
        """With the lock held and ``gen`` current: ``write(path)`` writes the
        complete snapshot of gen+1 (returning how many entries changed; 0:
        nothing written, nothing published), then it is published and gen's
        file unlinked."""
        current = self.generation()
        if current != gen:
            # never from a stale snapshot: the file of gen+1 may be the live,
            # mapped one (O_TRUNC under its readers is SIGBUS), and the writes
            # published since would be lost
            raise RuntimeError(
                f"SharedTable: internal error: publishing over generation {gen}, the current one is {current}")
        path = snapshot_path(self.path, self.token, gen + 1)
        changed, retired = write(path)
        if not changed:
            return False
        if before_publish is not None:
            before_publish(path)
        store_gen(gen + 1)
        _unlink_quiet(snapshot_path(self.path, self.token, gen))
        if gen > 1:
            _unlink_quiet(snapshot_path(self.path, self.token, gen - 1))
        for old in retired:
            _unlink_quiet(old)
        return True

    def create_file(self, path, size):
        return create_file(path, size, self.mode)

    # -- closing ------------------------------------------------------------------

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self):
        """Drop this process's hold; the last user removes the table's files.
        Idempotent, and safe from several threads at once (the descriptor is
        closed once: closing it twice could close a descriptor another thread
        has just opened under the same number).

        The control mapping is not closed here: another thread may be reading
        it (on free-threaded 3.13 mmap's close does not reliably see that, and
        an unmap under a reader crashes); it is unmapped when the last
        reference to this segment goes. It holds no lock (see the module
        note), so it never keeps the table alive."""
        with _HOLDS:
            if self.closed:
                return
            self.closed = True
        self._drop()

    def _drop(self):
        with _HOLDS:
            self._users -= 1
            last = self._users == 0
        if last:
            os.close(self.fd)
            sweep_if_dead(self.path, self.token)


# Guards every Segment's closed flag and user count (a few instructions
# under it, never a wait); made anew in a forked child.
_HOLDS = threading.Lock()
_SEGMENTS = weakref.WeakSet()


def _after_fork_in_child():
    """A forked child has one thread: no publish of the parent's is in flight
    in it. An open segment is held by its table alone; a closed one whose
    release a parent thread still owed drops the child's copy of the
    descriptor (the parent still holds the table: nothing to clean up)."""
    global _HOLDS
    _HOLDS = threading.Lock()
    for seg in list(_SEGMENTS):
        if not seg.closed:
            seg._users = 1
        elif seg._users > 0:
            seg._users = 0
            try:
                os.close(seg.fd)
            except OSError:
                pass


def _close_all_segments():
    """Close every segment this process still has open (closed ones are a
    no-op): at exit, for the compiled table and its reference twin alike."""
    for seg in list(_SEGMENTS):
        try:
            seg.close()
        except Exception:
            pass


class _ExitCloseKey:
    """multiprocessing keeps its after-fork hooks in a weak-valued registry:
    this object, alive for good, is the key of ours."""


_EXIT_CLOSE_KEY = _ExitCloseKey()
_exit_close_armed = False


def _arm_exit_close(_key):
    # run by multiprocessing in its fork (and forkserver) children, after it
    # has emptied the finalizer registry it inherited
    sys.modules["multiprocessing.util"].Finalize(None, _close_all_segments, exitpriority=-1)


def _after_fork_in_child_mp():
    """A multiprocessing child made by fork ends in ``os._exit``: no atexit
    hook runs, so a table it inherited (or opened) and still had open was
    never closed, and if it was the last user its files stayed in /dev/shm
    until the next ``create`` of the name. multiprocessing runs its own
    finalizers before that exit: every segment is closed by one of them.
    (A bare ``os.fork()`` child that ends in ``os._exit`` runs nothing: it
    must close its tables; the kernel still drops its locks, so the next
    ``create`` or ``SharedTable.unlink`` sweeps what it kept.)"""
    global _exit_close_armed
    util = sys.modules.get("multiprocessing.util")
    if util is None or _exit_close_armed:
        return
    util.register_after_fork(_EXIT_CLOSE_KEY, _arm_exit_close)
    _exit_close_armed = True    # inherited: the registry entry is too


atexit.register(_close_all_segments)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
    os.register_at_fork(after_in_child=_after_fork_in_child_mp)


class _GenBytes:
    """The generation on a big-endian host: struct over the mapping (its
    store is not a single one; fastkv's compiled table assumes little-endian)."""

    __slots__ = ("mm",)

    def __init__(self, mm):
        self.mm = mm

    def __getitem__(self, i):
        return struct.unpack_from("<Q", self.mm, GEN_OFFSET)[0]

    def __setitem__(self, i, gen):
        self.mm[GEN_OFFSET:GEN_OFFSET + 8] = gen.to_bytes(8, "little")


def _gen_view(ctl_mm):
    if sys.byteorder == "little":
        return memoryview(ctl_mm)[GEN_OFFSET:GEN_OFFSET + 8].cast("Q")
    return _GenBytes(ctl_mm)  # pragma: no cover (big-endian)


def _map_control(path, st, writable):
    """The control file ``st`` (fstat of the locked descriptor) mapped through
    a descriptor of its own, opened from ``path`` and closed at once: mmap
    keeps a dup of it, so this open file description must never carry the
    liveness lock. None if ``path`` no longer names that file."""
    try:
        mfd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        mst = os.fstat(mfd)
        if (mst.st_dev, mst.st_ino) != (st.st_dev, st.st_ino):
            return None
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(mfd, CTL_SIZE, mmap.MAP_SHARED, prot)
    finally:
        os.close(mfd)


def create_file(path, size, mode):
    """A new snapshot file of ``size`` bytes, mapped writable: (fd, mmap)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
        # the pages are about to be written: fault them in at once
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    except BaseException:
        os.close(fd)
        _unlink_quiet(path)
        raise
    return fd, mm


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def sweep_if_dead(path, token=None):
    """If no process holds the table at ``path`` open, remove all its files
    and return True (also when nothing is there); False if it is live."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except PermissionError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        st = os.fstat(fd)
        try:
            if os.stat(path).st_ino != st.st_ino:
                return True  # replaced by a new table meanwhile: not ours to remove
        except FileNotFoundError:
            return True
        if st.st_size == CTL_SIZE:
            if token is None:
                raw = os.pread(fd, CTL_SIZE, 0)
                if raw[:8] == CTL_MAGIC:
                    token = CTL.unpack_from(raw, 0)[4].decode("ascii", "replace")
            os.pwrite(fd, struct.pack("<I", STATE_DEAD), 12)
        _unlink_quiet(path)
        _unlink_quiet(path + ".fkv-lock")
        directory, base = os.path.split(path)
        prefix = base + ".fkv-"
        for entry in os.listdir(directory or "."):
            if not entry.startswith(prefix):
                continue
            rest = entry[len(prefix):]
            if rest.startswith("tmp-") or (token is not None and rest.startswith(token + "-")):
                _unlink_quiet(os.path.join(directory, entry))
        return True
    finally:
        os.close(fd)


def table_files(name):
    """Every file of the table ``name`` that exists (tests check for leaks)."""
    path = control_path(name)
    directory, base = os.path.split(path)
    return sorted(
        os.path.join(directory, e) for e in os.listdir(directory)
        if e == base or e.startswith(base + ".fkv-"))


# -- building a snapshot (the writer's side) ----------------------------------------


def write_snapshot(path, mode, codec, old, changes, flags, seed=None):
    """Write generation ``path``'s index (and its data bytes): ``old`` (a map
    with ``hdr``, ``mm`` (index) and ``dmm`` (data, or None), or None) with
    ``changes`` applied, an ordered dict of canonical key bytes -> encoded
    value bytes (None deletes). Returns (entries changed, files to unlink
    once published); (0, []) when nothing changes (nothing written).

    The index (slots and entries, 28 bytes a key) is copied whole: a memcpy
    of the old entries and slots, the changed entries patched, new keys
    probed into the copied slots (deletions, growth and many new keys rebuild
    the slots from the stored hashes: no key is rehashed). The data file is
    append-only: new key/value bytes go past the published length, so a
    publish writes only what changed. Once garbage (replaced, deleted and
    padding bytes) outweighs live bytes, the live bytes are compacted into a
    new data file (the next epoch) and the old one is retired."""
    hdr = old.hdr if old is not None else None
    if hdr is not None:
        seed = hdr.seed
    elif seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    n_old = hdr.count if hdr else 0
    ups, adds, dels = [], [], []
    for kb, vb in changes.items():
        h = codec.hash(seed, kb)
        idx = codec.lookup(old, kb, h) if hdr and n_old else -1
        if vb is None:
            if idx >= 0:
                dels.append(idx)
        elif idx >= 0:
            ups.append((idx, kb, vb))
        else:
            adds.append((h, kb, vb))
    if hdr is not None and not (ups or adds or dels):
        return 0, []
    count = n_old - len(dels) + len(adds)
    if count > MAX_COUNT:
        raise OverflowError(f"a SharedTable holds at most {MAX_COUNT} entries")
    nslots = hdr.nslots if hdr else MIN_SLOTS
    while count * 3 >= nslots * 2:
        nslots *= 2
    old_mm = memoryview(old.mm) if old is not None else None  # slices without copies
    old_dmm = memoryview(old.dmm) if old is not None and old.dmm is not None else None
    old_data_len = hdr.data_len if hdr else 0
    freed_dels = freed_ups = 0
    for idx in dels:
        _, _, kl, vl = ENTRY.unpack_from(old_mm, hdr.entries_off + ENTRY_SIZE * idx)
        freed_dels += kl + vl
    for idx, _, _ in ups:
        _, _, kl, vl = ENTRY.unpack_from(old_mm, hdr.entries_off + ENTRY_SIZE * idx)
        freed_ups += kl + vl
    old_garbage = hdr.garbage if hdr else 0
    garbage = old_garbage + freed_dels + freed_ups
    added = sum(len(kb) + len(vb) for _, kb, vb in ups) + sum(len(kb) + len(vb) for _, kb, vb in adds)
    compact = hdr is not None and garbage > old_data_len - garbage + added and garbage > COMPACT_MIN
    epoch = (hdr.epoch + 1 if compact else hdr.epoch) if hdr else 1
    dpath = path.rsplit("-", 1)[0] + f"-d{epoch}"
    retired = []
    entries_off = HEADER_SIZE + 4 * nslots
    size = entries_off + ENTRY_SIZE * count
    fd, mm = create_file(path, size, mode)
    dfd = -1
    try:
        mv = memoryview(mm)
        try:
            kept = n_old - len(dels)
            # entries: the old ones in order, minus the deleted
            if hdr and n_old:
                src = hdr.entries_off
                if not dels:
                    mv[entries_off:entries_off + ENTRY_SIZE * n_old] = old_mm[src:src + ENTRY_SIZE * n_old]
                else:
                    at, prev = entries_off, 0
                    for idx in sorted(dels) + [n_old]:
                        chunk = ENTRY_SIZE * (idx - prev)
                        mv[at:at + chunk] = old_mm[src + ENTRY_SIZE * prev:src + ENTRY_SIZE * idx]
                        at += chunk
                        prev = idx + 1
            # data: appended past the published bytes, or compacted anew
            if compact:
                kept_len = old_data_len - old_garbage - freed_dels
                blob = bytearray(kept_len)
                if codec.compact(mv, entries_off, kept, old_dmm, blob) != kept_len:
                    raise ValueError("corrupt SharedTable snapshot: its garbage count is wrong")
                base, garbage = 0, freed_ups
            else:
                blob = bytearray()
                base = old_data_len
            cursor = base + len(blob)
            if dels:
                shift = sorted(dels)
            for idx, kb, vb in ups:
                if dels:
                    idx -= _bisect(shift, idx)
                at = entries_off + ENTRY_SIZE * idx
                h = ENTRY.unpack_from(mv, at)[0]
                ENTRY.pack_into(mv, at, h, cursor, len(kb), len(vb))
                blob += kb
                blob += vb
                cursor += len(kb) + len(vb)
            if adds:
                packed = bytearray(ENTRY_SIZE * len(adds))
                at = 0
                for h, kb, vb in adds:
                    ENTRY.pack_into(packed, at, h, cursor, len(kb), len(vb))
                    at += ENTRY_SIZE
                    cursor += len(kb) + len(vb)
                blob += b"".join(kb + vb for _, kb, vb in adds)
                mv[entries_off + ENTRY_SIZE * kept:size] = packed
            pad = -len(blob) % 8
            blob += bytes(pad)
            garbage += pad
            data_len = base + len(blob)
            if compact or hdr is None:
                data_a, data_b = codec.fletcher(0, 0, blob)
            else:
                data_a, data_b = codec.fletcher(hdr.data_a, hdr.data_b, blob)
            if blob:
                flags_ = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if compact or hdr is None else 0)
                dfd = os.open(dpath, flags_, mode)
                os.fchmod(dfd, mode)
                if os.pwrite(dfd, blob, base) != len(blob):
                    raise OSError("SharedTable: short write to the data file")
            if compact:
                retired.append(path.rsplit("-", 1)[0] + f"-d{hdr.epoch}")
            elif hdr is not None:
                retired.append(path.rsplit("-", 1)[0] + f"-d{epoch + 1}")  # a killed compaction's
            # slots: copied and probed into, or rebuilt from the hashes
            if hdr and not dels and nslots == hdr.nslots and len(adds) <= 64:
                mv[HEADER_SIZE:entries_off] = old_mm[HEADER_SIZE:HEADER_SIZE + 4 * nslots]
                mask = nslots - 1
                for j, (h, _, _) in enumerate(adds):
                    i = h & mask
                    while SLOT.unpack_from(mv, HEADER_SIZE + 4 * i)[0]:
                        i = (i + 1) & mask
                    SLOT.pack_into(mv, HEADER_SIZE + 4 * i, kept + j + 1)
            else:
                codec.rebuild_slots(mv, nslots, entries_off, count)
            index_sum = codec.checksum(mv[HEADER_SIZE:size])
            pack_header(mv, flags, size, count, nslots, seed, epoch, data_len, garbage, index_sum,
                        data_a, data_b, codec.checksum)
        finally:
            mv.release()
        mm.close()
    except BaseException:
        _unlink_quiet(path)
        if compact:
            _unlink_quiet(dpath)
        raise
    finally:
        os.close(fd)
        if dfd >= 0:
            os.close(dfd)
        if old_mm is not None:
            old_mm.release()
        if old_dmm is not None:
            old_dmm.release()
    return (len(ups) + len(adds) + len(dels) if hdr else max(count, 1)), retired


def _bisect(sorted_list, x):
    import bisect
    return bisect.bisect_left(sorted_list, x)
