"""SQLite result store: one file per campaign, one atomic row per completed trial.

The file holds the spec, its fingerprint, the golden (fault-free) run and one row per trial.
It is opened in WAL mode and every trial is committed in its own transaction, so a campaign
killed at any moment (``kill -9`` included) loses at most the trial in flight and resumes with
no trial lost or repeated. A file that is not a qfault campaign store, or whose spec differs,
is refused without being modified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .._errors import QFaultConfigError
from ._spec import NON_SEMANTIC, CampaignSpec, spec_diff

FORMAT = "qfault-campaign"
STORE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS golden (id INTEGER PRIMARY KEY CHECK (id = 0), data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    point INTEGER NOT NULL,
    repetition INTEGER NOT NULL,
    point_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    counts TEXT NOT NULL,
    faults INTEGER NOT NULL,
    elapsed_s REAL NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (point, repetition)
);
"""
#: per-trial details (created with the first trial that has any: older stores lack it)
_DETAILS = """CREATE TABLE IF NOT EXISTS details (point INTEGER NOT NULL, repetition INTEGER NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (point, repetition))"""


@dataclass(frozen=True)
class TrialRow:
    """One completed trial."""

    point: int
    repetition: int
    point_values: dict
    seed: int
    accuracy: float
    counts: dict
    faults: int
    elapsed_s: float
    #: what a trial adds beyond its counts (a systolic trial: its fault, batch, per-image outcomes)
    details: dict | None = None


class StoreMismatch(QFaultConfigError):
    """The store belongs to a different spec; ``changes`` lists ``key: stored -> new`` lines."""

    def __init__(self, path: Path, changes: list[str]):
        super().__init__("spec", str(path), "the spec the store was created with")
        self.path = path
        self.changes = changes
        self.args = (f"store '{path}' was created by a different spec; changes (stored -> new):\n  "
                     + "\n  ".join(changes) + "\nUse another store path (store=...) or the original spec.",)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.path, self.changes)


def spec_extension(stored: dict, new: dict) -> list[str] | None:
    """The changes from ``stored`` to ``new`` if they only extend the campaign, else None.

    Extending keeps every stored trial valid (a trial's seed depends on the campaign seed, its
    point's values and its repetition only): more ``repetitions``, and sweep axes that keep every
    stored value (values added, none removed; the axes themselves and ``indices: each`` unchanged).
    ``[]`` means equal specs.
    """
    semantic = lambda spec: {k: v for k, v in spec.items() if k not in NON_SEMANTIC}  # noqa: E731
    old, now = semantic(stored), semantic(new)
    changes = []
    for key in sorted(set(old) | set(now)):
        if old.get(key) == now.get(key):
            continue
        if key == "repetitions" and isinstance(old.get(key), int) and isinstance(now.get(key), int) \
                and now[key] > old[key]:
            changes.append(f"repetitions: {old[key]} -> {now[key]}")
            continue
        if key == "sweep" and isinstance(old.get(key), dict) and isinstance(now.get(key), dict) \
                and set(old[key]) == set(now[key]):
            for axis in sorted(old[key]):
                before, after = old[key][axis], now[key][axis]
                if before == after:
                    continue
                if not (isinstance(before, list) and isinstance(after, list)):
                    return None
                kept = {json.dumps(v, sort_keys=True) for v in before}
                if not kept <= {json.dumps(v, sort_keys=True) for v in after}:  # a stored value is gone
                    return None
                added = [v for v in after if json.dumps(v, sort_keys=True) not in kept]
                changes.append(f"sweep.{axis}: adds {added!r}")
            continue
        return None
    return changes


class _ReadOnly:
    """A read-only SQLite connection to the store at ``path`` that changes no file.

    A cleanly closed store (no ``-wal``) is opened as immutable (a read-only connection to a WAL
    database would otherwise leave new ``-wal``/``-shm`` files behind). While a run writes to
    it, it is read through its ``-wal`` as usual. After a crash (a ``-wal`` and no writer),
    even readers would rewrite its ``-shm`` index: the store and its ``-wal`` are read from a
    private copy instead, so a refusal leaves every file byte for byte as it was.
    """

    def __init__(self, path: Path):
        self._copy = None
        wal = Path(str(path) + "-wal")
        if not wal.exists() and not Path(str(path) + "-shm").exists():
            uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        elif _writer_active(path):
            uri = f"{path.resolve().as_uri()}?mode=ro"
        else:
            self._copy = tempfile.TemporaryDirectory(prefix="qfault-store-")
            copy = Path(self._copy.name) / path.name
            shutil.copyfile(path, copy)
            if wal.exists():
                shutil.copyfile(wal, str(copy) + "-wal")
            uri = f"{copy.as_uri()}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None:
            conn.close()
        if self._copy is not None:
            self._copy.cleanup()
            self._copy = None


