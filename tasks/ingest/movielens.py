"""MovieLens ingestion: a release folder, zip or name -> typed Parquet in DATA/processed/.

Every CSV is read as text and cast explicitly, so each bad value gets a reason that names its file,
row and field. Row-level problems go to processed/rejected/<file>.parquet (or stop the stage with
on_bad_rows="fail"); file-level problems (missing file, wrong header, ragged row, bad zip or
checksum) always stop it. Outputs are built in a temporary folder and swapped in whole, so a failure
never leaves a partial processed/ behind. Times are UTC everywhere.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import polars as pl

from tasks.errors import PipelineError
from tasks.files import ZSTD

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
RELEASES = ("ml-latest-small", "ml-25m", "ml-32m", "ml-latest")
# MovieLens (then EachMovie's successor) started collecting ratings in 1995.
FIRST_PLAUSIBLE_TS = int(datetime(1995, 1, 1, tzinfo=timezone.utc).timestamp())
HALF_STARS = [x / 2 for x in range(1, 11)]
TIME_OF_DAY = ["morning", "afternoon", "evening", "night", "late_night"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# Data rows per file of the GroupLens releases, as their READMEs publish them. A release is known by
# its folder name (a zip extracts to one); ml-latest changes with every refresh, so it has none, and
# ml-latest-small has had two editions (2018 and 2016).
PUBLISHED_ROWS: dict[str, list[dict[str, int]]] = {
    "ml-latest-small": [{"movies": 9_742, "links": 9_742, "ratings": 100_836, "tags": 3_683},
                        {"movies": 9_125, "links": 9_125, "ratings": 100_004, "tags": 1_296}],
    "ml-20m": [{"movies": 27_278, "links": 27_278, "ratings": 20_000_263, "tags": 465_564,
                "genome_tags": 1_128, "genome_scores": 11_709_768}],
    "ml-25m": [{"movies": 62_423, "links": 62_423, "ratings": 25_000_095, "tags": 1_093_360,
                "genome_tags": 1_128, "genome_scores": 15_584_448}],
    "ml-32m": [{"movies": 87_585, "links": 87_585, "ratings": 32_000_204, "tags": 2_000_072}],
}

OnBadRows = Literal["reject", "fail"]
INGEST_VERSION = "ingest-3"  # bump when the Parquet layout changes: it invalidates cached results


class IngestError(PipelineError, ValueError):
    """Bad input: the message names the file, and the row and field where there is one."""


@dataclass(frozen=True)
class CsvSpec:
    name: str
    columns: dict[str, pl.DataType]  # header order -> type
    required: tuple[str, ...]
    optional_file: bool = False


SPECS = {
    "movies": CsvSpec("movies.csv", {"movieId": pl.Int32, "title": pl.String, "genres": pl.String},
                      ("movieId", "title", "genres")),
    "links": CsvSpec("links.csv", {"movieId": pl.Int32, "imdbId": pl.Int64, "tmdbId": pl.Int64},
                     ("movieId", "imdbId")),
    "ratings": CsvSpec("ratings.csv", {"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32,
                                       "timestamp": pl.Int64}, ("userId", "movieId", "rating", "timestamp")),
    "tags": CsvSpec("tags.csv", {"userId": pl.Int32, "movieId": pl.Int32, "tag": pl.String, "timestamp": pl.Int64},
                    ("userId", "movieId", "tag", "timestamp")),
    "genome_tags": CsvSpec("genome-tags.csv", {"tagId": pl.Int32, "tag": pl.String}, ("tagId", "tag"),
                           optional_file=True),
    "genome_scores": CsvSpec("genome-scores.csv", {"movieId": pl.Int32, "tagId": pl.Int32,
                                                   "relevance": pl.Float32},
                             ("movieId", "tagId", "relevance"), optional_file=True),
}


# --- sources -----------------------------------------------------------------------------------

def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _extract(zip_path: Path, dest: Path) -> Path:
    """Extract a release zip into dest (atomically); returns the folder holding movies.csv."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise IngestError(f"{zip_path}: member {bad} is corrupt (CRC mismatch)")
            zf.extractall(tmp)
    except (zipfile.BadZipFile, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise IngestError(f"{zip_path}: not a readable zip archive (truncated or corrupt): {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    found = sorted(dest.rglob("movies.csv"))
    if not found:
        raise IngestError(f"{zip_path}: no movies.csv inside; is this a MovieLens release?")
    return found[0].parent


def _download(url: str, dest: Path) -> None:
    import httpx  # here: a search that shows titles imports this module, never a download (0.05 s)

    tmp = dest.with_name(dest.name + ".part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            response.raise_for_status()
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
        tmp.rename(dest)
    except httpx.HTTPStatusError as exc:
        tmp.unlink(missing_ok=True)
        raise IngestError(f"{url}: HTTP {exc.response.status_code}") from exc
    except (httpx.TransportError, httpx.StreamError) as exc:  # network trouble: transient, retried by Prefect
        tmp.unlink(missing_ok=True)
        raise ConnectionError(f"{url}: download failed: {exc}") from exc


def fetch_release(name: str, cache_dir: Path, base_url: str = GROUPLENS_URL) -> Path:
    """Download <name>.zip into the cache once, verify its published MD5, and extract it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_path = cache_dir / f"{name}.zip"
    md5_path = cache_dir / f"{name}.zip.md5"
    if not md5_path.exists():
        _download(f"{base_url}/{name}.zip.md5", md5_path)
    expected = md5_path.read_text().split()[0].strip().lower()
    if not zip_path.exists() or _md5(zip_path) != expected:
        _download(f"{base_url}/{name}.zip", zip_path)
        actual = _md5(zip_path)
        if actual != expected:
            bad = zip_path.with_suffix(".zip.bad")
            zip_path.rename(bad)
            raise IngestError(f"{base_url}/{name}.zip: checksum mismatch (md5 {actual}, published {expected}); "
                              f"kept as {bad}")
    return _extract(zip_path, cache_dir / name)


def resolve_source(source: str | Path, cache_dir: Path, base_url: str = GROUPLENS_URL) -> Path:
    """An extracted release folder, a release .zip, or a GroupLens release name -> release folder."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.suffix == ".zip":
        if not path.exists():
            raise IngestError(f"{path}: no such file")
        return _extract(path, cache_dir / path.stem)
    if str(source) in RELEASES:
        return fetch_release(str(source), cache_dir, base_url)
    raise IngestError(f"source {source!r} is neither a release folder, a .zip, nor one of {', '.join(RELEASES)}")


# --- reading with reasons ----------------------------------------------------------------------

def _check_header(path: Path, spec: CsvSpec) -> int:
    """Check the header; returns how many unnamed empty columns trail it (a spreadsheet's save adds them)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as exc:  # the decoder reads ahead: the bad byte may be lines below the header
        raise IngestError(f"{path}: {_first_non_utf8_line(path) or f'not UTF-8 text ({exc.reason})'}") from exc
    expected = list(spec.columns)
    named = list(header or [])
    while named and not named[-1].strip():
        named.pop()
    if named != expected:
        raise IngestError(f"{path}: header is {header}, expected {expected}")
    return len(header) - len(named)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _bad_row(path: Path, widths: range) -> str | None:
    """The first row the csv module cannot read or whose field count is outside `widths`, or None
    (slow: only on the error path). A blank line is left to the row checks."""
    terminated = _ends_with_newline(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            for row in reader:
                if reader.line_num > 1 and row and len(row) not in widths:
                    problem = (f"line {reader.line_num} has {len(row)} fields, expected {_widths_text(widths)}: "
                               f"{row[:6]}")
                    if len(row) < widths.start and not terminated and next(reader, None) is None:
                        return f"{problem}; the file looks truncated (its last line is cut short and has no newline)"
                    return problem
        except csv.Error as exc:
            return f"line {reader.line_num}: {exc}"
        except UnicodeDecodeError:
            return _first_non_utf8_line(path)
    return None


def _first_non_utf8_line(path: Path) -> str | None:
    """The text decoder reads ahead, so the csv module's line count is off here: find the line by bytes."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
    return None


def _widths_text(widths: range) -> str:
    return str(widths.start) if len(widths) == 1 else f"{widths.start} to {widths.stop - 1}"


def check_field_counts(path: Path, widths: range) -> None:
    """Stop on a row with too few or too many fields, wherever it is (Polars pads a short row with
    empty values, which would read as a mere empty field: a cut-off last line would lose the rest of
    the file silently). One fast pass over the lines counts the separators outside quotes; a line it
    cannot judge alone (a quote that may span lines) is confirmed by the csv module."""
    lines = pl.scan_csv(path, has_header=False, skip_rows=1, separator="\x1f", quote_char=None,
                        schema={"text": pl.String}, truncate_ragged_lines=True)
    text = pl.col("text").str.strip_chars_end("\r")
    fields = text.str.replace_all('"[^"]*"', "").str.count_matches(",", literal=True) + 1
    suspicious = (text != "") & (~fields.is_between(widths.start, widths.stop - 1)
                                 | (text.str.count_matches('"', literal=True) % 2 == 1))
    try:
        found = lines.select(n=suspicious.sum()).collect(engine="streaming").item()
    except pl.exceptions.ComputeError as exc:  # invalid UTF-8, mostly
        raise IngestError(f"{path}: malformed CSV: {_bad_row(path, widths) or exc}") from exc
    if found:
        problem = _bad_row(path, widths)
        if problem is not None:
            raise IngestError(f"{path}: malformed CSV: {problem}")


def _reason_chain(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """The text of the first check that holds, else null (a good row)."""
    reason = pl.lit(None, pl.String)
    for condition, text in reversed(checks):
        reason = pl.when(condition.fill_null(False)).then(pl.lit(text)).otherwise(reason)
    return reason


def read_checked(path: Path, spec: CsvSpec, extra_checks: list[tuple[pl.Expr, str]],
                 detailed: bool = False, unnamed_columns: int = 0) -> pl.LazyFrame:
    """Typed columns plus `reason` (null when the row is good).

    The fast form parses numbers while reading (a bad number reads as null) and runs fully parallel.
    The detailed form, used only to write out rejected rows, reads text, names the exact problem of
    each value, keeps the raw text, and numbers the rows (`row` 1 = first data row), which costs the
    streaming engine its parallelism. Unnamed trailing columns are read as text: a row with a value
    there is rejected. The header is checked beforehand (`_check_header`).
    """
    unnamed = [f"unnamed_{k}" for k in range(1, unnamed_columns + 1)]
    checks = [(pl.col(c).is_not_null() & (pl.col(c) != ""), f"a value in unnamed column {len(spec.columns) + k}")
              for k, c in enumerate(unnamed, 1)]
    types = {**spec.columns, **{c: pl.String for c in unnamed}}
    if not detailed:
        frame = pl.scan_csv(path, schema=types, has_header=False, skip_rows=1, ignore_errors=True)
        checks += [(pl.col(c).is_null(), f"{c} is empty or not a valid {spec.columns[c]}") for c in spec.required]
        return frame.with_columns(_reason_chain(checks + extra_checks).alias("reason")).drop(unnamed)
    raw = pl.scan_csv(path, schema={c: pl.String for c in types}, has_header=False, skip_rows=1)
    raw = raw.with_row_index("row", offset=1)
    for column, dtype in spec.columns.items():
        value = pl.col(f"raw_{column}")
        if column in spec.required:
            checks.append((value.is_null() | (value == ""), f"{column} is empty"))
        if dtype != pl.String:
            checks.append((value.is_not_null() & (value != "") & pl.col(column).is_null(),
                           f"{column} is not a valid {dtype}"))
    frame = raw.rename({c: f"raw_{c}" for c in spec.columns}).with_columns(
        pl.col(f"raw_{c}").cast(t, strict=False).alias(c) for c, t in spec.columns.items())
    return frame.with_columns(_reason_chain(checks + extra_checks).alias("reason")).drop(unnamed)


def _collect(plans: list[pl.LazyFrame], path: Path, widths: range) -> list[pl.DataFrame]:
    try:
        with warnings.catch_warnings():
            # Polars only warns on some malformed CSV (an unterminated quote swallows the rows after it).
            warnings.filterwarnings("error", message=".*malformed.*", category=UserWarning)
            return pl.collect_all(plans, engine="streaming")
    except (pl.exceptions.ComputeError, UserWarning) as exc:
        problem = _bad_row(path, widths)
        raise IngestError(f"{path}: malformed CSV: {problem or exc}") from exc


def _cut_short(reason: str, spec: CsvSpec) -> bool:
    """Whether a last line without a newline was cut: only its last field can be damaged, so a row
    whose last field is there and parses is complete, and a rule it breaks is its own reason."""
    last = list(spec.columns)[-1]
    return reason.startswith((f"{last} is empty", f"{last} is not a valid"))


def split_and_write(path: Path, spec: CsvSpec, checks: list[tuple[pl.Expr, str]], transform, out: Path,
                    rejected_path: Path) -> dict:
    """Good rows (through `transform`) to `out` in one streaming pass over the CSV; when there are bad
    rows, a second pass writes them, numbered and with their raw text and reason, to `rejected_path`."""
    unnamed = _check_header(path, spec)
    widths = range(len(spec.columns), len(spec.columns) + unnamed + 1)  # named columns, up to the unnamed ones
    frame = read_checked(path, spec, checks, unnamed_columns=unnamed)
    good = frame.filter(pl.col("reason").is_null()).drop("reason")
    counts = _collect([(transform(good) if transform else good).sink_parquet(out, lazy=True, **ZSTD),
                       frame.select(read=pl.len(), rejected=pl.col("reason").is_not_null().sum())], path, widths)[-1]
    read, rejected = counts.row(0)
    if rejected:
        # Polars pads a short row with empty values, so a row cut short reads as a rejected row: only
        # when some row was rejected is the file's every line counted (a clean file pays no pass).
        check_field_counts(path, widths)
        numbered = read_checked(path, spec, checks, detailed=True, unnamed_columns=unnamed)
        _collect([numbered.filter(pl.col("reason").is_not_null()).select(
            pl.lit(spec.name).alias("file"), "row", "reason", *[f"raw_{c}" for c in spec.columns]
        ).sink_parquet(rejected_path, lazy=True, **ZSTD)], path, widths)
        if not _ends_with_newline(path):
            last = pl.scan_parquet(rejected_path).filter(pl.col("row") == read).select("reason").collect()
            if len(last) and _cut_short(last.item(), spec):
                raise IngestError(f"{path}: line {read + 1} (the last) is cut short and has no newline "
                                  f"({last.item()}): the file looks truncated; rejecting that row would hide the "
                                  f"loss of the rest of the file")
    result = {"source": spec.name, "rows_read": read, "rows_rejected": rejected,
              "rows_written": pl.scan_parquet(out).select(pl.len()).collect().item()}
    if unnamed:
        result["unnamed_columns_ignored"] = unnamed
    return result


# --- transforms --------------------------------------------------------------------------------

TITLE_YEAR = r"^(.*?)\s*\((\d{4})(?:\s*[\u2013-]\s*(\d{4})?)?\)$"


# MovieLens files titles article-last ("Usual Suspects, The", "Cité des enfants perdus, La"); the data
# keeps that form, embedding texts and search results read it naturally ("The Usual Suspects").
ARTICLES = ("The", "A", "An", "La", "Le", "Les", "El", "Los", "Las", "Il", "Lo", "Gli", "Der", "Die", "Das",
            "Det", "Den", "De", "Het", "Os", "As")


def natural_title(title: pl.Expr) -> pl.Expr:
    """"Usual Suspects, The" -> "The Usual Suspects"; an article before an "(a.k.a.)" part moves too;
    "Avventura, L'" -> "L'Avventura"."""
    articles = "|".join(ARTICLES)
    return (title.str.replace(rf"^(.+?), (L')( \(.*\))?$", "${2}${1}${3}")
            .str.replace(rf"^(.+?), ({articles})( \(.*\))?$", "${2} ${1}${3}"))


def natural_titles(titles: list[str]) -> list[str]:
    """natural_title for titles to show (search hits, explanations)."""
    return pl.Series(titles, dtype=pl.String).to_frame("t").select(natural_title(pl.col("t")))["t"].to_list()


def movies_frame(lf: pl.LazyFrame, links: pl.LazyFrame) -> pl.LazyFrame:
    title = pl.col("title").str.strip_chars()
    out = lf.with_columns(
        year=title.str.extract(TITLE_YEAR, 2).cast(pl.Int16),
        clean_title=pl.when(title.str.contains(TITLE_YEAR)).then(title.str.extract(TITLE_YEAR, 1)).otherwise(title),
        genre_list=pl.when(pl.col("genres") == "(no genres listed)").then(pl.lit([], pl.List(pl.String)))
        .otherwise(pl.col("genres").str.split("|")),
    )
    out = out.join(links.select("movieId", "imdbId", "tmdbId"), on="movieId", how="left")
    return out.select(
        media_id=pl.format("ml_{}", "movieId"),
        movie_id="movieId",
        title="clean_title",
        year="year",
        genres="genre_list",
        imdb_id=pl.when(pl.col("imdbId").is_not_null()).then(
            pl.format("tt{}", pl.col("imdbId").cast(pl.String).str.zfill(7))),
        tmdb_id=pl.col("tmdbId").cast(pl.Int32),
    ).sort("movie_id")


def _utc(ts: str) -> pl.Expr:
    return (pl.col(ts) * 1_000_000).cast(pl.Datetime("us", "UTC"))


def _bucket(value: pl.Expr, upper_bounds: list[int], labels: list[str], categories: list[str]) -> pl.Expr:
    """labels[i] for the first upper bound the value is below, else the last label; as an Enum of categories."""
    out = pl.lit(labels[-1])
    for bound, label in reversed(list(zip(upper_bounds, labels))):
        out = pl.when(value < bound).then(pl.lit(label)).otherwise(out)
    return out.cast(pl.Enum(categories))


def ratings_frame(lf: pl.LazyFrame) -> pl.LazyFrame:
    # Integer arithmetic on epoch seconds is UTC by construction, and cheaper than datetime parts.
    hour = (pl.col("timestamp") // 3600) % 24
    weekday = (pl.col("timestamp") // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    time_of_day = _bucket(hour, [6, 12, 17, 21], ["late_night", "morning", "afternoon", "evening", "night"],
                          TIME_OF_DAY)
    return lf.select(
        user_id="userId", movie_id="movieId", rating="rating", timestamp="timestamp",
        rated_at=_utc("timestamp"),
        time_of_day=time_of_day,
        day_of_week=_bucket(weekday, [1, 2, 3, 4, 5, 6], WEEKDAYS, WEEKDAYS),
    )


def tags_frame(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.select(
        user_id="userId", movie_id="movieId", tag=pl.col("tag").str.strip_chars(), timestamp="timestamp",
        tagged_at=_utc("timestamp"))


def genome_scores_frame(scores: pl.LazyFrame, genome_tags: pl.LazyFrame) -> pl.LazyFrame:
    """Relevance > 0.5 only, with tag text and rank (1 = most relevant), top 10 per movie."""
    strong = scores.filter(pl.col("relevance") > 0.5)
    return (
        strong.join(genome_tags.select(tag_id="tagId", tag="tag"), left_on="tagId", right_on="tag_id")
        .sort(["movieId", "relevance", "tagId"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("movieId").cast(pl.Int16))
        .filter(pl.col("rank") <= 10)
        .select(media_id=pl.format("ml_{}", "movieId"), movie_id="movieId", tag_id="tagId", tag="tag",
                relevance="relevance", rank="rank")
    )


# --- the stage ---------------------------------------------------------------------------------

def release_files(release: Path) -> dict[str, Path]:
    """The files this release has: movies, ratings, tags and links are required (every release has
    them; without links every store would lose its IMDb/TMDb ids); genome files come as a pair."""
    found = {key: release / spec.name for key, spec in SPECS.items() if (release / spec.name).exists()}
    for key, spec in SPECS.items():
        if not spec.optional_file and key not in found:
            raise IngestError(f"{release / spec.name}: required file is missing")
    if ("genome_tags" in found) != ("genome_scores" in found):
        missing = "genome-scores.csv" if "genome_tags" in found else "genome-tags.csv"
        raise IngestError(f"{release / missing}: missing while its genome partner file is present")
    return found


def ingest_release(release: Path, out_dir: Path, on_bad_rows: OnBadRows = "reject",
                   max_reject_fraction: float = 0.01, now: int | None = None) -> dict:
    """Ingest one extracted release into out_dir (replaced whole). Returns the stats also written to stats.json."""
    started = time.perf_counter()
    files = release_files(release)
    last_plausible = (now or int(time.time())) + 86_400
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rejected_dir = tmp / "rejected"
    rejected_dir.mkdir(parents=True)
    stats: dict = {"source": str(release), "files": {}, "rejected": {}, "timings_s": {}}
    try:
        def run(key: str, checks: list[tuple[pl.Expr, str]], transform=None) -> pl.LazyFrame:
            t0 = time.perf_counter()
            out = tmp / f"{key}.parquet"
            stats["files"][key] = split_and_write(files[key], SPECS[key], checks, transform, out,
                                                  rejected_dir / f"{key}.parquet")
            stats["timings_s"][key] = round(time.perf_counter() - t0, 3)
            return pl.scan_parquet(out)

        ts_ok = pl.col("timestamp").is_between(FIRST_PLAUSIBLE_TS, last_plausible)
        ts_reason = "timestamp outside the plausible range (1995-01-01 to now)"

        links = run("links", [(~pl.col("movieId").is_first_distinct(), "duplicate movieId")])
        # Movies first: every other file is checked against its ids.
        run("movies", [(~pl.col("movieId").is_first_distinct(), "duplicate movieId")],
            lambda frame: movies_frame(frame, links))
        (tmp / "links.parquet").unlink(missing_ok=True)  # folded into movies.parquet
        movie_ids = pl.read_parquet(tmp / "movies.parquet", columns=["movie_id"])["movie_id"]
        known_movie = pl.col("movieId").is_in(movie_ids.implode())

        run("ratings", [(~pl.col("rating").is_in(HALF_STARS), "rating off the 0.5-5.0 half-star grid"),
                        (~ts_ok, ts_reason), (~known_movie, "movieId not in movies.csv")], ratings_frame)
        run("tags", [(pl.col("tag").str.strip_chars() == "", "tag is empty"), (~ts_ok, ts_reason),
                     (~known_movie, "movieId not in movies.csv")], tags_frame)
        if "genome_tags" in files:
            genome_tags = run("genome_tags", [(~pl.col("tagId").is_first_distinct(), "duplicate tagId")])
            tag_ids = genome_tags.select("tagId").collect()["tagId"]
            run("genome_scores", [
                (~pl.col("relevance").is_between(0.0, 1.0), "relevance outside 0..1"),
                (~known_movie, "movieId not in movies.csv"),
                (~pl.col("tagId").is_in(tag_ids.implode()), "tagId not in genome-tags.csv"),
            ], lambda frame: genome_scores_frame(frame, genome_tags))
            genome_tags.collect().rename({"tagId": "tag_id"}).write_parquet(tmp / "genome_tags.parquet", **ZSTD)

        stats["release"] = compare_with_published(release, stats["files"])
        _summarise(tmp, files, stats, on_bad_rows, max_reject_fraction)
        stats["timings_s"]["total"] = round(time.perf_counter() - started, 3)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
        backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(backup)
        tmp.rename(out_dir)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def compare_with_published(release: Path, counts: dict[str, dict]) -> dict:
    """For a known GroupLens release, its rows read per file against the published counts (the
    closest edition). A mismatch is a warning, not an error: a hand-edited copy may be intended."""
    editions = PUBLISHED_ROWS.get(release.name)
    if editions is None:
        return {"name": release.name, "known": False}

    def mismatches(published: dict[str, int]) -> list[str]:
        read = {key: counts[key]["rows_read"] if key in counts else 0 for key in published}
        return [f"{SPECS[key].name}: {read[key]:,} rows read, the published {release.name} has {rows:,}"
                for key, rows in published.items() if read[key] != rows]

    found = min((mismatches(edition) for edition in editions), key=len)
    return {"name": release.name, "known": True, "matches_published": not found,
            "warnings": [str(release / text) for text in found]}


def _summarise(tmp: Path, files: dict[str, Path], stats: dict, on_bad_rows: OnBadRows,
               max_reject_fraction: float) -> None:
    """Reasons per file, the reject gate, and date ranges."""
    for key, counts in stats["files"].items():
        if not counts["rows_rejected"]:
            continue
        rejected = pl.read_parquet(tmp / "rejected" / f"{key}.parquet")
        stats["rejected"][key] = dict(rejected.group_by("reason").len().sort("len", descending=True).rows())
        first = rejected.row(0, named=True)
        where = f"{files[key]}: row {first['row']}: {first['reason']}"
        if on_bad_rows == "fail":
            raise IngestError(f"{where} ({len(rejected)} bad rows; on_bad_rows='fail')")
        if len(rejected) > max_reject_fraction * max(counts["rows_read"], 1):
            raise IngestError(f"{files[key]}: {len(rejected)} of {counts['rows_read']} rows rejected, more than "
                              f"{max_reject_fraction:.1%}; first: {where}")
    for key, column in (("ratings", "rated_at"), ("tags", "tagged_at")):
        if key in files:
            lo, hi = pl.scan_parquet(tmp / f"{key}.parquet").select(lo=pl.col(column).min(), hi=pl.col(column).max()) \
                .collect().row(0)
            stats["files"][key]["date_range"] = [lo, hi]
    if not any((tmp / "rejected").iterdir()):
        (tmp / "rejected").rmdir()
