"""`LocalState`: the `SharedState` of the workers of one machine, without Redis.

One SQLite database in the state directory `ollama-gateway serve` makes for the run
(`GATEWAY_STATE_DIR`, removed when the server stops, master.py), opened by every worker at its
first operation (sqlite3 and a connection cost a worker about 3 MiB, which one whose keys have
no limits never pays; a database that cannot be opened fails open like any other outage): WAL
mode, `synchronous=OFF` (nothing here needs to survive a power cut), each operation one
`BEGIN IMMEDIATE` transaction, so it is atomic across the workers. The meaning is the Redis
scripts' (redisstate.py), on this machine's monotonic clock: windows of `SLOTS` slots, leases
as rows with an expiry renewed by the process holding them (a worker that dies frees its
leases after their ttl), cooldowns with a failure count, an end and a probe claim. Expired rows of the key an
operation touches go in that operation; everything expired, every `_PURGE_EVERY` operations.

An operation is a few tens of microseconds, done in the event loop (a thread hop would cost
more). Without a state directory (the app made outside `serve`) the database is in memory:
this process alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import sqlite3  # imported at the first operation (_run): about 1.3 MiB a worker otherwise

from gateway.upstream.sharedstate import COOLDOWN_MARGIN, SLOTS, HeldLeases, Lease, Outage, StoredLease

FILE_NAME = "shared-state.sqlite3"
_BUSY_MS = 2000  # how long an operation waits for another worker's transaction
_PURGE_EVERY = 1024
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (key TEXT NOT NULL, slot INTEGER NOT NULL, amount INTEGER NOT NULL,
                                    expires INTEGER NOT NULL, PRIMARY KEY (key, slot)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (key TEXT NOT NULL, id TEXT NOT NULL, expires INTEGER NOT NULL,
                                   PRIMARY KEY (key, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cooldowns (key TEXT PRIMARY KEY, fails INTEGER NOT NULL, until INTEGER NOT NULL,
                                      probe INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
"""


