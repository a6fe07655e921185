"""Synthetic user profiles, streaming platforms and their availability, from DATA/processed/.

Users: one profile per user id in ratings, archetype drawn with the seed document's weights, values
drawn from counter-based streams keyed by (seed, user id, purpose): a user's profile never depends
on the other users or on chunking. Favourite genres come from the user's own ratings.

Availability: each (movie, platform) pair is an independent draw from md5(media id + platform id)
at the platform's rate (about 83.7% of movies on at least one platform, 1.58 platforms per movie);
listing details come from a second md5 of the pair. Free listings carry no price.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from faker import Faker

from tasks import hashrand
from tasks.files import ZSTD, atomic_output

AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
DEVICES = ["tv", "laptop", "mobile"]
TIMES = ["morning", "afternoon", "evening", "night", "late_night"]


@dataclass(frozen=True)
class Country:
    code: str
    locale: str
    languages: tuple[str, ...]
    weight: float  # share among users who are not "international"
    intl_weight: float  # share among "international" users


COUNTRIES = [
    Country("US", "en_US", ("en", "es"), 0.40, 0.02),
    Country("GB", "en_GB", ("en",), 0.10, 0.03),
    Country("CA", "en_CA", ("en", "fr"), 0.07, 0.05),
    Country("FR", "fr_FR", ("fr", "en"), 0.10, 0.18),
    Country("DE", "de_DE", ("de", "en"), 0.08, 0.12),
    Country("ES", "es_ES", ("es", "ca"), 0.05, 0.12),
    Country("IT", "it_IT", ("it",), 0.05, 0.10),
    Country("BR", "pt_BR", ("pt", "es"), 0.06, 0.14),
    Country("JP", "ja_JP", ("ja",), 0.05, 0.12),
    Country("IN", "en_IN", ("hi", "en"), 0.04, 0.12),
]
EXTRA_LANGUAGES = ["en", "fr", "es", "de", "it", "pt", "ja", "hi", "ko", "zh", "ar"]


@dataclass(frozen=True)
class Archetype:
    name: str
    weight: float
    age_weights: tuple[float, ...]  # over AGE_BANDS
    devices: tuple[float, ...]  # base shares over DEVICES
    times: tuple[float, ...]  # base shares over TIMES
    cultural_context: str
    extra_languages: tuple[int, int]  # how many languages beyond the country's first (min, max)


ARCHETYPES = [
    Archetype("cinephile", 0.12, (0.05, 0.30, 0.30, 0.20, 0.10, 0.05), (0.60, 0.30, 0.10),
              (0.05, 0.10, 0.35, 0.40, 0.10), "arthouse, festival and world cinema", (0, 2)),
    Archetype("casual", 0.30, (0.15, 0.25, 0.25, 0.20, 0.10, 0.05), (0.45, 0.25, 0.30),
              (0.10, 0.15, 0.45, 0.25, 0.05), "mainstream hits and popular series", (0, 1)),
    Archetype("family", 0.15, (0.0, 0.0, 0.55, 0.45, 0.0, 0.0), (0.70, 0.15, 0.15),
              (0.10, 0.35, 0.45, 0.10, 0.0), "family films and animation", (0, 1)),
    Archetype("young_adult", 0.20, (0.55, 0.45, 0.0, 0.0, 0.0, 0.0), (0.20, 0.30, 0.50),
              (0.05, 0.10, 0.25, 0.35, 0.25), "trending titles, anime and genre films", (0, 1)),
    Archetype("senior", 0.08, (0.0, 0.0, 0.0, 0.0, 0.55, 0.45), (0.80, 0.15, 0.05),
              (0.30, 0.35, 0.30, 0.05, 0.0), "classics, documentaries and drama", (0, 1)),
    Archetype("international", 0.10, (0.15, 0.30, 0.25, 0.15, 0.10, 0.05), (0.40, 0.30, 0.30),
              (0.10, 0.15, 0.40, 0.25, 0.10), "foreign-language and subtitled cinema", (1, 3)),
    Archetype("genre_specialist", 0.05, (0.10, 0.35, 0.30, 0.15, 0.07, 0.03), (0.45, 0.40, 0.15),
              (0.05, 0.10, 0.35, 0.35, 0.15), "deep catalogues of one or two genres", (0, 1)),
]
ARCHETYPE_NAMES = [a.name for a in ARCHETYPES]
NOISE_SD = 0.08  # spread of a user's device and viewing-time shares around the archetype's base


def _pools(seed: int) -> dict[str, tuple[pl.Series, np.ndarray, np.ndarray]]:
    """Faker first names, last names and cities of every country, drawn once for the seed:
    for each kind, all countries' entries in one Series, with each country's offset and size."""
    lists: dict[str, list[list[str]]] = {"first": [], "last": [], "city": []}
    for country in COUNTRIES:
        fake = Faker(country.locale)
        fake.seed_instance(seed)
        lists["first"].append([fake.first_name() for _ in range(400)])
        lists["last"].append([fake.last_name() for _ in range(400)])
        lists["city"].append(_cities(fake, 120))
    pools = {}
    for kind, per_country in lists.items():
        sizes = np.array([len(x) for x in per_country])
        pools[kind] = (pl.Series([v for x in per_country for v in x]), np.cumsum(sizes) - sizes, sizes)
    return pools


def _cities(fake: Faker, n: int) -> list[str]:
    """n distinct cities of the locale, the same in every process. Some locales (it_IT) list their
    cities in a set's order, which PYTHONHASHSEED changes: those are sorted before drawing."""
    listed = next((sorted(set(p.cities)) for p in fake.providers if isinstance(getattr(p, "cities", None), list)), None)
    if listed is not None:
        return fake.random.sample(listed, min(n, len(listed)))
    return list(dict.fromkeys(fake.city() for _ in range(n)))


