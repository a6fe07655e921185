"""Datasets from declarative schema templates (the seed's DataDesigner-style YAML), by one generic,
vectorised generator.

A template has a `name` and a list of `fields`; each field has a `name` and a `type`:

    uuid                                   random UUID4 text
    categorical   values, [weights]        one of the values (weights default to equal)
    integer       min, max                 uniform integer, both ends included
    datetime      start, end               uniform UTC instant between two ISO dates
    text          min_words, max_words     sentence-cased words, no final period
    paragraph     min_sentences, max_sentences
    list          element_type: word, min_length, max_length
    name | company                         from Faker pools drawn for the seed
    format        template: "... {other_field} ..."   (list fields are joined with ", ")

Any field may instead give `by: <earlier categorical field>` and `cases: {value: {type: ..., ...}}`:
rows whose value has no case get null (type-specific fields). Every value is a hash of (seed,
template, field, row number), so row i is the same whatever the chunk size or row count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import yaml
from faker import Faker

from tasks import hashrand
from tasks.errors import PipelineError
from tasks.files import atomic_output

TYPES = {"uuid", "categorical", "integer", "datetime", "text", "paragraph", "list", "name", "company", "format"}
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
POOL_SIZE = 4096


class TemplateError(PipelineError, ValueError):
    """A template problem; the message names the template file and the field."""


@dataclass(frozen=True)
class Template:
    name: str
    fields: list[dict[str, Any]]
    source: str


def _require(spec: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in spec]
    if missing:
        raise TemplateError(f"{where}: missing {', '.join(missing)}")


def _check_range(spec: dict, lo: str, hi: str, where: str, cast=int) -> None:
    _require(spec, (lo, hi), where)
    try:
        low, high = cast(spec[lo]), cast(spec[hi])
    except (TypeError, ValueError) as exc:
        raise TemplateError(f"{where}: {lo}/{hi} must be {cast.__name__} values") from exc
    if low > high:
        raise TemplateError(f"{where}: {lo} {spec[lo]} > {hi} {spec[hi]}")
    if cast is int and low < 0 and lo in {"min_words", "min_sentences", "min_length"}:
        raise TemplateError(f"{where}: {lo} must not be negative")


def _check_field(spec: dict, where: str, known: dict[str, dict]) -> None:
    kind = spec.get("type")
    if kind not in TYPES:
        raise TemplateError(f"{where}: unknown type {kind!r}; expected one of {', '.join(sorted(TYPES))}")
    if kind == "categorical":
        _require(spec, ("values",), where)
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise TemplateError(f"{where}: values must be a non-empty list")
        weights = spec.get("weights")
        if weights is not None:
            if not isinstance(weights, list) or len(weights) != len(values):
                raise TemplateError(f"{where}: {len(weights) if isinstance(weights, list) else 'no'} weights "
                                    f"for {len(values)} values")
            if any(not isinstance(w, (int, float)) or w < 0 for w in weights) or sum(weights) <= 0:
                raise TemplateError(f"{where}: weights must be non-negative numbers with a positive sum")
    elif kind == "integer":
        _check_range(spec, "min", "max", where)
    elif kind == "datetime":
        _check_range(spec, "start", "end", where, cast=_to_date)
    elif kind == "text":
        _check_range(spec, "min_words", "max_words", where)
    elif kind == "paragraph":
        _check_range(spec, "min_sentences", "max_sentences", where)
    elif kind == "list":
        _check_range(spec, "min_length", "max_length", where)
        if spec.get("element_type", "word") != "word":
            raise TemplateError(f"{where}: element_type {spec['element_type']!r} is not supported (word)")
    elif kind == "format":
        _require(spec, ("template",), where)
        for ref in PLACEHOLDER.findall(spec["template"]):
            if ref not in known:
                raise TemplateError(f"{where}: template refers to {{{ref}}}, which is not an earlier field")


def _to_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def load_template(path: Path) -> Template:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("fields"), list) or not raw.get("name"):
        raise TemplateError(f"{path}: a template needs a name and a list of fields")
    return parse_template(raw, str(path))


def parse_template(raw: dict, source: str = "<template>") -> Template:
    known: dict[str, dict] = {}
    for i, spec in enumerate(raw["fields"]):
        name = spec.get("name") if isinstance(spec, dict) else None
        where = f"{source}: field {name!r}" if name else f"{source}: field #{i + 1}"
        if not name:
            raise TemplateError(f"{where}: has no name")
        if name in known:
            raise TemplateError(f"{where}: defined twice")
        if "cases" in spec:
            by = spec.get("by")
            if by not in known or known[by].get("type") != "categorical":
                raise TemplateError(f"{where}: by must name an earlier categorical field, not {by!r}")
            for value, case in spec["cases"].items():
                if value not in known[by]["values"]:
                    raise TemplateError(f"{where}: case {value!r} is not a value of {by!r}")
                _check_field(case, f"{where} (case {value!r})", known)
        else:
            _check_field(spec, where, known)
        known[name] = spec
    return Template(raw["name"], list(raw["fields"]), source)


# --- generation --------------------------------------------------------------------------------

class _Pools:
    """Words, sentences, names and companies from Faker, drawn once for the seed."""

    def __init__(self, seed: int):
        fake = Faker("en_US")
        fake.seed_instance(seed)
        from faker.providers.lorem.en_US import Provider as Lorem

        self.words = pl.Series(list(Lorem.word_list))
        self.sentences = pl.Series([fake.sentence(nb_words=10) for _ in range(POOL_SIZE)])
        self.names = pl.Series([fake.name() for _ in range(POOL_SIZE)])
        self.companies = pl.Series([fake.company() for _ in range(POOL_SIZE)])


def _pick(pool: pl.Series, u: np.ndarray) -> pl.Series:
    return pool.gather((u * len(pool)).astype(np.int64))


def _joined(pool: pl.Series, u: np.ndarray, counts: np.ndarray, separator: str) -> pl.Series:
    """Row i: counts[i] items of the pool, joined."""
    parts = [pl.when(pl.lit(pl.Series(counts)) > j).then(_pick(pool, u[:, j])) for j in range(u.shape[1])]
    return pl.select(pl.concat_str(parts, separator=separator, ignore_nulls=True)).to_series()


def _counts(u: np.ndarray, low: int, high: int) -> np.ndarray:
    return low + (u * (high - low + 1)).astype(np.int64)


def _column(spec: dict, key: str, rows: np.ndarray, seed: int, pools: _Pools, frame: pl.DataFrame) -> pl.Series:
    kind = spec["type"]
    if kind == "uuid":
        b = hashrand.bits(seed, key, rows, 2)
        hi = (b[:, 0] & np.uint64(0xFFFFFFFFFFFF0FFF)) | np.uint64(0x4000)  # version 4
        lo = (b[:, 1] & np.uint64(0x3FFFFFFFFFFFFFFF)) | np.uint64(0x8000000000000000)  # RFC 4122 variant
        hexed = pl.Series([f"{h:016x}{l:016x}" for h, l in zip(hi.tolist(), lo.tolist())])
        return pl.select(pl.concat_str([hexed.str.slice(0, 8), hexed.str.slice(8, 4), hexed.str.slice(12, 4),
                                        hexed.str.slice(16, 4), hexed.str.slice(20, 12)], separator="-")).to_series()
    if kind == "categorical":
        values = spec["values"]
        index = hashrand.choice(hashrand.uniform(seed, key, rows)[:, 0], spec.get("weights") or [1] * len(values))
        return pl.Series(values).gather(index)
    if kind == "integer":
        u = hashrand.uniform(seed, key, rows)[:, 0]
        return pl.Series(int(spec["min"]) + np.floor(u * (int(spec["max"]) - int(spec["min"]) + 1)).astype(np.int64))
    if kind == "datetime":
        start = datetime.combine(_to_date(spec["start"]), datetime.min.time(), timezone.utc).timestamp()
        end = datetime.combine(_to_date(spec["end"]), datetime.min.time(), timezone.utc).timestamp()
        seconds = start + np.floor(hashrand.uniform(seed, key, rows)[:, 0] * (end - start))
        return pl.Series((seconds * 1_000_000).astype(np.int64)).cast(pl.Datetime("us", "UTC"))
    if kind in {"text", "paragraph", "list"}:
        low, high = {"text": ("min_words", "max_words"), "paragraph": ("min_sentences", "max_sentences"),
                     "list": ("min_length", "max_length")}[kind]
        low, high = int(spec[low]), int(spec[high])
        u = hashrand.uniform(seed, key, rows, high + 1)
        counts = _counts(u[:, -1], low, high)
        if kind == "list":
            cols = [pl.when(pl.lit(pl.Series(counts)) > j).then(_pick(pools.words, u[:, j])) for j in range(high)]
            return pl.select(pl.concat_list(cols).list.drop_nulls()).to_series()
        pool, sep = (pools.words, " ") if kind == "text" else (pools.sentences, " ")
        text = _joined(pool, u[:, :high], counts, sep)
        if kind == "text":
            text = pl.select(pl.concat_str([text.str.slice(0, 1).str.to_uppercase(), text.str.slice(1)])).to_series()
        return text
    if kind in {"name", "company"}:
        return _pick(pools.names if kind == "name" else pools.companies, hashrand.uniform(seed, key, rows)[:, 0])
    if kind == "format":
        parts, last = [], 0
        for match in PLACEHOLDER.finditer(spec["template"]):
            parts.append(pl.lit(spec["template"][last:match.start()]))
            column = frame[match.group(1)]
            parts.append(pl.lit(column.list.join(", ") if column.dtype == pl.List(pl.String)
                                else column.cast(pl.String)))
            last = match.end()
        parts.append(pl.lit(spec["template"][last:]))
        return pl.select(pl.concat_str(parts)).to_series()
    raise TemplateError(f"unknown type {kind!r}")  # unreachable after parse_template


def _cases(spec: dict, key: str, rows: np.ndarray, seed: int, pools: _Pools, frame: pl.DataFrame) -> pl.Series:
    """Each case computed on its own rows only (keys are global row numbers, so values do not
    change), then put back in row order; rows of no case are null."""
    selector = frame[spec["by"]]
    positions, parts = [], []
    for value, case in spec["cases"].items():
        at = np.flatnonzero((selector == value).to_numpy())
        positions.append(at)
        rows_frame = frame[at] if case["type"] == "format" else frame  # only format reads other fields
        parts.append(_column(case, f"{key}/{value}", rows[at], seed, pools, rows_frame))
    dtype = next((p.dtype for p in parts if p.dtype != pl.Null), pl.Null)
    parts = [p.cast(dtype) for p in parts]
    covered = np.concatenate(positions) if positions else np.array([], dtype=np.int64)
    missing = np.setdiff1d(np.arange(len(rows)), covered)
    values = pl.concat([*parts, pl.Series([None] * len(missing), dtype=dtype)])
    return values.gather(np.argsort(np.concatenate([covered, missing]), kind="stable"))


def generate_chunk(template: Template, start: int, stop: int, seed: int, pools: _Pools | None = None) -> pl.DataFrame:
    """Rows start..stop-1 of the dataset."""
    pools = pools or _Pools(seed)
    rows = np.arange(start, stop, dtype=np.int64)
    frame = pl.DataFrame({"_row": rows})
    for spec in template.fields:
        name = spec["name"]
        key = f"{template.name}/{name}"
        if "cases" not in spec:
            column = _column(spec, key, rows, seed, pools, frame)
        else:
            column = _cases(spec, key, rows, seed, pools, frame)
        frame = frame.with_columns(column.alias(name))
    return frame.drop("_row")


def generate(template: Template, n: int, seed: int = 42, chunk_size: int = 100_000) -> Iterator[pl.DataFrame]:
    pools = _Pools(seed)
    for start in range(0, n, chunk_size):
        yield generate_chunk(template, start, min(n, start + chunk_size), seed, pools)


def write_dataset(template: Template, n: int, out: Path, seed: int = 42, chunk_size: int = 100_000,
                  exports: tuple[str, ...] = ()) -> Path:
    """Parquet (and JSONL/CSV on request) beside it, each written to a temporary name and renamed."""
    with atomic_output(out) as tmp:
        writer = None
        try:
            for chunk in generate(template, n, seed, chunk_size):
                table = chunk.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
            if writer is None:  # n == 0: an empty file with the template's columns
                generate_chunk(template, 0, 0, seed).write_parquet(tmp)
        finally:
            if writer is not None:
                writer.close()
    export(out, exports)
    return out


def export(parquet: Path, formats: tuple[str, ...]) -> list[Path]:
    """JSONL and/or CSV copies beside a Parquet file (CSV joins list columns with '|')."""
    written = []
    for fmt in formats:
        if fmt not in {"jsonl", "csv"}:
            raise ValueError(f"export format {fmt!r}: choose jsonl or csv")
        target = parquet.with_suffix(f".{fmt}")
        frame = pl.scan_parquet(parquet)
        with atomic_output(target) as tmp:
            if fmt == "jsonl":
                frame.sink_ndjson(tmp)
            else:
                lists = [name for name, dtype in frame.collect_schema().items() if isinstance(dtype, pl.List)]
                frame.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join("|") for c in lists).sink_csv(tmp)
        written.append(target)
    return written
