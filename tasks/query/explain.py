"""Explainability from the knowledge graph, in Cypher over Bolt: why an item suits a user, and the
items most connected to an item.

Reasons for (user, item), each with its evidence:
- genre: genres the item shares with items the user rated >= LIKED (how many, which);
- tag: genome tags (HAS_TAG) the item shares with those items;
- similar users: users who liked the item and share liked items with the user (the item's PEERS
  likers with the lowest user ids, read from its LIKED_BY relationships: a popular movie has tens of
  thousands of raters at 25m scale, and each call reads at most PEERS + 1 of them);
- platform: platforms offering the item in the user's country.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tasks.errors import PipelineError
from tasks.settings import Settings
from tasks.stores import STORES
from tasks.stores.neo4j import LIKED, PEERS  # the graph's LIKED_BY holds each item's first likers

CANDIDATES = 5  # per item asked for: the items most liked by the likers, whose shared genres are counted
EXAMPLES = 3  # evidence items named per reason

# Both start from the item's few genres or tags and walk out from the user's ratings: starting from
# a genre would fan out to every movie of it (1.5-2.5 s at small scale, against 2 ms).
GENRES = """
MATCH (m:Media {id: $item})-[:HAS_GENRE]->(g:Genre)
WITH m, collect(g.name) AS genres
MATCH (u:User {id: $user})-[r:RATED]->(liked:Media)-[:HAS_GENRE]->(g:Genre)
WHERE r.rating >= $liked AND liked <> m AND g.name IN genres
WITH g, liked ORDER BY r.rating DESC, liked.id
RETURN g.name AS name, count(liked) AS liked, collect(liked.title)[..$examples] AS examples
ORDER BY liked DESC, name LIMIT $limit"""

TAGS = """
MATCH (m:Media {id: $item})-[:HAS_TAG]->(t:Tag)
WITH m, collect(t.id) AS tags
MATCH (u:User {id: $user})-[r:RATED]->(liked:Media)-[:HAS_TAG]->(t:Tag)
WHERE r.rating >= $liked AND liked <> m AND t.id IN tags
WITH m, t, liked ORDER BY r.rating DESC, liked.id
WITH m, t, count(liked) AS liked, collect(liked.title)[..$examples] AS examples
MATCH (m)-[h:HAS_TAG]->(t)
RETURN t.name AS name, h.relevance AS relevance, liked, examples
ORDER BY liked DESC, relevance DESC, name LIMIT $limit"""

# Similar users: the user's likes are read first (one user's ratings) and handed back as a map keyed
# by element id, so that the server keeps only the peers' likes the user shares, looking each up in
# the map without reading the item (at 25m scale 33 ms against 58 ms for sending every peer like
# back to be intersected here; `common.id IN $list` compared every pair: 700 ms).
MY_LIKES = """
MATCH (u:User {id: $user})-[b:RATED]->(mine:Media)
WHERE b.rating >= $liked AND mine.id <> $item
RETURN collect(elementId(mine)) AS items"""

PEER_LIKES = """
MATCH (m:Media {id: $item})-[:LIKED_BY]->(peer:User)
WHERE peer.id <> $user
WITH peer ORDER BY peer.id LIMIT $peers
MATCH (peer)-[a:RATED]->(common:Media)
WHERE a.rating >= $liked AND $mine[elementId(common)] IS NOT NULL
RETURN peer.id AS peer, collect(common.id) AS items"""

TITLES = "UNWIND $ids AS id MATCH (m:Media {id: id}) RETURN m.id AS id, m.title AS title"

PLATFORMS = """
MATCH (u:User {id: $user}), (m:Media {id: $item})-[a:AVAILABLE_ON]->(p:Platform)
WHERE u.country IN a.regions
RETURN p.id AS platform, p.name AS name, a.offer_type AS offer, a.price_usd AS price, u.country AS country
ORDER BY platform"""

# Ranked by likers first, genres counted only for the best candidates (counting them for every item
# the likers liked took 5-20 s at 25m scale), each candidate's own genres checked against the item's
# (matching the shape item-genre-candidate fanned out through every movie of the genre: 87 ms p50
# against 40 at 25m scale).
CONNECTED = """
MATCH (m:Media {id: $item})
OPTIONAL MATCH (m)-[:HAS_GENRE]->(mg:Genre)
WITH m, collect(mg) AS item_genres
MATCH (m)-[:LIKED_BY]->(peer:User)
WITH m, item_genres, peer ORDER BY peer.id LIMIT $peers
MATCH (peer)-[r2:RATED]->(other:Media)
WHERE r2.rating >= $liked AND other <> m
WITH item_genres, other, count(peer) AS liked_by ORDER BY liked_by DESC, other.id LIMIT $candidates
OPTIONAL MATCH (other)-[:HAS_GENRE]->(g:Genre)
WITH other, liked_by, sum(CASE WHEN g IN item_genres THEN 1 ELSE 0 END) AS genres
RETURN other.id AS id, other.title AS title, liked_by, genres
ORDER BY liked_by DESC, genres DESC, id LIMIT $limit"""


class NotInGraph(PipelineError, LookupError):
    """The user or item is not a node of the loaded graph."""


@dataclass
class Reason:
    kind: str  # genre, tag, similar users, platform
    text: str
    evidence: dict = field(default_factory=dict)


def _graph(settings: Settings):
    """The graph of the data dir's own dataset."""
    from tasks.stores.base import require_dataset

    graph = STORES["neo4j"].open(settings)
    try:
        require_dataset(graph, settings)
    except PipelineError:
        graph.close()
        raise
    return graph