def _from_pool(pool: tuple[pl.Series, np.ndarray, np.ndarray], country: np.ndarray, u: np.ndarray) -> pl.Series:
    values, offsets, sizes = pool
    return values.gather(offsets[country] + (u * sizes[country]).astype(np.int64))


def _language_candidates() -> tuple[pl.Series, np.ndarray, int]:
    """Per country: its other languages first, then the rest of EXTRA_LANGUAGES; (labels, priority, width)."""
    rows = [[lang for lang in dict.fromkeys(c.languages[1:] + tuple(EXTRA_LANGUAGES)) if lang != c.languages[0]]
            for c in COUNTRIES]
    width = min(len(r) for r in rows)
    labels = pl.Series([lang for r in rows for lang in r[:width]])
    priority = np.array([[0.0 if lang in c.languages else 1.0 for lang in r[:width]] for c, r in zip(COUNTRIES, rows)])
    return labels, priority, width


def _shares(base: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Archetype base + gaussian noise, clipped at 0 and renormalised to sum to 1."""
    values = np.clip(base + NOISE_SD * noise, 0.0, None)
    values[values.sum(axis=1) == 0, 0] = 1.0
    return (values / values.sum(axis=1, keepdims=True)).astype(np.float32)


def profiles(user_ids: np.ndarray, seed: int = 42) -> pl.DataFrame:
    """Demographics and preferences for these users; row i depends only on (seed, user_ids[i])."""
    ids = np.asarray(user_ids, dtype=np.int64)
    arche = hashrand.choice(hashrand.uniform(seed, "archetype", ids)[:, 0], [a.weight for a in ARCHETYPES])
    u = hashrand.uniform(seed, "demographics", ids, 8)
    age = _age_bands(arche, u[:, 0])
    is_intl = arche == ARCHETYPE_NAMES.index("international")
    country = np.where(is_intl, hashrand.choice(u[:, 1], [c.intl_weight for c in COUNTRIES]),
                       hashrand.choice(u[:, 1], [c.weight for c in COUNTRIES]))
    pools = _pools(seed)
    first = _from_pool(pools["first"], country, u[:, 2])
    last = _from_pool(pools["last"], country, u[:, 3])
    cities = _from_pool(pools["city"], country, u[:, 4])
    # The country's first language, then 0-3 more (the archetype says how many), its own others first.
    labels, priority, width = _language_candidates()
    bounds = np.array([a.extra_languages for a in ARCHETYPES])[arche]
    extra = bounds[:, 0] + (u[:, 5] * (bounds[:, 1] - bounds[:, 0] + 1)).astype(np.int64)
    keys = priority[country] + hashrand.uniform(seed, "languages", ids, width)
    more = hashrand.ranked_lists(keys, extra, labels, country * width)
    primary = pl.Series([c.languages[0] for c in COUNTRIES]).gather(country)
    languages = pl.select(pl.concat_list(pl.lit(primary), pl.lit(more))).to_series()
    device_base = np.array([a.devices for a in ARCHETYPES])[arche]
    time_base = np.array([a.times for a in ARCHETYPES])[arche]
    devices = _shares(device_base, hashrand.normal(seed, "devices", ids, len(DEVICES)))
    times = _shares(time_base, hashrand.normal(seed, "viewing_times", ids, len(TIMES)))
    return pl.DataFrame({
        "user_id": ids.astype(np.int32),
        "archetype": pl.Series(np.array(ARCHETYPE_NAMES)[arche]).cast(pl.Enum(ARCHETYPE_NAMES)),
        "name": pl.select(pl.concat_str([pl.lit(first), pl.lit(last)], separator=" ")).to_series(),
        "age_band": pl.Series(np.array(AGE_BANDS)[age]).cast(pl.Enum(AGE_BANDS)),
        "country": np.array([c.code for c in COUNTRIES])[country],
        "city": cities,
        "languages": languages,
        "cultural_context": np.array([a.cultural_context for a in ARCHETYPES])[arche],
        **{f"device_{d}": devices[:, k] for k, d in enumerate(DEVICES)},
        **{f"watch_{t}": times[:, k] for k, t in enumerate(TIMES)},
    })


def _age_bands(arche: np.ndarray, u: np.ndarray) -> np.ndarray:
    out = np.empty(len(arche), dtype=np.int64)
    for k, archetype in enumerate(ARCHETYPES):
        rows = arche == k
        out[rows] = hashrand.choice(u[rows], archetype.age_weights)
    return out


def rating_summary(ratings: Path, movies: Path) -> pl.DataFrame:
    """Per user: rating count, mean rating, and top-3 favourite genres by ratings of 3.5 and above
    (ties by count of all ratings, then name). Users who liked nothing get the genres they rate most.

    Genres are bits of a per-movie mask, so one group-by over the ratings counts every genre."""
    movie_genres = pl.read_parquet(movies, columns=["movie_id", "genres"])
    vocab = sorted(movie_genres["genres"].explode().drop_nulls().unique().to_list())
    if len(vocab) > 62:
        raise ValueError(f"{movies}: {len(vocab)} distinct genres; at most 62 are supported")
    bit = {genre: 1 << k for k, genre in enumerate(vocab)}
    masks = pl.DataFrame({"movie_id": movie_genres["movie_id"],
                          "mask": [sum(bit[g] for g in gs) for gs in movie_genres["genres"].to_list()]},
                         schema={"movie_id": pl.Int32, "mask": pl.Int64})
    has = [((pl.col("mask") // (1 << k)) % 2).cast(pl.Int32) for k in range(len(vocab))]
    liked = (pl.col("rating") >= 3.5).cast(pl.Int32)
    per_user = (
        pl.scan_parquet(ratings).select("user_id", "movie_id", "rating").join(masks.lazy(), on="movie_id", how="left")
        .with_columns(pl.col("mask").fill_null(0))
        .group_by("user_id")
        .agg(pl.len().cast(pl.Int32).alias("rating_count"), pl.col("rating").mean().cast(pl.Float32).alias("mean_rating"),
             *[(h * liked).sum().alias(f"liked_{k}") for k, h in enumerate(has)],
             *[h.sum().alias(f"seen_{k}") for k, h in enumerate(has)])
        .sort("user_id").collect(engine="streaming")
    )
    if not vocab:
        return per_user.select("user_id", "rating_count", "mean_rating",
                               favourite_genres=pl.lit([], pl.List(pl.String)))
    liked_n = per_user.select(pl.col("^liked_.*$")).to_numpy().astype(np.int64)
    seen_n = per_user.select(pl.col("^seen_.*$")).to_numpy().astype(np.int64)
    # Highest liked count, then highest seen count; vocab is sorted, so a stable sort breaks ties by name.
    score = liked_n * (seen_n.max() + 1) + seen_n
    counts = np.minimum((seen_n > 0).sum(axis=1), 3)
    favourites = hashrand.ranked_lists(-score.astype(np.float64), counts, pl.Series(vocab))
    return per_user.select("user_id", "rating_count", "mean_rating").with_columns(favourite_genres=favourites)


# --- platforms and availability ------------------------------------------------------------------

PLATFORMS = pl.DataFrame({
    "platform_id": ["tv5monde", "netflix", "amazon_prime", "hbo_max", "disney_plus", "apple_tv_plus", "mubi",
                    "criterion_channel"],
    "name": ["TV5MONDE", "Netflix", "Amazon Prime Video", "HBO Max", "Disney+", "Apple TV+", "MUBI",
             "Criterion Channel"],
    "business_model": ["free", "subscription", "subscription", "subscription", "subscription", "subscription",
                       "subscription", "subscription"],
    "monthly_price_usd": [None, 15.49, 8.99, 15.99, 13.99, 9.99, 14.99, 10.99],
    "availability_rate": [0.15, 0.35, 0.30, 0.25, 0.20, 0.15, 0.10, 0.08],
})
REGIONS = ["US", "CA", "GB", "FR", "DE", "ES", "IT", "BR", "JP", "IN"]
SUBTITLE_LANGUAGES = ["en", "fr", "es", "de", "it", "pt", "ja", "ko", "zh", "ar", "hi", "nl"]
AUDIO_LANGUAGES = ["en", "fr", "es", "de", "it", "pt", "ja"]
QUALITY_LEVELS = ["SD", "HD", "4K"]


def availability(media_ids: list[str]) -> pl.DataFrame:
    """One row per available (media_id, platform_id) pair with its listing details.

    The pair is available when the first 4 bytes of md5(media id + platform id), as a fraction of
    2^32, fall below the platform's rate; the digest's last 8 bytes seed the listing's details."""
    platform_ids = PLATFORMS["platform_id"].to_list()
    digests = np.frombuffer(b"".join(hashlib.md5(f"{m}{p}".encode()).digest() for m in media_ids
                                     for p in platform_ids), dtype="<u8").reshape(-1, 2)
    draw = (digests[:, 0] & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32
    rates = np.tile(PLATFORMS["availability_rate"].to_numpy(), len(media_ids))
    keep = np.flatnonzero(draw < rates)
    platform_k = keep % len(platform_ids)
    n_regions, n_subs, n_audio = len(REGIONS), len(SUBTITLE_LANGUAGES), len(AUDIO_LANGUAGES)
    u = hashrand.uniform(0, "listing", digests[keep, 1], 8 + n_regions + n_subs + n_audio)
    lists = u[:, 8:]
    top_quality = hashrand.choice(u[:, 0], [0.10, 0.60, 0.30])  # SD, HD or 4K at best
    is_4k = top_quality == 2
    free = (PLATFORMS["business_model"] == "free").to_numpy()[platform_k]
    rental = ~free & (u[:, 1] < 0.2)
    monthly = PLATFORMS["monthly_price_usd"].fill_null(0.0).to_numpy()[platform_k]
    price = np.where(free, np.nan, np.where(rental, 2.99 + np.floor(u[:, 2] * 4), monthly))
    return pl.DataFrame({
        "media_id": pl.Series(media_ids, dtype=pl.String).gather(keep // len(platform_ids)),
        "platform_id": pl.Series(platform_ids).gather(platform_k),
        "offer_type": np.where(free, "free", np.where(rental, "rental", "subscription")),
        "price_usd": pl.Series(price).fill_nan(None),
        "regions": hashrand.ranked_lists(lists[:, :n_regions], 1 + (u[:, 3] * 3).astype(np.int64),
                                         pl.Series(REGIONS)),
        "subtitle_languages": hashrand.ranked_lists(lists[:, n_regions:n_regions + n_subs],
                                                    2 + (u[:, 4] * 5).astype(np.int64), pl.Series(SUBTITLE_LANGUAGES)),
        "audio_languages": hashrand.ranked_lists(lists[:, n_regions + n_subs:], 1 + (u[:, 5] * 3).astype(np.int64),
                                                 pl.Series(AUDIO_LANGUAGES)),
        "quality_options": pl.Series([QUALITY_LEVELS[: q + 1] for q in range(3)]).gather(top_quality),
        "hdr": is_4k & (u[:, 6] < 0.7),
        "dolby_atmos": is_4k & (u[:, 7] < 0.5),
    }, schema_overrides=_AVAILABILITY_SCHEMA)


_AVAILABILITY_SCHEMA = {
    "media_id": pl.String, "platform_id": pl.String, "offer_type": pl.String, "price_usd": pl.Float64,
    "regions": pl.List(pl.String), "subtitle_languages": pl.List(pl.String), "audio_languages": pl.List(pl.String),
    "quality_options": pl.List(pl.String), "hdr": pl.Boolean, "dolby_atmos": pl.Boolean,
}


def build_platforms(out: Path) -> Path:
    return write_parquet(PLATFORMS, out)


def write_parquet(frame: pl.DataFrame, out: Path) -> Path:
    with atomic_output(out) as tmp:
        frame.write_parquet(tmp, **ZSTD)
    return out


CATALOG_TEMPLATE = Path(__file__).parent / "schemas" / "media_catalog.yaml"
