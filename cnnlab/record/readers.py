"""Reading the record: one protocol, two readers, chosen once by the store's kind (as MLflow's own store registry
chooses a tracking store by URI scheme).

- `SqliteReader` reads a local SQLite store's file itself: MLflow's client makes an ORM object of every param,
  metric and tag, 3 s for 1,000 runs after 1.7 s of importing and opening, where these queries take a tenth of that.
  The tables are MLflow's (runs, params, latest_metrics, metrics, tags, as `mlflow db upgrade` keeps them).
- `ClientReader` asks MLflow's client: a tracking server, another database, or a SQLite file whose tables are not
  as expected (another MLflow).

tests/test_record.py holds the two equal. Writes always go through the client (writer.py). Filters never carry
user text inside a quoted string it could break out of: a value that cannot be quoted is matched in Python instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from .vocabulary import Record, Tag

PAGE = 5000
Histories = Dict[str, Dict[str, Dict[int, float]]]  # run id -> metric -> {step: value}


class Reader(Protocol):
    def experiments(self) -> Dict[str, str]:
        """name -> id of every active experiment."""

    def latest_experiment(self) -> Optional[str]:
        """The experiment of the most recently started run; None in an empty store."""

    def runs(self, exp_ids: Sequence[str], sweep: Optional[str] = None) -> List[Record]:
        """The active runs of `exp_ids` (of one sweep), oldest first."""

    def find(self, exp_ids: Sequence[str], ref: str, hexadecimal: bool) -> List[Record]:
        """The runs whose log ID or run name is `ref`, or whose run ID starts with it (when `hexadecimal`)."""

    def running(self, exp_ids: Sequence[str]) -> List[Record]:
        """The runs whose MLflow status is RUNNING."""

    def first_single_run(self, exp_id: str) -> Optional[Record]:
        """The experiment's first run outside sweeps (the lowest T<n>)."""

    def tagged(self, exp_id: str, tag: str, value: str) -> List[Record]:
        """The runs of `exp_id` with tag `tag` = `value`, oldest first."""

    def histories(self, run_ids: List[str], keys: Sequence[str]) -> Histories:
        """run id -> metric -> {step: first value logged at that step}."""


Make = Callable[..., Record]  # (run_id, name, experiment_id, status, start_time, params, metrics, tags) -> Record