def _now() -> int:
    """Milliseconds on the machine's monotonic clock (Linux: one CLOCK_MONOTONIC for every
    process, and the database lives no longer than the run): a wall clock stepped back or on
    (NTP, a VM resumed) neither keeps a minute's counts nor frees every lease."""
    return time.monotonic_ns() // 1_000_000


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class LocalState:
    """The `SharedState` contract over one SQLite connection per worker."""

    def __init__(self, state_dir: Path | None) -> None:
        self._target = str(state_dir / FILE_NAME) if state_dir is not None else ":memory:"
        # Opened at the first operation: a gateway whose keys have no limits never pays for it
        # (the connection and its page cache are about 1.5 MiB a worker).
        self._db: sqlite3.Connection | None = None
        self._outage = Outage("state directory")
        self._held = HeldLeases(self._renew_all)
        self._operations = 0

    def _run(self, operation: Callable[[sqlite3.Connection, int], _T], open_answer: _T) -> _T:
        """`operation` in one immediate transaction, or `open_answer` if the database fails."""
        import sqlite3

        if self._outage.skipping():
            return open_answer
        try:
            db = self._db or self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                now = _now()
                answer = operation(db, now)
                self._operations += 1
                if self._operations % _PURGE_EVERY == 0:
                    _purge(db, now)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._outage.failed(exc)
            return open_answer
        self._outage.worked()
        return answer

    def _open(self) -> sqlite3.Connection:
        """The connection, the file switched to WAL and its tables made. Workers whose first
        operations come together race to do that, and SQLite refuses the switch to WAL at once
        (without its busy wait) while another connection holds the file: tried again for up to
        the busy timeout (blocking, once per worker) before it counts as an outage."""
        import sqlite3

        deadline = time.monotonic() + _BUSY_MS / 1000
        while True:
            db = sqlite3.connect(self._target, isolation_level=None, timeout=_BUSY_MS / 1000)
            try:
                db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=OFF")
                db.executescript(_SCHEMA)
            except sqlite3.OperationalError:
                db.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
                continue
            except BaseException:
                db.close()
                raise
            self._db = db
            return db

    async def take(self, key: str, amount: int, limit: int, window: float) -> float | None:
        def take(db: sqlite3.Connection, now: int) -> float | None:
            width = _ms(window) / SLOTS
            current = math.floor(now / width)
            db.execute("DELETE FROM windows WHERE key = ? AND slot < ?", (key, current - SLOTS))
            slots = db.execute("SELECT slot, amount FROM windows WHERE key = ? ORDER BY slot", (key,)).fetchall()
            need = int(sum(count for _, count in slots)) + max(amount, 1) - limit
            if need <= 0:
                if amount > 0:
                    _add_to_slot(db, key, current, amount, width)
                return None
            if amount > limit:
                return window
            for slot, count in slots:
                need -= count
                if need <= 0:
                    return max(1, math.ceil((int(slot) + SLOTS + 1) * width - now)) / 1000
            return window

        return self._run(take, None)

    async def add(self, key: str, amount: int, window: float) -> None:
        def add(db: sqlite3.Connection, now: int) -> None:
            width = _ms(window) / SLOTS
            _add_to_slot(db, key, math.floor(now / width), amount, width)

        self._run(add, None)

    async def acquire(self, key: str, limit: int, ttl: float) -> Lease | None:
        lease = StoredLease(key, ttl)

        def acquire(db: sqlite3.Connection, now: int) -> bool:
            db.execute("DELETE FROM leases WHERE key = ? AND expires <= ?", (key, now))
            (held,) = db.execute("SELECT count(*) FROM leases WHERE key = ?", (key,)).fetchone()
            if held >= limit:
                return False
            db.execute("INSERT INTO leases (key, id, expires) VALUES (?, ?, ?)", (key, lease.id, now + _ms(ttl)))
            return True

        return self._held.settle(lease, self._run(acquire, None))  # None: the database failed

    async def release(self, lease: Lease) -> None:
        assert isinstance(lease, StoredLease)
        if lease.backed and self._held.discard(lease):
            self._run(lambda db, now: db.execute("DELETE FROM leases WHERE key = ? AND id = ?", (lease.key, lease.id)), None)

    async def _renew_all(self, leases: list[StoredLease]) -> None:
        def renew(db: sqlite3.Connection, now: int) -> None:
            db.executemany(  # a lease already dropped stays dropped
                "UPDATE leases SET expires = ? WHERE key = ? AND id = ? AND expires > ?",
                [(now + _ms(lease.ttl), lease.key, lease.id, now) for lease in leases],
            )

        self._run(renew, None)

    async def failed(self, key: str, after: int, seconds: float) -> None:
        def failed(db: sqlite3.Connection, now: int) -> None:
            row = db.execute("SELECT fails, until FROM cooldowns WHERE key = ? AND expires > ?", (key, now)).fetchone()
            fails, cooled = row if row is not None else (0, 0)
            if cooled > 0:
                if now < cooled:
                    return
                fails, cooled = 0, now + _ms(seconds)
            else:
                fails += 1
                if fails >= after:
                    fails, cooled = 0, now + _ms(seconds)
            db.execute(
                "INSERT OR REPLACE INTO cooldowns (key, fails, until, probe, expires) VALUES (?, ?, ?, 0, ?)",
                (key, fails, cooled, now + _ms(seconds) + _ms(COOLDOWN_MARGIN)),
            )

        self._run(failed, None)

    async def succeeded(self, key: str) -> None:
        self._run(lambda db, now: db.execute("DELETE FROM cooldowns WHERE key = ?", (key,)), None)

    async def cooling(self, key: str, probe_ttl: float) -> float:
        def cooling(db: sqlite3.Connection, now: int) -> int:
            row = db.execute("SELECT until, probe FROM cooldowns WHERE key = ? AND expires > ?", (key, now)).fetchone()
            if row is None or not row[0]:
                return 0
            cooled, probe = row
            if now < cooled:
                return int(cooled - now)
            if probe > now:
                return int(probe - now)
            db.execute(
                "UPDATE cooldowns SET probe = ?, expires = ? WHERE key = ?",
                (now + _ms(probe_ttl), now + _ms(probe_ttl) + _ms(COOLDOWN_MARGIN), key),
            )
            return 0

        return self._run(cooling, 0) / 1000

    async def close(self) -> None:
        """Stop renewing, hand back what this process still holds, close the database."""
        await self._held.stop()
        for lease in self._held.all():
            await self.release(lease)
        if self._db is not None:
            self._db.close()
            self._db = None


def _add_to_slot(db: sqlite3.Connection, key: str, slot: int, amount: int, width: float) -> None:
    db.execute(
        "INSERT INTO windows (key, slot, amount, expires) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key, slot) DO UPDATE SET amount = amount + excluded.amount",
        (key, slot, amount, math.ceil((slot + SLOTS + 1) * width)),
    )


def _purge(db: sqlite3.Connection, now: int) -> None:
    for table in ("windows", "leases", "cooldowns"):
        db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))  # noqa: S608 - fixed names
