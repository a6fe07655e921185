"""The local Milvus: the standalone server of the `milvus` wheel (2.3.5: Milvus with embedded etcd,
rocksmq and local storage), not Milvus Lite, a file format that answered the 1M catalog from an
interim index whatever it was given.

Its folder (services_dir/milvus) holds the unpacked binaries, the config (the wheel's template with
our ports), data and logs. The proxy listens on MG_MILVUS_PORT, its health endpoint on
MG_MILVUS_HTTP_PORT; the server's internal ports (etcd, coordinators, nodes) are the first free
ones above Milvus's defaults, chosen at each start.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.services.base import Service, ServiceError, free_port, make_home
from tasks.settings import LOCAL_HOST, Settings

TIME_TICK_MS = 50
ROOT_RUN_DIR = Path("/run/milvus")  # where a root run writes its PID file, whatever MILVUS_RUN_DIR says


def _prepare(settings: Settings, home: Path) -> None:
    import yaml
    from milvus import MilvusServerConfig, _initialize_data_files

    make_home(settings, home)
    _initialize_data_files(str(home))  # the binaries, unpacked once (checked by digest at every start)
    config = MilvusServerConfig(data_dir=str(home))
    # A Strong read waits for the next time tick: 200 ms by default, most of a one-query CLI run.
    config.set("proxy.timeTickInterval", TIME_TICK_MS)
    config.resolve()  # writes home/configs/milvus.yaml: free ports, etcd, storage and log folders under home
    # The embedded etcd's peer port is not in the wheel's template: 2380 for every server, so a
    # second local Milvus (the tests' beside `make run`'s) failed to start. Its own etcd config:
    etcd, peer = f"http://{LOCAL_HOST}:{config.get('etcd_port')}", f"http://{LOCAL_HOST}:{free_port()}"
    (home / "configs" / "etcd.yaml").write_text(yaml.safe_dump({
        "name": "default", "listen-client-urls": etcd, "advertise-client-urls": etcd, "listen-peer-urls": peer,
        "initial-advertise-peer-urls": peer, "initial-cluster": f"default={peer}"}))
    path = home / "configs" / "milvus.yaml"
    values = yaml.safe_load(path.read_text())
    values["etcd"]["config"] = {"path": str(home / "configs" / "etcd.yaml")}
    # Our port, set here: the wheel's resolver test-binds a given port without SO_REUSEADDR, so a
    # restart within a minute of a stop (clients' connections in TIME_WAIT) failed; the server can bind it.
    values["proxy"]["port"] = settings.milvus_port
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    (home / "run").mkdir(exist_ok=True)


def _command(settings: Settings, home: Path) -> list[str]:  # noqa: ARG001 - a recipe's signature
    # As root, Milvus writes its PID file to /run/milvus whatever MILVUS_RUN_DIR says: the alias
    # gives each local server its own file there (standalone-<alias>.pid), not one for all.
    return [str(home / "bin" / "milvus"), "run", "standalone", "-alias", _alias(home)]


def _alias(home: Path) -> str:
    return "mg-" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def _env(settings: Settings, home: Path) -> dict[str, str]:
    import os

    return {"DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(settings.milvus_http_port),
            "MILVUS_RUN_DIR": str(home / "run"),  # where a non-root run writes its PID file
            "LD_LIBRARY_PATH": ":".join(filter(None, [str(home / "bin"), os.environ.get("LD_LIBRARY_PATH")]))}


def _ready(settings: Settings) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{LOCAL_HOST}:{settings.milvus_http_port}/healthz", timeout=2) as reply:
            return "OK" in reply.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return False


def _flush(settings: Settings) -> None:
    """Every collection of every database sealed and written to local storage before the server stops."""
    from pymilvus import MilvusClient

    uri = f"http://{LOCAL_HOST}:{settings.milvus_port}"
    server = MilvusClient(uri=uri, timeout=10)
    databases = server.list_databases()
    server.close()
    for database in databases:
        client = MilvusClient(uri=uri, timeout=30, db_name=database)
        try:
            for collection in client.list_collections():
                client.flush(collection)
        finally:
            client.close()


READY_PROBE = "mg_ready"  # a tiny collection in the server's default database


def _loads(settings: Settings) -> None:
    """Ready means a collection loads, not only /healthz: a restarted server answers its health check
    while its query coordinator still assigns loads to the previous run's query node ("node not
    found", for 30-60 s here), and a search in that window failed. The probe is released and loaded
    again on every start, so it proves a live query node serves it."""
    import time

    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    client = MilvusClient(uri=f"http://{LOCAL_HOST}:{settings.milvus_port}", timeout=30)
    try:
        if not client.has_collection(READY_PROBE):
            schema = client.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index("vector", index_type="FLAT", metric_type="L2")
            client.create_collection(READY_PROBE, schema=schema, index_params=index)
        deadline = time.monotonic() + 180
        while True:
            try:
                client.release_collection(READY_PROBE)
                client.load_collection(READY_PROBE, timeout=30)
                return
            except MilvusException as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(f"milvus on port {settings.milvus_port} answers but cannot load a "
                                       f"collection: {exc}") from exc
                time.sleep(2)
    finally:
        client.close()


def _remove_pid_file(settings: Settings) -> None:
    """As root the server writes /run/milvus/standalone-<alias>.pid and does not always remove it."""
    (ROOT_RUN_DIR / f"standalone-{_alias(settings.services_dir / 'milvus')}.pid").unlink(missing_ok=True)


def _address(settings: Settings) -> str:
    return (f"http://{LOCAL_HOST}:{settings.milvus_port} (health http://{LOCAL_HOST}:{settings.milvus_http_port}"
            "/healthz), no user; a database per dataset")


SERVICE = Service("milvus", _command, _ready, _address, prepare=_prepare, after_start=_loads, env=_env,
                  before_stop=_flush, after_stop=_remove_pid_file)