def _writer_active(path: Path) -> bool:
    """Whether a campaign run holds the store's lock (see :func:`_lock`)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return True
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def _damaged(path: Path, why: str) -> QFaultConfigError:
    return QFaultConfigError("store", str(path), "an intact qfault campaign store",
                             hint=f"{why}; the file was left untouched: restore it from a copy or use another "
                                  "store path (store=...)")


def _encode_golden(data: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def _decode_golden(path: Path, blob: bytes) -> dict:
    try:
        golden = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _damaged(path, f"its golden run does not decode ({type(exc).__name__})") from None
    if not isinstance(golden, dict) or "logits" not in golden:
        raise _damaged(path, "its golden run is not a golden run")
    return golden


def _lock(path: Path):
    """An exclusive lock on the store (held while the returned file stays open), or a clear error
    when another run holds it. Locks the file itself (``flock``, apart from SQLite's own locks)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: runs are not locked
        return None
    handle = open(path, "rb")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise QFaultConfigError("store", str(path), "a store no other campaign run is writing to",
                                hint="another 'qfault campaign run/resume' holds it; wait for it to finish "
                                     "or use another store path (store=...)") from None
    return handle


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what a killed creation of ``path`` left (its process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.*.creating"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):
            continue


def _read_meta(path: Path) -> dict[str, str]:
    """The ``meta`` table of the store at ``path``, read without modifying the file.

    Raises:
        QFaultConfigError: not a readable qfault campaign store of this version.
    """
    try:
        ro = _ReadOnly(path)
        try:
            rows = dict(ro.conn.execute("SELECT key, value FROM meta").fetchall())
            ro.conn.execute("SELECT count(*) FROM trials").fetchone()
        finally:
            ro.close()
    except sqlite3.DatabaseError as exc:
        raise QFaultConfigError("store", str(path), "a qfault campaign store (SQLite)",
                                hint=f"unreadable: {exc}; the file was left untouched") from None
    if rows.get("format") != FORMAT:
        raise QFaultConfigError("store", str(path), "a qfault campaign store",
                                hint="foreign SQLite file; the file was left untouched")
    if rows.get("version") != str(STORE_VERSION):
        raise QFaultConfigError("store.version", rows.get("version"), str(STORE_VERSION))
    return rows


def read_store_spec(path: str | Path) -> dict:
    """The spec dict a store was created with (as ``CampaignSpec.to_dict()`` gave it), read
    without modifying the file.

    Raises:
        QFaultConfigError: ``path`` is missing or not a qfault campaign store.
    """
    path = Path(path)
    if not path.is_file():
        raise QFaultConfigError("store", str(path), "an existing campaign store file")
    meta = _read_meta(path)
    try:
        return json.loads(meta["spec"])
    except (KeyError, ValueError):
        raise _damaged(path, "its spec is unreadable") from None


class CampaignStore:
    """Open (creating if needed) the store of ``spec`` at ``path``.

    Everything is checked before the file is opened for writing, so a refusal leaves every file
    (the store and its ``-wal``) byte for byte as it was: that the file is a campaign store of
    this version, SQLite's own integrity check, the golden blob's checksum, and the spec. A spec
    that only extends the stored one (more repetitions, more sweep values: see
    :func:`spec_extension`) is accepted; a writer records it in the store, a reader
    (``create=False``) only reads.

    A new store is created atomically, already holding ``golden`` when given (a kill during
    creation leaves no store). A writer holds an exclusive lock on the file until :meth:`close`:
    a second writer is refused, readers are not.

    Args:
        path: the SQLite file.
        spec: the campaign.
        create: open for writing, creating the store if missing; False: read an existing one.
        golden: the golden run to store with a new store (the runner's; tests may leave it out).
        meta: extra ``meta`` entries of a new store (the model and data digests).

    Raises:
        QFaultConfigError: the file is not an intact qfault campaign store, or another run
            writes to it (nothing is written to it).
        StoreMismatch: the store was created by a spec with different results-relevant fields;
            the message lists every difference.
    """

    def __init__(self, path: str | Path, spec: CampaignSpec, *, create: bool = True, golden: dict | None = None,
                 meta: dict[str, str] | None = None):
        self.path = Path(path)
        self.spec = spec
        self.writable = create
        self._lock = None
        self._reader: _ReadOnly | None = None
        self.extension: list[str] = []
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise QFaultConfigError("store", str(self.path), "an existing campaign store (run the campaign first)")
        if exists:
            stored = self.check(self.path, spec)
            self.extension = stored["extension"]
            if create and golden is not None and stored["golden"] is None and stored["trials"] == 0:
                exists = False  # an empty store (left by an older version's killed creation): made anew
        if not create:
            self._reader = _ReadOnly(self.path)
            self.conn = self._reader.conn
            return
        if not exists:
            self._create(golden, meta or {})
        self._lock = _lock(self.path)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if exists:
                self._extend(spec)
                with self._transaction():  # digests an older store lacks
                    self.conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", (meta or {}).items())
        except BaseException:
            self.close()
            raise

    # -- validation (read-only) --------------------------------------------------------------
    @staticmethod
    def check(path: str | Path, spec: CampaignSpec, *, writing: bool = False) -> dict:
        """Check the existing store at ``path`` for ``spec`` without modifying any file
        (``writing``: also that no other run writes to it, so a second run is refused at once).

        Returns:
            ``{"meta": {key: value}, "golden": the golden run or None, "trials": count,
            "extension": spec_extension lines}``.

        Raises:
            QFaultConfigError, StoreMismatch: as the constructor.
        """
        path = Path(path)
        meta = _read_meta(path)
        if writing and _writer_active(path):
            _lock(path)  # raises the clear "another run holds it"
        try:
            ro = _ReadOnly(path)
            try:
                verdict = [row[0] for row in ro.conn.execute("PRAGMA quick_check").fetchall()]
                blob = ro.conn.execute("SELECT data FROM golden WHERE id = 0").fetchone()
                trials = int(ro.conn.execute("SELECT count(*) FROM trials").fetchone()[0])
            finally:
                ro.close()
        except sqlite3.DatabaseError as exc:
            raise _damaged(path, f"unreadable: {exc}") from None
        if verdict != ["ok"]:
            raise _damaged(path, "SQLite integrity check: " + "; ".join(verdict[:3]))
        golden = None
        if blob is not None:
            expected = meta.get("golden_sha256")
            if expected is not None and hashlib.sha256(blob[0]).hexdigest() != expected:
                raise _damaged(path, "the golden run's checksum does not match")
            golden = _decode_golden(path, blob[0])
        try:
            stored = json.loads(meta["spec"])
        except (KeyError, ValueError):
            raise _damaged(path, "its spec is unreadable") from None
        extension = [] if meta.get("fingerprint") == spec.fingerprint() else spec_extension(stored, spec.to_dict())
        if extension is None:
            raise StoreMismatch(path, spec_diff(stored, spec.to_dict()) or ["(spec format version)"])
        return {"meta": meta, "golden": golden, "trials": trials, "extension": extension}

    # -- creation and extension ----------------------------------------------------------------
    def _create(self, golden: dict | None, meta: dict[str, str]) -> None:
        """Write the whole new store to a temporary file, then link it into place (atomic)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.path)
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.creating"
        tmp.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute("BEGIN")
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(statement)
                rows = {"format": FORMAT, "version": str(STORE_VERSION), "spec": json.dumps(self.spec.to_dict()),
                        "fingerprint": self.spec.fingerprint(), "created": str(time.time()), **meta}
                if golden is not None:
                    blob = _encode_golden(golden)
                    conn.execute("INSERT INTO golden VALUES (0, ?)", (blob,))
                    rows["golden_sha256"] = hashlib.sha256(blob).hexdigest()
                conn.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
                conn.execute("COMMIT")
            finally:
                conn.close()
            if self.path.exists():  # an empty store being made anew (see the constructor)
                for suffix in ("-wal", "-shm", ""):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
            try:
                os.link(tmp, self.path)  # never replaces a store another run created meanwhile
            except FileExistsError:
                self.check(self.path, self.spec)  # theirs: use it if it is ours to use
        finally:
            tmp.unlink(missing_ok=True)

    def _extend(self, spec: CampaignSpec) -> None:
        """Record an extended spec (see :func:`spec_extension`): trials keep their rows, their point
        indices follow their values into the new sweep."""
        if not self.extension:
            return
        moves = {}
        if any(line.startswith("sweep.") for line in self.extension):  # (an "each" axis never changes)
            stored = CampaignSpec.from_dict(self.stored_spec())
            old = {json.dumps(values, sort_keys=True): i for i, values in enumerate(stored.points())}
            new = {json.dumps(values, sort_keys=True): i for i, values in enumerate(spec.points())}
            moves = {old[key]: new[key] for key in old if old[key] != new[key]}
        with self._transaction():
            tables = ["trials"] + (["details"] if self._has_details() else [])
            for table in tables:  # in two steps: no primary key collides on the way
                for before, after in moves.items():
                    self.conn.execute(f"UPDATE {table} SET point = ? WHERE point = ?", (-1 - after, before))
                self.conn.execute(f"UPDATE {table} SET point = -1 - point WHERE point < 0")
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'spec'", (json.dumps(spec.to_dict()),))
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (spec.fingerprint(),))

    # -- reading -----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def stored_spec(self) -> dict:
        return json.loads(self.meta("spec"))

    def done(self) -> set[tuple[int, int]]:
        """``(point, repetition)`` of every completed trial."""
        return {(p, r) for p, r in self.conn.execute("SELECT point, repetition FROM trials")}

    def trials(self) -> Iterator[TrialRow]:
        query = ("SELECT point, repetition, point_json, seed, accuracy, counts, faults, elapsed_s "
                 "FROM trials ORDER BY point, repetition")
        details = self.details()
        for p, r, pj, seed, acc, counts, faults, elapsed in self.conn.execute(query):
            what = f"the values of trial ({p}, {r})"
            yield TrialRow(p, r, self._decoded(pj, what), seed, acc, self._decoded(counts, what), faults, elapsed,
                           details.get((p, r)))

    def _has_details(self) -> bool:
        return self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'details'"
                                 ).fetchone() is not None

    def details(self) -> dict[tuple[int, int], dict]:
        """``{(point, repetition): details}`` of the trials that have any."""
        if not self._has_details():
            return {}
        out = {}
        for p, r, data in self.conn.execute("SELECT point, repetition, data FROM details"):
            out[(p, r)] = self._decoded(data, f"the details of trial ({p}, {r})")
        return out

    def _decoded(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            raise _damaged(self.path, f"{what} are not valid JSON") from None

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM trials").fetchone()[0])

    def golden(self) -> dict | None:
        """The stored golden run (``logits``, ``labels``, ``accuracy``, ...), or None."""
        row = self.conn.execute("SELECT data FROM golden WHERE id = 0").fetchone()
        return None if row is None else _decode_golden(self.path, row[0])

    # -- writing -----------------------------------------------------------------------------
    def _transaction(self):
        conn = self.conn

        class _Tx:
            def __enter__(self_inner):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, *rest):
                conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()

    def save_golden(self, data: dict[str, Any]) -> None:
        """Store the golden run (and its checksum)."""
        blob = _encode_golden(data)
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO golden VALUES (0, ?)", (blob,))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('golden_sha256', ?)",
                              (hashlib.sha256(blob).hexdigest(),))

    def add_trial(self, row: TrialRow) -> None:
        """Record a completed trial atomically (a repeated key is refused, never overwritten)."""
        with self._transaction():
            self.conn.execute(
                "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.point, row.repetition, json.dumps(row.point_values, sort_keys=True), row.seed,
                 row.accuracy, json.dumps(row.counts, sort_keys=True), row.faults, row.elapsed_s, time.time()),
            )
            if row.details is not None:
                self.conn.execute(_DETAILS)
                self.conn.execute("INSERT INTO details VALUES (?, ?, ?)",
                                  (row.point, row.repetition, json.dumps(row.details, sort_keys=True)))

    def close(self) -> None:
        conn = self.__dict__.pop("conn", None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def __enter__(self) -> "CampaignStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