class SqliteReader:
    """Reads the SQLite file at `path`, read-only, each call in one transaction."""

    def __init__(self, path: Path, make: Make):
        self.path, self.make = path, make

    @classmethod
    def usable(cls, path: Path) -> bool:
        """Are MLflow's tables there as this reader expects them?"""
        try:
            cls(path, None)._query(("SELECT r.run_uuid, r.name, r.experiment_id, r.status, r.start_time, "
                                    "r.lifecycle_stage FROM runs r LIMIT 0", ()),
                                   ("SELECT run_uuid, key, value, is_nan FROM latest_metrics LIMIT 0", ()),
                                   ("SELECT run_uuid, key, step, value, is_nan, timestamp FROM metrics LIMIT 0", ()),
                                   ("SELECT run_uuid, key, value FROM params LIMIT 0", ()),
                                   ("SELECT run_uuid, key, value FROM tags LIMIT 0", ()),
                                   ("SELECT name, experiment_id, lifecycle_stage FROM experiments LIMIT 0", ()))
            return True
        except Exception:
            return False

    def _query(self, *statements) -> List[list]:
        """The rows of each (sql, args), read-only and in one transaction."""
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            db.execute("BEGIN")  # one snapshot for all the statements
            return [db.execute(sql, args).fetchall() for sql, args in statements]

    def experiments(self) -> Dict[str, str]:
        rows, = self._query(("SELECT name, experiment_id FROM experiments WHERE lifecycle_stage = 'active' "
                             "ORDER BY experiment_id", ()))
        return {name: str(exp_id) for name, exp_id in rows}

    def latest_experiment(self) -> Optional[str]:
        rows, = self._query(("SELECT e.name FROM runs r JOIN experiments e USING (experiment_id) WHERE "
                             "e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' ORDER BY r.start_time "
                             "DESC LIMIT 1", ()))
        return rows[0][0] if rows else None

    def _read(self, exp_ids: Sequence[str], where: str = "", args: Sequence[Any] = ()) -> List[Record]:
        """The active runs of `exp_ids` (and `where`, SQL on the runs table) oldest first."""
        if not exp_ids:
            return []
        selected = (f"SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' AND experiment_id IN "
                    f"({','.join('?' * len(exp_ids))})" + (f" AND {where}" if where else ""))
        args = [int(e) for e in exp_ids] + list(args)
        runs, param_rows, metric_rows, tag_rows = self._query(
            (f"SELECT run_uuid, name, experiment_id, status, start_time FROM runs WHERE run_uuid IN ({selected}) "
             "ORDER BY start_time, run_uuid", args),
            (f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})", args),
            (f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({selected})", args),
            (f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})", args))
        params: Dict[str, Dict[str, str]] = {r[0]: {} for r in runs}
        metrics: Dict[str, Dict[str, float]] = {r[0]: {} for r in runs}
        tags: Dict[str, Dict[str, str]] = {r[0]: {} for r in runs}
        for run_id, key, value in param_rows:
            params[run_id][key] = value
        for run_id, key, value, is_nan in metric_rows:
            metrics[run_id][key] = float("nan") if is_nan else value
        for run_id, key, value in tag_rows:
            tags[run_id][key] = value
        return [self.make(run_id, name, str(exp_id), status, start_time, params[run_id], metrics[run_id],
                          tags[run_id]) for run_id, name, exp_id, status, start_time in runs]

    def runs(self, exp_ids: Sequence[str], sweep: Optional[str] = None) -> List[Record]:
        if sweep:
            return self.tagged_in(exp_ids, Tag.SWEEP, sweep)
        return self._read(exp_ids)

    def find(self, exp_ids: Sequence[str], ref: str, hexadecimal: bool) -> List[Record]:
        return self._read(exp_ids, "(run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?) OR "
                                   "name = ? OR (? AND run_uuid LIKE ?))", (Tag.ID, ref, ref, hexadecimal, f"{ref}%"))

    def running(self, exp_ids: Sequence[str]) -> List[Record]:
        return self._read(exp_ids, "status = 'RUNNING'")

    def first_single_run(self, exp_id: str) -> Optional[Record]:
        found = self._read([exp_id], "run_uuid = (SELECT t.run_uuid FROM tags t JOIN runs r USING (run_uuid) WHERE "
                                     "t.key = ? AND r.experiment_id = ? AND r.lifecycle_stage = 'active' "
                                     "ORDER BY t.value LIMIT 1)", (Tag.SEQ, int(exp_id)))
        return found[0] if found else None

    def tagged_in(self, exp_ids: Sequence[str], tag: str, value: str) -> List[Record]:
        return self._read(exp_ids, "run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)", (tag, value))

    def tagged(self, exp_id: str, tag: str, value: str) -> List[Record]:
        return self.tagged_in([exp_id], tag, value)

    def histories(self, run_ids: List[str], keys: Sequence[str]) -> Histories:
        out: Histories = {r: {} for r in run_ids}
        if not run_ids or not keys:
            return out
        found = self._query(*[(f"SELECT run_uuid, key, step, value, is_nan FROM metrics WHERE run_uuid IN "
                               f"({','.join('?' * len(run_ids[i:i + 500]))}) AND key IN ({','.join('?' * len(keys))}) "
                               "ORDER BY run_uuid, key, timestamp, step, value", [*run_ids[i:i + 500], *keys])
                              for i in range(0, len(run_ids), 500)])
        for rows in found:
            for run_id, key, step, value, is_nan in rows:
                out[run_id].setdefault(key, {}).setdefault(step, float("nan") if is_nan else value)
        return out


