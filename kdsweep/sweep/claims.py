"""Atomic claims in the study's database: one grid point -> one live trial, one parent run.

Optuna's own queue (``enqueue_trial`` + ``ask``) and its GridSampler can hand the same point to two
processes that share a study (the WAITING -> RUNNING check is a read then a write, not atomic on
SQLite). kdsweep adds one small table, ``kdsweep_claims``, to the study's database and claims each
point with an INSERT (the primary key makes a second INSERT fail) or, to retake a point whose trial
failed, with a compare-and-set UPDATE (``... WHERE value = <old>``, exactly one row or none).
Both are atomic on SQLite, PostgreSQL and MySQL; nothing relies on file locks, so sweepers on
several machines sharing a PostgreSQL study are covered too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from kdsweep import liveness

TABLE = "kdsweep_claims"
PENDING = "pending:"


@dataclass
class Claim:
    study: str
    key: str
    value: str
    claimed_at: float

    @property
    def pending(self) -> bool:
        return self.value.startswith(PENDING)

    def free(self, trials_by_number: Mapping[int, Any], grace_period: float) -> bool:
        """Can this claim be retaken? When its trial failed, or when it is pending and the
        sweeper that made it is dead (or it is older than ``grace_period`` seconds)."""
        if self.pending:  # made by a sweeper that died before it created the trial?
            if liveness.alive(liveness.parse_tag(self.owner)) is False:
                return True
            return time.time() - self.claimed_at > grace_period
        if not self.value.startswith("#") or not self.value[1:].isdigit():
            return True  # written by an older kdsweep: judge by the trials alone
        t = trials_by_number.get(int(self.value[1:]))
        return t is None or t.state == TrialState.FAIL  # None: the study was deleted and remade

    @property
    def owner(self) -> str | None:
        """``host:pid:start`` of the process that made a pending claim (None: unknown)."""
        return self.value.split("@", 1)[1] if self.pending and "@" in self.value else None


class Claims:
    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None):
        self.engine = sa.create_engine(url, **(engine_kwargs or {}))
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("study", sa.String(512), primary_key=True),
            sa.Column("key", sa.String(1024), primary_key=True),
            sa.Column("value", sa.String(512), nullable=False),
            sa.Column("claimed_at", sa.Float, nullable=False),
        )
        try:
            meta.create_all(self.engine, checkfirst=True)
        except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.IntegrityError):
            # Another process created it between our check and our CREATE TABLE (PostgreSQL
            # reports that as a unique violation in its catalogue).
            if not sa.inspect(self.engine).has_table(TABLE):
                raise

    def get(self, study: str, key: str) -> Claim | None:
        t = self.table
        with self.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.study == study, t.c.key == key)).first()
        return Claim(*row) if row else None

    def all(self, study: str) -> dict[str, Claim]:
        t = self.table
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t).where(t.c.study == study)).all()
        return {r.key: Claim(*r) for r in rows}

    def insert(self, study: str, key: str, value: str) -> bool:
        """Claim ``key`` if nobody has; True if this call did."""
        try:
            with self.engine.begin() as c:
                c.execute(sa.insert(self.table).values(study=study, key=key, value=value,
                                                       claimed_at=time.time()))
        except sa_exc.IntegrityError:
            return False
        return True

    def swap(self, study: str, key: str, old: str, new: str) -> bool:
        """Compare-and-set: replace ``old`` by ``new``; True if this call did."""
        t = self.table
        with self.engine.begin() as c:
            res = c.execute(sa.update(t).where(t.c.study == study, t.c.key == key, t.c.value == old)
                            .values(value=new, claimed_at=time.time()))
        return res.rowcount == 1

    def claim(self, study: str, key: str, current: Claim | None, owner: str = "") -> str | None:
        """Take ``key`` (free, or ``current`` was judged stale by the caller); returns a token
        that names ``owner`` (a process killed before it turned the claim into a trial number
        leaves a pending claim that a later sweeper may retake at once)."""
        token = f"{PENDING}{uuid.uuid4().hex}" + (f"@{owner}" if owner else "")
        if current is None:
            return token if self.insert(study, key, token) else None
        return token if self.swap(study, key, current.value, token) else None

    def dispose(self) -> None:
        self.engine.dispose()
