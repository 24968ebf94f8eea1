"""``validations.jsonl``: one record per validated sub-network; the search's cache and its resume point.

Each line is a JSON object (``format: spnas-subnet-validation``, ``version: 1``) with the architecture, its
genome, the validated objectives (error, cross-entropy), its latency per device with each device's LUT
fingerprint, MACs, parameters and the digests of the supernet checkpoint and the space. Records are appended
one by one, each line in one write, so a killed search loses at most the record being written (a torn last line
is dropped when the file is reopened); they are fsynced each (``durable``) or once per batch (:meth:`sync`: the
search's engine), which only matters if the machine itself goes down. Reopening refuses records of another
checkpoint, space or LUT with an error naming both digests: their objective values do not belong to this search.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nas.errors import ConfigError
from nas.io import read_jsonl

log = logging.getLogger(__name__)

RECORD_FORMAT = "spnas-subnet-validation"
RECORD_VERSION = 1


class ValidationStore:
    """Validated sub-networks by architecture key, backed by an append-only JSONL file (or memory only)."""

    def __init__(self, path: str | os.PathLike | None, supernet_digest: str, space_digest: str,
                 lut_fingerprints: Mapping[str, str]) -> None:
        self.path = Path(path) if path is not None else None
        self.supernet_digest = supernet_digest
        self.space_digest = space_digest
        self.lut_fingerprints = dict(lut_fingerprints)
        self.records: dict[str, dict[str, Any]] = {}
        self.loaded = 0
        self._unsynced = False
        if self.path is not None and self.path.is_file():
            self._load()

    # ------------------------------------------------------------------ reading
    def _load(self) -> None:
        assert self.path is not None
        raw = self.path.read_bytes()
        good_end = 0
        for number, line in enumerate(raw.split(b"\n"), start=1):
            end = good_end + len(line) + 1
            if not line.strip():
                good_end = min(end, len(raw))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if end >= len(raw):  # torn last line of a killed run: drop it
                    log.warning("%s: dropping an incomplete last record (line %d)", self.path, number)
                    break
                raise ConfigError(f"{self.path}: line {number} is not valid JSON; the file is damaged "
                                  "(remove the bad line or start a new run folder)") from None
            self._check(record, number)
            self.records[record["key"]] = record
            good_end = min(end, len(raw))
        if good_end < len(raw):
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
        self.loaded = len(self.records)

    def _check(self, record: Any, number: int) -> None:
        where = f"{self.path}: line {number}"
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ConfigError(f"{where} is not a sub-network validation record ({RECORD_FORMAT})")
        if record.get("version") != RECORD_VERSION:
            raise ConfigError(f"{where}: record version {record.get('version')!r} is not supported "
                              f"(this version reads {RECORD_VERSION})")
        if record.get("space_digest") != self.space_digest:
            raise ConfigError(f"{where} was validated in space {record.get('space_digest')}, but this search uses "
                              f"space {self.space_digest}; resume with the same space=... or a new run folder")
        if record.get("supernet_digest") != self.supernet_digest:
            raise ConfigError(f"{where} was validated with supernet checkpoint {record.get('supernet_digest')}, "
                              f"but this search uses checkpoint {self.supernet_digest}; its errors do not "
                              "belong to this supernet: resume with the same supernet=... or a new run folder")
        for device, fingerprint in (record.get("lut_fingerprints") or {}).items():
            mine = self.lut_fingerprints.get(device)
            if mine is not None and mine != fingerprint:
                raise ConfigError(f"{where}: device {device!r} was priced with LUT {fingerprint}, but this search "
                                  f"uses LUT {mine} for it; resume with the same hardware / LUT or a new run folder")

    # ------------------------------------------------------------------ queries
    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    # ------------------------------------------------------------------ writing
    def add(self, record: dict[str, Any], durable: bool = True) -> dict[str, Any]:
        """Stamp ``record`` with format and digests, append it (fsynced if ``durable``, else at :meth:`sync`)
        and cache it."""
        full = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "index": len(self.records), **record,
                "supernet_digest": self.supernet_digest, "space_digest": self.space_digest}
        check_finite(full, full.get("key", "?"))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(full, allow_nan=False) + "\n")
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            self._unsynced = not durable or self._unsynced
        self.records[full["key"]] = full
        return full

    def sync(self) -> None:
        """fsync the records appended without ``durable`` since the last sync."""
        if self._unsynced and self.path is not None:
            with open(self.path, "ab") as handle:
                os.fsync(handle.fileno())
            self._unsynced = False


def read_records(path: str | os.PathLike, space_name: str, space_digest: str, setting: str) -> list[dict[str, Any]]:
    """The records of a ``validations.jsonl`` for tools that read another run's file (PopDB, predictor
    evaluation): a torn last line of a killed run is skipped, a damaged line elsewhere or a record of another
    space is an error naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{setting}={path} does not exist; pass a subnet_search run's validations.jsonl")

    def same_space(record: dict[str, Any], number: int) -> None:
        if record.get("space_digest") != space_digest:
            raise ConfigError(f"{path}: line {number} was searched in space digest {record.get('space_digest')}, "
                              f"but space '{space_name}' (digest {space_digest}) is selected; pass the space=... "
                              "of that search")

    records = read_jsonl(path, "validated sub-network", check=same_space)
    if not records:
        raise ConfigError(f"{setting}={path} holds no validated sub-network")
    return records


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN / inf anywhere in a record (they would poison the search and are not valid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"sub-network {where}: an objective value is {value}; NaN/inf is never written. "
                          "The supernet diverged or the data is broken: check the checkpoint and data=...")
    if isinstance(value, Mapping):
        for v in value.values():
            check_finite(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_finite(v, where)
