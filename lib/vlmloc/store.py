"""A resumable results store: one JSON-lines file per experimental condition.

Experiments on a 7B model run for hours and get interrupted. Each finished sample is appended as
one JSON line and synced to disk at once, so a rerun skips what is done (``pending``) and loses at
most the sample that was being written. The file name carries a hash of the condition's
configuration: changing a parameter starts a fresh file instead of silently mixing records made
under different settings.

Layout::

    <results_dir>/<model_dirname>/<experiment>/<condition>-<config_key>.jsonl
    <results_dir>/<model_dirname>/<experiment>/runtime-<config_key>.json   (seconds per stage, every run)
    <results_dir>/<model_dirname>/<chapter>.json        (chapter summaries)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "ConditionLog",
    "CorruptResultsError",
    "ResultsStore",
    "RuntimeLog",
    "StaleResultsError",
    "config_key",
    "model_dirname",
    "read_summary",
    "write_summary",
]

logger = logging.getLogger("vlmloc.store")


class StaleResultsError(RuntimeError):
    """A results file was written under a different configuration than the one requested."""


class CorruptResultsError(ValueError):
    """A results file has an unreadable line that a crash cannot explain (not the last line)."""


# --------------------------------------------------------------------------- naming and encoding


def model_dirname(model_id: str) -> str:
    """A directory name for a model id: hub ids like ``llava-hf/llava-1.5-7b-hf`` contain a slash."""
    return model_id.replace("/", "__")


def _json_default(obj: Any) -> Any:
    """Encode numpy scalars and arrays, torch tensors, sets and paths, which ``json`` rejects."""
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(
        f"Cannot store a value of type {type(obj).__name__} as JSON: {obj!r}; "
        "convert it to numbers, strings, lists or dicts first."
    )


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, default=_json_default, ensure_ascii=False, **kwargs)


def _canonical(config: Mapping) -> str:
    return _dumps(dict(config), sort_keys=True, separators=(",", ":"))


def config_key(config: Mapping) -> str:
    """A short, stable hash of a configuration (first 10 hex digits of the SHA-1 of canonical JSON).

    Key order does not matter and tuples hash like lists, so equal configurations get equal keys
    across runs and machines.
    """
    return hashlib.sha1(_canonical(config).encode("utf-8")).hexdigest()[:10]


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in {".", ".."}:
        raise ValueError(
            f"{kind} must be a non-empty name without slashes, got {value!r}; "
            "use something like 'object_ablation'."
        )


# --------------------------------------------------------------------------- one condition


class ConditionLog:
    """The records of one condition (e.g. "ablate object tokens") under one configuration.

    Opening reads the existing file, if any: a truncated last line (a crash mid-write) is ignored
    with a warning and cut off at the next ``append``; a bad line elsewhere raises
    ``CorruptResultsError``; a header whose configuration differs raises ``StaleResultsError``.
    """

    def __init__(self, path: str | Path, name: str, config: Mapping) -> None:
        self.path = Path(path)
        self.name = name
        self.config = json.loads(_canonical(config))
        self.key = config_key(config)
        self._records: list[dict] = []
        self._done: set[str] = set()
        self._valid_bytes = 0  # length of the file's readable prefix
        self._needs_repair = False
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_header()

    # -- reading

    def _header(self) -> dict:
        return {"_header": True, "condition": self.name, "config": self.config}

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the file ends with a newline, as it should
        offset = 0
        parsed: list[dict] = []
        for number, raw in enumerate(lines, start=1):
            is_last = number == len(lines)
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("a line must hold a JSON object")
            except (UnicodeDecodeError, ValueError) as err:
                if is_last:
                    logger.warning(
                        "Ignoring an incomplete last line (%d) of %s, probably left by an interrupted "
                        "run; it will be removed on the next append.",
                        number,
                        self.path,
                    )
                    self._needs_repair = True
                    break
                raise CorruptResultsError(
                    f"Line {number} of {self.path} is not valid JSON ({err}); fix or delete that line, "
                    "or delete the file to recompute this condition."
                ) from err
            parsed.append(obj)
            offset += len(raw) + 1
        self._valid_bytes = min(offset, len(data))
        if self._valid_bytes < len(data) or (data and not data.endswith(b"\n")):
            self._needs_repair = True
        if not parsed:
            self._needs_repair = True  # empty file or a header cut off mid-write: start it afresh
            self._valid_bytes = 0
            return
        self._check_header(parsed[0])
        for number, record in enumerate(parsed[1:], start=2):
            self._remember(record, number)

    def _check_header(self, header: dict) -> None:
        if header.get("_header") is not True:
            raise CorruptResultsError(
                f"{self.path} does not start with a header line; it was not written by vlmloc.store, "
                "so move it away or delete it."
            )
        if header.get("config") != self.config:
            raise StaleResultsError(
                f"{self.path} was written with config {header.get('config')!r}, not the requested "
                f"{self.config!r}; delete {self.path} to recompute this condition."
            )

    def _remember(self, record: dict, number: int) -> None:
        sample_id = record.get("sample_id")
        if not isinstance(sample_id, str):
            raise CorruptResultsError(
                f"Line {number} of {self.path} has no string 'sample_id'; fix or delete that line."
            )
        self._records.append(record)
        self._done.add(sample_id)

    def done_ids(self) -> set[str]:
        """Sample ids that already have a record."""
        return set(self._done)

    def records(self) -> list[dict]:
        """All records in the order they were written (without the header)."""
        return [dict(r) for r in self._records]

    def pending(self, sample_ids: Iterable[str]) -> list[str]:
        """The ids from ``sample_ids`` that have no record yet, in the given order."""
        return [s for s in sample_ids if s not in self._done]

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"ConditionLog({str(self.path)!r}, {len(self)} records)"

    # -- writing

    def _write_line(self, line: str) -> None:
        with open(self.path, "ab") as f:
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_header(self) -> None:
        self._write_line(_dumps(self._header(), sort_keys=True))

    def _repair(self) -> None:
        """Cut off an incomplete tail left by a crash, restoring a header if none survived."""
        with open(self.path, "r+b") as f:
            f.truncate(self._valid_bytes)
            if self._valid_bytes > 0:
                f.seek(self._valid_bytes - 1)
                if f.read(1) != b"\n":  # a complete last record that lost only its newline
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._needs_repair = False
        if self._valid_bytes == 0:
            self._write_header()

    def append(self, record: dict) -> None:
        """Write one sample's record durably (flushed and fsynced before returning)."""
        if not isinstance(record, Mapping):
            raise TypeError(f"A record must be a dict, got {type(record).__name__}.")
        sample_id = record.get("sample_id")
        if not isinstance(sample_id, str):
            raise ValueError(
                f"A record needs a string 'sample_id', got {sample_id!r}; add one such as str(annotation_id)."
            )
        if "_header" in record:
            raise ValueError("A record must not contain the key '_header'; it marks the file's header line.")
        if sample_id in self._done:
            raise ValueError(
                f"Sample {sample_id!r} is already recorded in {self.path}; skip done samples with "
                "pending(), or delete the file to recompute."
            )
        line = _dumps(dict(record))  # encode before touching the file so a bad record writes nothing
        if self._needs_repair:
            self._repair()
        self._write_line(line)
        self._records.append(json.loads(line))
        self._done.add(sample_id)


