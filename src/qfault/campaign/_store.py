"""SQLite result store: one file per campaign, one atomic row per completed trial.

The file holds the spec, its fingerprint, the golden (fault-free) run and one row per trial.
It is opened in WAL mode and every trial is committed in its own transaction, so a campaign
killed at any moment (``kill -9`` included) loses at most the trial in flight and resumes with
no trial lost or repeated. A file that is not a qfault campaign store, or whose spec differs,
is refused without being modified.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .._errors import QFaultConfigError
from ._spec import CampaignSpec, spec_diff

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
        self.changes = changes
        self.args = (f"store '{path}' was created by a different spec; changes (stored -> new):\n  "
                     + "\n  ".join(changes) + "\nUse another store path (store=...) or the original spec.",)

    def __str__(self) -> str:
        return self.args[0]


class CampaignStore:
    """Open (creating if needed) the store of ``spec`` at ``path``.

    Raises:
        QFaultConfigError: the file is not a qfault campaign store (nothing is written to it).
        StoreMismatch: the store was created by a spec with different results-relevant fields;
            the message lists every difference.
    """

    def __init__(self, path: str | Path, spec: CampaignSpec, *, create: bool = True):
        self.path = Path(path)
        self.spec = spec
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists:
            self._check_foreign()
        elif not create:
            raise QFaultConfigError("store", str(self.path), "an existing campaign store (run the campaign first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if exists:
            self._check_spec()
        else:
            with self._transaction():
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    self.conn.execute(statement)
                meta = {"format": FORMAT, "version": str(STORE_VERSION), "spec": json.dumps(spec.to_dict()),
                        "fingerprint": spec.fingerprint(), "created": str(time.time())}
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())

    # -- validation --------------------------------------------------------------------------
    def _check_foreign(self) -> None:
        """Read-only check that the file is one of ours (never modifies it)."""
        try:
            ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                rows = dict(ro.execute("SELECT key, value FROM meta").fetchall())
                ro.execute("SELECT count(*) FROM trials").fetchone()
            finally:
                ro.close()
        except sqlite3.DatabaseError as exc:
            raise QFaultConfigError("store", str(self.path), "a qfault campaign store (SQLite)",
                                    hint=f"unreadable: {exc}; the file was left untouched") from None
        if rows.get("format") != FORMAT:
            raise QFaultConfigError("store", str(self.path), "a qfault campaign store",
                                    hint="foreign SQLite file; the file was left untouched")
        if rows.get("version") != str(STORE_VERSION):
            raise QFaultConfigError("store.version", rows.get("version"), str(STORE_VERSION))

    def _check_spec(self) -> None:
        stored = self.stored_spec()
        if self.meta("fingerprint") != self.spec.fingerprint():
            diff = spec_diff(stored, self.spec.to_dict())
            self.conn.close()
            raise StoreMismatch(self.path, diff or ["(spec format version)"])

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
            yield TrialRow(p, r, json.loads(pj), seed, acc, json.loads(counts), faults, elapsed, details.get((p, r)))

    def details(self) -> dict[tuple[int, int], dict]:
        """``{(point, repetition): details}`` of the trials that have any."""
        exists = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'details'").fetchone()
        if exists is None:
            return {}
        return {(p, r): json.loads(data) for p, r, data in self.conn.execute("SELECT point, repetition, data FROM details")}

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM trials").fetchone()[0])

    def golden(self) -> dict | None:
        row = self.conn.execute("SELECT data FROM golden WHERE id = 0").fetchone()
        if row is None:
            return None
        return torch.load(io.BytesIO(row[0]), map_location="cpu", weights_only=True)

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
        buffer = io.BytesIO()
        torch.save(data, buffer)
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO golden VALUES (0, ?)", (buffer.getvalue(),))

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
        try:
            self.conn.close()
        except sqlite3.Error:  # pragma: no cover
            pass

    def __enter__(self) -> "CampaignStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
