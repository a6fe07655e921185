"""MovieLens ingestion on generated releases and hand-written CSVs: outputs, edge cases, bad input."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from tasks.ingest.movielens import IngestError, fetch_release, ingest_release, resolve_source

MOVIES = '''movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,"Shall We Dance? (Shall We Dansu?) (1996)",Comedy|Drama
4,Stranger Things (2016\u20132019),Drama|Horror
5,Babylon 5,Sci-Fi
6,"""Great Performances"" Cats (1998)",Musical
7,  Millions (2004) ,(no genres listed)
8,Dekalog (1989- ),Crime
'''
LINKS = """movieId,imdbId,tmdbId
1,0114709,862
2,0112346,9087
3,0117705,
4,4574334,66732
5,0105946,
6,0173714,42196
7,0366777,14792
8,0092337,
"""
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,0.5,964981247
2,3,5.0,1217897793
2,7,3.5,1577836800
"""
TAGS = """userId,movieId,tag,timestamp
1,1,pixar,1139045764
2,3,"dance, music",1139045800
"""


def write_release(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    contents = {"movies.csv": MOVIES, "links.csv": LINKS, "ratings.csv": RATINGS, "tags.csv": TAGS}
    contents.update({name.replace("_", "-") + ".csv": text for name, text in files.items()})
    for name, text in contents.items():
        if text is not None:
            (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_titles_years_genres_and_ids(tmp_path):
    ingest_release(write_release(tmp_path / "rel"), tmp_path / "processed")
    movies = pl.read_parquet(tmp_path / "processed" / "movies.parquet")
    rows = {r["movie_id"]: r for r in movies.iter_rows(named=True)}
    assert (rows[1]["media_id"], rows[1]["title"], rows[1]["year"]) == ("ml_1", "Toy Story", 1995)
    assert (rows[2]["title"], rows[2]["year"]) == ("American President, The", 1995)
    assert (rows[3]["title"], rows[3]["year"]) == ("Shall We Dance? (Shall We Dansu?)", 1996)
    assert (rows[4]["title"], rows[4]["year"]) == ("Stranger Things", 2016)
    assert (rows[5]["title"], rows[5]["year"]) == ("Babylon 5", None)
    assert (rows[6]["title"], rows[6]["year"]) == ('"Great Performances" Cats', 1998)
    assert (rows[7]["title"], rows[7]["year"], rows[7]["genres"]) == ("Millions", 2004, [])
    assert (rows[8]["title"], rows[8]["year"]) == ("Dekalog", 1989)
    assert rows[1]["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert (rows[1]["imdb_id"], rows[1]["tmdb_id"]) == ("tt0114709", 862)
    assert (rows[3]["imdb_id"], rows[3]["tmdb_id"]) == ("tt0117705", None)
    assert movies.schema["year"] == pl.Int16 and movies.schema["genres"] == pl.List(pl.String)


def test_ratings_context_is_utc_whatever_the_machine_timezone(tmp_path, monkeypatch):
    release = write_release(tmp_path / "rel")
    ingest_release(release, tmp_path / "utc")
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a local-time bug shifts every bucket
    time.tzset()
    try:
        ingest_release(release, tmp_path / "kiritimati")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    a = pl.read_parquet(tmp_path / "utc" / "ratings.parquet")
    assert a.equals(pl.read_parquet(tmp_path / "kiritimati" / "ratings.parquet"))
    for row in a.iter_rows(named=True):
        moment = datetime.fromtimestamp(row["timestamp"], timezone.utc)
        assert row["rated_at"] == moment
        hour = moment.hour
        expected = ("morning" if 6 <= hour < 12 else "afternoon" if 12 <= hour < 17 else
                    "evening" if 17 <= hour < 21 else "night" if hour >= 21 else "late_night")
        assert row["time_of_day"] == expected
        assert row["day_of_week"] == moment.strftime("%A")
    assert a.schema["rated_at"] == pl.Datetime("us", "UTC")


def test_tags_and_stats(tmp_path):
    stats = ingest_release(write_release(tmp_path / "rel"), tmp_path / "processed")
    tags = pl.read_parquet(tmp_path / "processed" / "tags.parquet")
    assert tags["tag"].to_list() == ["pixar", "dance, music"]
    assert tags.schema["tagged_at"] == pl.Datetime("us", "UTC")
    on_disk = json.loads((tmp_path / "processed" / "stats.json").read_text())
    assert on_disk["files"]["ratings"]["rows_written"] == 4 == stats["files"]["ratings"]["rows_read"]
    assert on_disk["files"]["ratings"]["date_range"][0].startswith("2000-07-30")
    assert set(on_disk["timings_s"]) >= {"movies", "ratings", "tags", "total"}
    assert not (tmp_path / "processed" / "rejected").exists()
    assert not (tmp_path / "processed" / "genome_scores.parquet").exists()  # small releases have no genome


def test_genome_keeps_strong_tags_top_ten_with_rank(tmp_path):
    genome_tags = "tagId,tag\n" + "".join(f"{i},tag {i}\n" for i in range(1, 16))
    scores = "movieId,tagId,relevance\n" + "".join(
        f"1,{i},{0.3 + i * 0.04:.4f}\n" for i in range(1, 16)) + "".join(f"2,{i},0.1\n" for i in range(1, 16))
    ingest_release(write_release(tmp_path / "rel", genome_tags=genome_tags, genome_scores=scores),
                   tmp_path / "processed")
    genome = pl.read_parquet(tmp_path / "processed" / "genome_scores.parquet")
    assert genome["movie_id"].unique().to_list() == [1]  # movie 2 has nothing above 0.5
    assert genome["rank"].to_list() == list(range(1, 11))
    assert genome["tag"][0] == "tag 15" and genome["relevance"].min() > 0.5
    assert genome["relevance"].is_sorted(descending=True)
    assert pl.read_parquet(tmp_path / "processed" / "genome_tags.parquet").height == 15


BAD_ROWS = [
    ("ratings", "userId,movieId,rating,timestamp\n1,1,four,964982703\n", "rating is not a valid Float32"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,4.3,964982703\n", "rating off the 0.5-5.0 half-star grid"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,0.0,964982703\n", "rating off the 0.5-5.0 half-star grid"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,5.5,964982703\n", "rating off the 0.5-5.0 half-star grid"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,4.0,315532800\n", "timestamp outside the plausible range"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,4.0,4102444800\n", "timestamp outside the plausible range"),
    ("ratings", "userId,movieId,rating,timestamp\n1,999,4.0,964982703\n", "movieId not in movies.csv"),
    ("ratings", "userId,movieId,rating,timestamp\nx1,1,4.0,964982703\n", "userId is not a valid Int32"),
    ("ratings", "userId,movieId,rating,timestamp\n1,1,,964982703\n", "rating is empty"),
    ("tags", "userId,movieId,tag,timestamp\n1,999,good,1139045764\n", "movieId not in movies.csv"),
    ("tags", "userId,movieId,tag,timestamp\n1,1,,1139045764\n", "tag is empty"),
    ("movies", "movieId,title,genres\n1,Again (1995),Comedy\n", "duplicate movieId"),
]


@pytest.mark.parametrize("file, text, reason", BAD_ROWS)
def test_bad_rows_are_rejected_with_reason_and_row(tmp_path, file, text, reason):
    good_rows = {"ratings": RATINGS, "tags": TAGS, "movies": MOVIES}[file].splitlines()[1:]
    header, bad = text.splitlines()[0], text.splitlines()[1:]
    release = write_release(tmp_path / "rel", **{file: "\n".join([header, *good_rows, *bad]) + "\n"})
    stats = ingest_release(release, tmp_path / "processed", max_reject_fraction=1.0)
    rejected = pl.read_parquet(tmp_path / "processed" / "rejected" / f"{file}.parquet")
    assert rejected.height == 1
    assert rejected["reason"][0].startswith(reason)
    assert rejected["row"][0] == len(good_rows) + len(bad)  # the bad row is the last data row
    assert rejected["file"][0] == f"{file}.csv"
    assert stats["files"][file]["rows_rejected"] == 1
    assert stats["rejected"][file] == {rejected["reason"][0]: 1}
    written = pl.read_parquet(tmp_path / "processed" / f"{file}.parquet").height
    assert written == stats["files"][file]["rows_read"] - 1

    # The same file under on_bad_rows="fail" stops with the file, row and reason, and writes nothing.
    with pytest.raises(IngestError, match=rf"{file}\.csv: row {rejected['row'][0]}: {reason}"):
        ingest_release(release, tmp_path / "strict", on_bad_rows="fail")
    assert not (tmp_path / "strict").exists()


def test_too_many_rejects_stop_the_stage(tmp_path):
    bad = "userId,movieId,rating,timestamp\n" + "1,1,9.0,964982703\n" * 3 + RATINGS.splitlines()[1] + "\n"
    with pytest.raises(IngestError, match=r"ratings\.csv: 3 of 4 rows rejected, more than 1\.0%"):
        ingest_release(write_release(tmp_path / "rel", ratings=bad), tmp_path / "processed")


@pytest.mark.parametrize("change, message", [
    ({"ratings": None}, r"ratings\.csv: required file is missing"),
    ({"movies": None}, r"movies\.csv: required file is missing"),
    ({"links": None}, r"links\.csv: required file is missing"),
    ({"tags": None}, r"tags\.csv: required file is missing"),
    ({"ratings": "user,movie,rating,timestamp\n1,1,4.0,964982703\n"}, r"ratings\.csv: header is \['user'"),
    ({"ratings": RATINGS + "1,2,4.0,964982703,extra\n"}, r"ratings\.csv: malformed CSV: line 6 has 5 fields"),
    ({"tags": TAGS + '1,2,"unterminated,1139045764\n3,3,ok,1139045764\n'}, r"tags\.csv: malformed CSV"),
    ({"genome_tags": "tagId,tag\n1,a\n"}, r"genome-scores\.csv: missing while its genome partner"),
])
def test_file_level_problems_stop_with_the_file_named(tmp_path, change, message):
    release = write_release(tmp_path / "rel")
    for name, text in change.items():
        path = release / (name.replace("_", "-") + ".csv")
        if text is None:
            path.unlink()
        else:
            path.write_text(text)
    with pytest.raises(IngestError, match=message):
        ingest_release(release, tmp_path / "processed")
    assert not (tmp_path / "processed").exists()
    assert not list(tmp_path.glob(".processed*"))  # no temporary leftovers


def test_not_utf8_is_named(tmp_path):
    release = write_release(tmp_path / "rel")
    (release / "movies.csv").write_bytes(MOVIES.encode("utf-8") + "9,Am\xe9lie (2001),Comedy\n".encode("latin-1"))
    line = len(MOVIES.splitlines()) + 1
    with pytest.raises(IngestError, match=rf"movies\.csv: line {line}: not UTF-8"):  # the line, not a byte offset
        ingest_release(release, tmp_path / "processed")


def test_a_failed_run_keeps_the_previous_output(tmp_path):
    release = write_release(tmp_path / "rel")
    ingest_release(release, tmp_path / "processed")
    before = {p.name: p.read_bytes() for p in (tmp_path / "processed").glob("*.parquet")}
    (release / "ratings.csv").write_text(RATINGS + "1,2,4.0,964982703,extra\n")
    with pytest.raises(IngestError):
        ingest_release(release, tmp_path / "processed")
    assert {p.name: p.read_bytes() for p in (tmp_path / "processed").glob("*.parquet")} == before


def test_generated_release_round_trip(small_release, tmp_path):
    stats = ingest_release(small_release, tmp_path / "processed")
    ratings = pl.read_parquet(tmp_path / "processed" / "ratings.parquet")
    raw = pl.read_csv(small_release / "ratings.csv")
    assert ratings.height == raw.height == stats["files"]["ratings"]["rows_written"]
    assert ratings.select("user_id", "movie_id", "rating", "timestamp").equals(
        raw.select(user_id=pl.col("userId").cast(pl.Int32), movie_id=pl.col("movieId").cast(pl.Int32),
                   rating=pl.col("rating").cast(pl.Float32), timestamp="timestamp"))
    movies = pl.read_parquet(tmp_path / "processed" / "movies.parquet")
    assert movies.height == pl.read_csv(small_release / "movies.csv").height
    assert movies["year"].null_count() < movies.height * 0.02
    assert not movies["title"].str.contains(r"\(\d{4}\)$").any()


# --- sources: zip, download --------------------------------------------------------------------

def zip_release(release: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in release.iterdir():
            zf.write(path, f"{release.name}/{path.name}")
    return target


def test_zip_source(tmp_path):
    archive = zip_release(write_release(tmp_path / "ml-tiny"), tmp_path / "ml-tiny.zip")
    release = resolve_source(str(archive), tmp_path / "raw")
    assert release == tmp_path / "raw" / "ml-tiny" / "ml-tiny"
    ingest_release(release, tmp_path / "processed")
    assert pl.read_parquet(tmp_path / "processed" / "ratings.parquet").height == 4


def test_truncated_zip_is_named(tmp_path):
    archive = zip_release(write_release(tmp_path / "ml-tiny"), tmp_path / "ml-tiny.zip")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(IngestError, match=r"ml-tiny\.zip: not a readable zip archive"):
        resolve_source(str(archive), tmp_path / "raw")
    assert not (tmp_path / "raw" / "ml-tiny").exists()


class ReleaseServer:
    """GroupLens stand-in on loopback: serves <name>.zip and <name>.zip.md5, optionally cut short."""

    def __init__(self, root: Path):
        self.root, self.truncate, self.hits = root, False, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's API
                server.hits.append(self.path)
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate and path.suffix == ".zip" else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def release_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    archive = zip_release(write_release(tmp_path / "ml-latest-small"), root / "ml-latest-small.zip")
    (root / "ml-latest-small.zip.md5").write_text(
        hashlib.md5(archive.read_bytes()).hexdigest() + "  ml-latest-small.zip\n")
    server = ReleaseServer(root)
    yield server
    server.httpd.shutdown()


def test_download_verifies_checksum_and_caches(release_server, tmp_path):
    release = resolve_source("ml-latest-small", tmp_path / "raw", release_server.url)
    assert (release / "ratings.csv").exists()
    hits = len(release_server.hits)
    assert hits == 2
    fetch_release("ml-latest-small", tmp_path / "raw", release_server.url)
    assert len(release_server.hits) == hits  # cached and verified: nothing downloaded again


def test_download_with_wrong_checksum(release_server, tmp_path):
    (release_server.root / "ml-latest-small.zip.md5").write_text("0" * 32 + "  ml-latest-small.zip\n")
    with pytest.raises(IngestError, match=r"ml-latest-small\.zip: checksum mismatch"):
        fetch_release("ml-latest-small", tmp_path / "raw", release_server.url)
    assert not (tmp_path / "raw" / "ml-latest-small").exists()
    assert not (tmp_path / "raw" / "ml-latest-small.zip").exists()


def test_truncated_download(release_server, tmp_path):
    release_server.truncate = True
    with pytest.raises((IngestError, ConnectionError), match=r"ml-latest-small\.zip"):
        fetch_release("ml-latest-small", tmp_path / "raw", release_server.url)
    assert not (tmp_path / "raw" / "ml-latest-small").exists()
    assert not (tmp_path / "raw" / "ml-latest-small.zip").exists()


def test_unknown_source_is_explained(tmp_path):
    with pytest.raises(IngestError, match="neither a release folder"):
        resolve_source("ml-99m", tmp_path)


# --- truncated, short, extra-column and wrong-encoding files ------------------------------------

BIG_RATINGS = "userId,movieId,rating,timestamp\n" + "".join(f"{u},1,4.0,964982703\n" for u in range(1, 20_001))


@pytest.mark.parametrize("cut", [7, 11, 12])  # inside the movie id, after the rating, right after its comma
def test_a_ratings_file_cut_mid_line_stops_as_truncated(tmp_path, cut):
    """`head -c N ratings.csv`: a last line with fewer fields, or an empty last field, was cut;
    rejecting it as a row would lose the rest of the file silently."""
    release = write_release(tmp_path / "rel")
    line_start = len(BIG_RATINGS) // 2
    line_start = BIG_RATINGS.index("\n", line_start) + 1
    (release / "ratings.csv").write_text(BIG_RATINGS[:line_start + cut])
    with pytest.raises(IngestError, match=r"ratings\.csv: .*line \d+.*looks truncated"):
        ingest_release(release, tmp_path / "processed", max_reject_fraction=1.0)
    assert not (tmp_path / "processed").exists()


@pytest.mark.parametrize("row, fields", [("1,2,4.0", 3), ("1,2", 2), ("1,2,4.0,964982703,9", 5)])
def test_a_row_with_the_wrong_field_count_anywhere_stops_the_stage(tmp_path, row, fields):
    text = BIG_RATINGS.replace("\n500,1,4.0,964982703\n", f"\n{row}\n")
    release = write_release(tmp_path / "rel", ratings=text)
    with pytest.raises(IngestError, match=rf"ratings\.csv: malformed CSV: line 501 has {fields} fields, expected 4"):
        ingest_release(release, tmp_path / "processed", max_reject_fraction=1.0)


def test_quoted_commas_and_blank_lines_are_not_field_count_errors(tmp_path):
    tags = TAGS + '3,1,"a, b, and ""c""",1139045900\n\n'
    stats = ingest_release(write_release(tmp_path / "rel", tags=tags), tmp_path / "processed",
                           max_reject_fraction=1.0)
    assert stats["files"]["tags"]["rows_written"] == 3
    assert stats["rejected"]["tags"] == {"userId is empty": 1}  # the blank line, as before: a row


@pytest.mark.parametrize("last, reason", [
    ("1,999,4.0,964982703", "movieId not in movies.csv"),  # a hand-appended row of an unknown movie
    ("1,1,7.0,964982703", "rating off the 0.5-5.0 half-star grid"),
    ("1,1,4.0,96", "timestamp outside the plausible range (1995-01-01 to now)"),  # complete, parses: a row
])
def test_a_complete_last_row_without_newline_that_breaks_a_rule_is_rejected_with_its_reason(tmp_path, last, reason):
    """Only the last field of a cut line can be damaged: a last line whose fields are all there and
    parse is a complete row, quarantined with its own reason, never called truncated."""
    release = write_release(tmp_path / "rel", ratings=RATINGS + last)
    stats = ingest_release(release, tmp_path / "processed", max_reject_fraction=1.0)
    rows = len(RATINGS.splitlines())  # header included: the appended row's number
    assert stats["rejected"]["ratings"] == {reason: 1}
    assert stats["files"]["ratings"]["rows_written"] == rows - 1
    rejected = pl.read_parquet(tmp_path / "processed" / "rejected" / "ratings.parquet")
    assert rejected.select("row", "reason").rows() == [(rows, reason)]


def test_a_file_without_final_newline_whose_last_row_is_good_is_read_whole(tmp_path):
    release = write_release(tmp_path / "rel", ratings=RATINGS.rstrip("\n"))
    stats = ingest_release(release, tmp_path / "processed")
    assert stats["files"]["ratings"]["rows_written"] == len(RATINGS.splitlines()) - 1


def test_trailing_unnamed_columns_are_ignored_and_values_in_them_rejected(tmp_path):
    body = [line + ",,," for line in RATINGS.splitlines()[1:]] + ["1,3,3.0,964982800,,oops,"]
    release = write_release(tmp_path / "rel", ratings="userId,movieId,rating,timestamp,,,\n" + "\n".join(body) + "\n")
    stats = ingest_release(release, tmp_path / "processed", max_reject_fraction=1.0)
    assert stats["files"]["ratings"]["unnamed_columns_ignored"] == 3
    assert stats["files"]["ratings"]["rows_written"] == len(body) - 1
    rejected = pl.read_parquet(tmp_path / "processed" / "rejected" / "ratings.parquet")
    assert rejected.select("row", "reason").rows() == [(len(body), "a value in unnamed column 6")]
    assert pl.read_parquet(tmp_path / "processed" / "ratings.parquet").columns[:4] == [
        "user_id", "movie_id", "rating", "timestamp"]


def test_not_utf8_deep_in_a_large_file_names_the_line(tmp_path):
    release = write_release(tmp_path / "rel")
    (release / "ratings.csv").write_bytes(BIG_RATINGS.encode() + b"7,1,4.0,96498\xe9703\n")
    with pytest.raises(IngestError, match=r"ratings\.csv: malformed CSV: line 20002: not UTF-8"):
        ingest_release(release, tmp_path / "processed")


def test_not_utf8_near_the_top_of_a_small_file_names_the_line_not_a_byte_offset(tmp_path):
    release = write_release(tmp_path / "rel")
    lines = RATINGS.encode().splitlines(keepends=True)
    (release / "ratings.csv").write_bytes(b"".join(lines[:2]) + b"7,1,4.0,96498\xe9703\n" + b"".join(lines[2:]))
    with pytest.raises(IngestError, match=r"ratings\.csv: line 3: not UTF-8 text \(invalid .* at byte 13 of the line\)"):
        ingest_release(release, tmp_path / "processed")


def test_a_known_release_is_compared_with_the_published_counts(tmp_path):
    release = write_release(tmp_path / "ml-latest-small")
    stats = ingest_release(release, tmp_path / "processed")
    known = stats["release"]
    assert known["known"] and not known["matches_published"]
    # Both editions differ; the warning names each file and both counts, against the closer edition.
    assert any(w.endswith("ratings.csv: 4 rows read, the published ml-latest-small has 100,836") or
               w.endswith("ratings.csv: 4 rows read, the published ml-latest-small has 100,004")
               for w in known["warnings"])
    assert json.loads((tmp_path / "processed" / "stats.json").read_text())["release"] == known
    assert ingest_release(write_release(tmp_path / "mine"), tmp_path / "p2")["release"] == {
        "name": "mine", "known": False}


def test_a_known_release_with_the_published_counts_matches(tmp_path, monkeypatch):
    from tasks.ingest import movielens

    release = write_release(tmp_path / "ml-20m")
    monkeypatch.setitem(movielens.PUBLISHED_ROWS, "ml-20m", [{"movies": 8, "links": 8, "ratings": 4, "tags": 2}])
    assert ingest_release(release, tmp_path / "processed")["release"] == {
        "name": "ml-20m", "known": True, "matches_published": True, "warnings": []}
