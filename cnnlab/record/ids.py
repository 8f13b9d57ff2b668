"""Log IDs: assigned once, when a run is created, and stored on it (tag cnnlab.id): `T<n>` per experiment for single
runs, `<sweep>/T<n>` for a sweep's trials (which their sweep numbers). Listing, filtering and sorting never renumber."""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from typing import List

from ..errors import CnnlabError
from .location import file_lock, sqlite_path
from .vocabulary import Record, Tag



def turns(uri: str):
    """A lock that processes on a local store take turns under (claiming log IDs, reopening a run); a server's
    store has none."""
    path = sqlite_path(uri)
    return file_lock(path.parent / f".{path.name}.ids.lock") if path else nullcontext()


def claim(writer, exp_id: str, run_id: str) -> str:
    """T<next n>, written on the run and kept only if no other run claims the same ID. On a local store the claims
    take turns under a lock, so numbers run without gaps; on a server, two runs that claim one at once both see each
    other and both move on: a number may be skipped there, never given twice."""
    client = writer.client
    with turns(writer.uri):
        for attempt in range(100):
            top = client.search_runs([exp_id], f"tags.`{Tag.SEQ}` LIKE '%'", max_results=1,
                                     order_by=[f"tags.`{Tag.SEQ}` DESC"])
            n = int(top[0].data.tags[Tag.SEQ]) + 1 if top else 0
            log_id = f"T{n}"
            writer.set_tags(run_id, {Tag.ID: log_id, Tag.SEQ: f"{n:09d}"})
            holders = client.search_runs([exp_id], f"tags.`{Tag.ID}` = '{log_id}'", max_results=10)
            if all(r.info.run_id == run_id for r in holders):
                return log_id
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise CnnlabError(f"Could not give run {run_id} a log ID in {writer.uri}: too many runs were being created at "
                      "once. Try again.")


def give(writer, records: List[Record]) -> List[Record]:
    """Runs recorded before log IDs existed get theirs now, once, in start order: a sweep's parent its sweep's name,
    a trial <sweep>/<its run name>, any other run the next T<n> of its experiment."""
    for r in records:
        if Tag.ID in r.tags:
            continue
        if r.is_sweep_parent:
            r.id = r.tags[Tag.SWEEP_PARENT]
            writer.set_tags(r.run_id, {Tag.ID: r.id})
        elif r.sweep:
            r.id = f"{r.sweep}/{r.name}"
            writer.set_tags(r.run_id, {Tag.ID: r.id})
        else:
            r.id = claim(writer, r.experiment_id, r.run_id)
        r.tags[Tag.ID] = r.id
    return records