def _natural(rows: list[dict]) -> list[dict]:
    """Titles as people write them ("The Usual Suspects"), in the rows and their example lists."""
    from tasks.ingest.movielens import natural_titles

    for row in rows:
        for key in ("title", "examples"):
            if isinstance(row.get(key), str):
                row[key] = natural_titles([row[key]])[0]
            elif isinstance(row.get(key), list):
                row[key] = natural_titles(row[key])
    return rows


def _require(graph, label: str, key) -> dict:
    """The node's properties; NotInGraph naming it when it is absent."""
    found = graph.query(f"MATCH (n:{label} {{id: $key}}) RETURN properties(n) AS node", key=key)
    if not found:
        raise NotInGraph(f"{label} {key!r} is not in the graph at {graph.target()}; load it with python -m flows.load")
    return found[0]["node"]


def _peer_users(graph, params: dict) -> list[dict]:
    """The item's first PEERS likers (by id, not the user) ranked by the liked items they share with
    the user, ties by id; up to EXAMPLES of those items (by id) as examples."""
    mine = dict.fromkeys(graph.query(MY_LIKES, **params)[0]["items"], True)
    shared = {row["peer"]: row["items"] for row in graph.query(PEER_LIKES, **params, mine=mine) if row["items"]}
    best = sorted(shared.items(), key=lambda p: (-len(p[1]), p[0]))[:params["limit"]]
    examples = {peer: sorted(items)[:params["examples"]] for peer, items in best}
    ids = sorted({i for items in examples.values() for i in items})
    titles = {row["id"]: row["title"] for row in graph.query(TITLES, ids=ids)} if ids else {}
    return [{"peer": peer, "shared": len(items), "examples": [titles[i] for i in examples[peer]]}
            for peer, items in best]


def explain(settings: Settings, user: int, item: str, limit: int = 5) -> list[Reason]:
    """Why `item` suits `user`, strongest reasons of each kind first."""
    graph = _graph(settings)
    try:
        title = _natural([_require(graph, "Media", item)])[0]["title"]
        _require(graph, "User", user)
        params = {"user": user, "item": item, "liked": LIKED, "examples": EXAMPLES, "limit": limit, "peers": PEERS}
        reasons = [Reason("genre", f"{title} is {g['name']}, like {g['liked']} of the user's liked items", g)
                   for g in _natural(graph.query(GENRES, **params))]
        reasons += [Reason("tag", f"{title} is tagged '{t['name']}' (relevance {t['relevance']:.2f}), like "
                                  f"{t['liked']} of the user's liked items", t) for t in _natural(graph.query(TAGS, **params))]
        reasons += [Reason("similar users", f"user {p['peer']} liked {title} and {p['shared']} items this user liked", p)
                    for p in _natural(_peer_users(graph, params))]
        reasons += [Reason("platform", f"on {p['name']} ({p['offer']}) in {p['country']}", p)
                    for p in graph.query(PLATFORMS, **params)]
        return reasons
    finally:
        graph.close()


def connected(settings: Settings, item: str, limit: int = 10) -> list[dict]:
    """The items most connected to `item`: liked by the most of its likers, then most shared genres."""
    graph = _graph(settings)
    try:
        _require(graph, "Media", item)
        return _natural(graph.query(CONNECTED, item=item, liked=LIKED, peers=PEERS, limit=limit,
                                    candidates=CANDIDATES * limit))
    finally:
        graph.close()


def as_dicts(reasons: list[Reason]) -> list[dict]:
    return [asdict(r) for r in reasons]