def _literal(value: str) -> Optional[str]:
    """`value` as a quoted string of MLflow's filter grammar, or None when it cannot be quoted safely."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


class ClientReader:
    """Reads through MLflow's client (MLflow's search grammar)."""

    def __init__(self, client, make: Make):
        self.client, self.make = client, make

    def record(self, run) -> Record:
        return self.make(run.info.run_id, run.info.run_name, run.info.experiment_id, run.info.status,
                         run.info.start_time, run.data.params, dict(run.data.metrics), dict(run.data.tags))

    def _search(self, exp_ids: Sequence[str], where: Dict[str, str], *, extra: Sequence[str] = (),
                order_by: Optional[List[str]] = None, max_results: Optional[int] = None) -> List[Record]:
        """Runs of `exp_ids` matching `where` ({"tags.<name>" | "run_name": value}) and the `extra` clauses (built
        here from values this module controls), oldest first unless ordered otherwise."""
        if not exp_ids:
            return []
        clauses, in_python = list(extra), {}
        for key, value in where.items():
            quoted = _literal(value)
            if quoted is None:
                in_python[key] = value
            elif key == "run_name":
                clauses.append(f"attributes.run_name = {quoted}")
            else:
                clauses.append(f"tags.`{key[len('tags.'):]}` = {quoted}")
        runs, token = [], None
        while True:
            page = self.client.search_runs(list(exp_ids), " and ".join(clauses), page_token=token,
                                           max_results=min(PAGE, max_results or PAGE),
                                           order_by=order_by or ["attributes.start_time ASC"])
            runs += list(page)
            token = page.token
            if not token or (max_results and len(runs) >= max_results):
                break
        got = lambda run, key: run.info.run_name if key == "run_name" else run.data.tags.get(key[len("tags."):])  # noqa
        return [self.record(r) for r in runs if all(got(r, k) == v for k, v in in_python.items())]

    def experiments(self) -> Dict[str, str]:
        return {e.name: e.experiment_id for e in self.client.search_experiments()}

    def latest_experiment(self) -> Optional[str]:
        known = self.experiments()
        runs = self.client.search_runs(list(known.values()), max_results=1,
                                       order_by=["attributes.start_time DESC"]) if known else []
        return {v: k for k, v in known.items()}.get(runs[0].info.experiment_id) if runs else None

    def runs(self, exp_ids: Sequence[str], sweep: Optional[str] = None) -> List[Record]:
        return self._search(exp_ids, {f"tags.{Tag.SWEEP}": sweep} if sweep else {})

    def find(self, exp_ids: Sequence[str], ref: str, hexadecimal: bool) -> List[Record]:
        found: Dict[str, Record] = {}
        for where in ({f"tags.{Tag.ID}": ref}, {"run_name": ref}):
            for record in self._search(exp_ids, where):
                found.setdefault(record.run_id, record)
        if hexadecimal:
            for record in self._search(exp_ids, {}, extra=[f"attributes.run_id LIKE '{ref}%'"]):
                found.setdefault(record.run_id, record)
        return list(found.values())

    def running(self, exp_ids: Sequence[str]) -> List[Record]:
        return self._search(exp_ids, {}, extra=["attributes.status = 'RUNNING'"])

    def first_single_run(self, exp_id: str) -> Optional[Record]:
        found = self._search([exp_id], {}, extra=[f"tags.`{Tag.SEQ}` LIKE '%'"], max_results=1,
                             order_by=[f"tags.`{Tag.SEQ}` ASC"])
        return found[0] if found else None

    def tagged(self, exp_id: str, tag: str, value: str) -> List[Record]:
        return self._search([exp_id], {f"tags.{tag}": value})

    def histories(self, run_ids: List[str], keys: Sequence[str]) -> Histories:
        out: Histories = {r: {} for r in run_ids}
        # MLflow's client has no bulk call; its SQL store does (one query per metric for 500 runs)
        backend = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        for key in keys if run_ids else ():
            if hasattr(backend, "get_metric_history_bulk"):
                for i in range(0, len(run_ids), 500):
                    for m in backend.get_metric_history_bulk(run_ids[i:i + 500], key, max_results=10 ** 7):
                        out[m.run_id].setdefault(key, {}).setdefault(m.step, m.value)
            else:  # a tracking server: one request per run
                for run_id in run_ids:
                    for m in self.client.get_metric_history(run_id, key):
                        out[run_id].setdefault(key, {}).setdefault(m.step, m.value)
        return out