# --------------------------------------------------------------------------- a model's results


class ResultsStore:
    """Results of one experiment (a chapter's runs) for one model, one ``ConditionLog`` per condition."""

    def __init__(self, results_dir: str | Path, model_id: str, experiment: str) -> None:
        _check_name("experiment", experiment)
        self.results_dir = Path(results_dir)
        self.model_id = model_id
        self.experiment = experiment
        self.directory = self.results_dir / model_dirname(model_id) / experiment

    def condition(self, name: str, config: Mapping) -> ConditionLog:
        """Open (or create) the log of condition ``name`` under ``config``."""
        _check_name("condition name", name)
        path = self.directory / f"{name}-{config_key(config)}.jsonl"
        return ConditionLog(path, name, config)

    def runtime(self, config: Mapping, heartbeat: float = 30.0) -> RuntimeLog:
        """The runtime log of this experiment under ``config``: seconds per stage over every run."""
        return RuntimeLog(self.directory / f"runtime-{config_key(config)}.json", heartbeat)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.directory)!r})"


# --------------------------------------------------------------------------- runtime over resumed runs


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_dumps(obj, sort_keys=True, indent=1))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RuntimeLog:
    """Seconds spent per stage, summed over every run of an experiment under one configuration.

    A resumed run only does what is left, so its own clock says little; the chapter's runtime is
    what all runs took together. Each run keeps its own entry in one JSON file, rewritten when a
    stage ends and every ``heartbeat`` seconds while one runs, so a killed run loses at most a
    heartbeat per stage. Nothing is written before the first stage ends or beats.

        rt = store.runtime(config)
        with rt.timed("ablation"):
            ...
        rt.totals()   # {"ablation": 812.4, ...} over every run
    """

    def __init__(self, path: str | Path, heartbeat: float = 30.0) -> None:
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._mine: dict[str, float] = {}
        self._open: dict[str, tuple[float, float, threading.Event, threading.Thread]] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError:
            logger.warning("unreadable runtime log %s; starting it afresh", self.path)
            return {}
        return data.get("runs", {})

    def _set(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._mine[stage] = seconds
            runs = self._read()
            runs[self.run] = {k: round(v, 2) for k, v in self._mine.items()}
            _write_json_atomic(self.path, {"runs": runs})

    def start(self, stage: str, since: float | None = None) -> None:
        """Start timing ``stage`` (from ``since``, a ``time.perf_counter()`` value, if given)."""
        if stage in self._open:  # a notebook cell run twice: close the first timing
            self.stop(stage)
        t0 = time.perf_counter() if since is None else since
        base = self._mine.get(stage, 0.0)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                self._set(stage, base + time.perf_counter() - t0)

        thread = threading.Thread(target=beat, name=f"runtime-{stage}", daemon=True)
        self._open[stage] = (t0, base, stop, thread)
        thread.start()

    def stop(self, stage: str) -> float:
        """Stop timing ``stage``; returns this run's seconds on it (also if it was not being timed)."""
        if stage not in self._open:
            return self._mine.get(stage, 0.0)
        t0, base, stop, thread = self._open.pop(stage)
        stop.set()
        thread.join()
        self._set(stage, base + time.perf_counter() - t0)
        return self._mine[stage]

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time a block as ``stage`` (also when it raises or is interrupted)."""
        self.start(stage)
        try:
            yield
        finally:
            self.stop(stage)

    def totals(self) -> dict[str, float]:
        """Seconds per stage over every run, this one included (stages still open count until now)."""
        runs = self._read()
        mine = dict(self._mine)
        for stage, (t0, base, _, _) in self._open.items():
            mine[stage] = base + time.perf_counter() - t0
        runs[self.run] = mine
        out: dict[str, float] = {}
        for stages in runs.values():
            for stage, sec in stages.items():
                out[stage] = out.get(stage, 0.0) + float(sec)
        return out

    def n_runs(self) -> int:
        """How many runs (this one included) spent time on this configuration."""
        return len(set(self._read()) | {self.run})


# --------------------------------------------------------------------------- chapter summaries


def _summary_path(results_dir: str | Path, model_id: str, chapter: str) -> Path:
    _check_name("chapter", chapter)
    return Path(results_dir) / model_dirname(model_id) / f"{chapter}.json"


def write_summary(results_dir: str | Path, model_id: str, chapter: str, summary: Mapping) -> Path:
    """Write a chapter's summary atomically, so a reader never sees a half-written file."""
    path = _summary_path(results_dir, model_id, chapter)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(dict(summary), sort_keys=True, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{chapter}-", suffix=".json.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_summary(results_dir: str | Path, model_id: str, chapter: str) -> dict:
    """Read a chapter's summary written by ``write_summary``."""
    path = _summary_path(results_dir, model_id, chapter)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No summary of chapter '{chapter}' for model '{model_id}' at {path}; run the '{chapter}' "
            f"chapter first with -p model_id {model_id} -p results_dir {results_dir}."
        ) from None
