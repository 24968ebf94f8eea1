"""Atomic file writes: a reader never sees a half-written LUT, architecture or checkpoint.

Files are created with the permissions any other file of the user gets (``0o666`` minus the umask), not the
``0o600`` of :func:`tempfile.mkstemp`, so teammates and other ranks' users can read shared LUTs and results.
JSON is written strictly: ``NaN`` and ``Infinity`` are not JSON, and a value that is not finite is a bug in the
writer (use ``None`` for a metric that does not exist), so it raises instead of writing an invalid file.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process' umask (read from ``/proc`` where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def finite_or_none(value: Any) -> float | None:
    """``float(value)``, or ``None`` for a metric that does not exist (``None``, NaN, infinite): JSON holds no NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def null_non_finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by ``None``: for reports where NaN means "not defined"
    (e.g. Kendall's tau of constant values, a metric of a failed trial).

    Numpy scalars (values and dictionary keys) become Python numbers, tuples become lists: the result is what
    :func:`json.dumps` writes with ``allow_nan=False``. The one NaN-to-null helper of the package.
    """
    numpy = sys.modules.get("numpy")  # a numpy scalar exists only when numpy was imported: never import it here
    if numpy is not None and isinstance(obj, numpy.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {(k.item() if numpy is not None and isinstance(k, numpy.generic) else k): null_non_finite(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [null_non_finite(v) for v in obj]
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets mode ``0o666 & ~umask``, like a file opened with ``open(path, "wb")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, strict JSON (no NaN / Infinity) with a trailing newline.

    Raises ``ValueError`` naming the file when ``obj`` holds a float that is not finite; nothing is written then.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"refusing to write {path}: {err} (NaN / Infinity are not JSON; write null for a value "
                         "that does not exist)") from None
    return atomic_write_text(path, text + "\n")


def read_json_document(path: str | os.PathLike, setting: str, fmt: str, version: int, what: str,
                       hint: str) -> dict[str, Any]:
    """Read a versioned JSON file the framework wrote (``{"format": fmt, "version": version, ...}``).

    ``setting`` names the input in messages (``search_mask``), ``what`` the kind of file expected and ``hint``
    how to make one. A missing, unparsable, foreign or other-version file is a ``ConfigError`` naming the fix.
    """
    from nas.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{setting} file {path} does not exist; {hint}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{setting} {path}: not valid JSON ({err})") from None
    return check_document(doc, f"{setting} {path}", fmt, version, what, hint)


def check_document(doc: Any, source: str, fmt: str, version: int, what: str, hint: str) -> dict[str, Any]:
    """Check that a loaded file (``source`` names it in messages) is a ``{"format": fmt, "version": version}``
    document; otherwise a ``ConfigError`` naming the fix."""
    from nas.errors import ConfigError

    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ConfigError(f"{source} is not {what} (format {fmt}); {hint}")
    if doc.get("version") != version:
        raise ConfigError(f"{source}: version {doc.get('version')!r} is not supported (this version reads "
                          f"{version})")
    return doc


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append ``record`` as one strict-JSON line to ``path``, flushed and fsynced: a killed writer loses at most
    the line being written (:func:`read_jsonl` drops such a torn last line)."""
    line = json.dumps(null_non_finite(record), allow_nan=False, separators=(",", ":")) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike, what: str = "record",
               check: Callable[[dict[str, Any], int], None] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line (none if the file does not exist).

    A torn last line (no newline after it: a writer killed mid-line) is ignored; a damaged line elsewhere, or a
    line that is not an object, is a ``ConfigError`` naming the file and line. ``check(record, line_number)`` may
    refuse a record by raising.
    """
    from nas.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the last write was cut short
                break
            raise ConfigError(f"{path}: line {number} is not valid JSON; the file is damaged (remove that line: the "
                              f"{what} it held is then missing)") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: line {number} is not a JSON object ({what})")
        if check is not None:
            check(record, number)
        records.append(record)
    return records


def agg_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` (``kwargs``: ``figsize`` ...) drawn by the Agg canvas: no pyplot, no global state,
    no backend switch, so the library never changes how its caller draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def write_figure(path: str | os.PathLike, fig: Any, **savefig: Any) -> Path:
    """Write ``fig`` (a matplotlib ``Figure``) atomically as an image of ``path``'s type (PNG by default);
    ``savefig``: ``dpi``, ``bbox_inches`` ... of ``Figure.savefig``."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig)
    return atomic_write_bytes(path, buffer.getvalue())
