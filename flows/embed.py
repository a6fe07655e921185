"""Embedding flow: movie texts, catalog texts and user vectors into DATA_DIR/embeddings/.

    python -m flows.embed --data-dir DIR [--model NAME] [--device auto|cpu|cuda] [--batch-size N]
                          [--on POOL] [--shards N]

Each set is split into shards (tasks.embed.shards). Without --on the shards are embedded in this
process; with --on POOL each unfinished shard is one flow run of the `embed-shard/POOL` deployment,
all submitted at once: the pool's workers (one per GPU host, `--limit 1`) take them as they free up,
and a shard whose run fails or is lost with its worker (marked Crashed when its heartbeats stop, by
the automation deployments/deploy.py creates) is submitted again and may land on another worker.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from pydantic import Field

from flows.common import cli_settings, load_settings, prefect_api, preflight
from tasks.embed.models import MODELS, load_model
from tasks.embed.shards import Shard
from tasks.embed.tasks import (SETS, embed_shard, embed_shards_task, index_set_task, plan_set_task,
                               user_vectors_task)
from tasks.caching import result_storage
from tasks.errors import MissingInput, PipelineError, run_cli
from tasks.progress import Progress

SHARD_FLOW = "embed-shard"  # deployments of it are named after their pool: embed-shard/a100-gpu
SHARD_ATTEMPTS = 3  # runs of one shard before the stage fails
POLL_S = 2.0

ShardCount = Annotated[int, Field(ge=1, le=100_000)]


@flow(name="embed", log_prints=True)
def embed_flow(data_dir: str | None = None, model: str | None = None,
               device: Literal["auto", "cpu", "cuda"] | None = None, batch_size: int | None = None,
               catalog: bool = True, pool: str | None = None, shards: ShardCount | None = None) -> dict[str, str]:
    """Returns the written HDF5 files by name. Empty parameters take the settings (environment or
    .env). Models not in a package are looked up in MG_MODEL_DIR before the Hugging Face cache;
    MG_EMBED_PRECISION=fp32 keeps full precision.

    Args:
        pool: embed the shards on this work pool (its embed-shard deployment) instead of in this process.
        shards: split each set into this many shards (default: shards of MG_EMBED_SHARD_ROWS texts).
    """
    settings = load_settings(data_dir=data_dir, model=model, device=device, embed_batch_size=batch_size)
    data, model = settings.data_dir, settings.model
    model_dir = str(settings.model_dir) if settings.model_dir else None
    processed = data / "processed"
    if not (processed / "movies.parquet").exists():
        raise MissingInput(f"{processed / 'movies.parquet'} is missing: run the ingest stage first")
    (data / "embeddings").mkdir(parents=True, exist_ok=True)
    names = [name for name in SETS
             if name == "media" or (catalog and (data / "synthetic" / "media_catalog.parquet").exists())]
    started = time.perf_counter()
    plans = {name: plan_set_task(str(data), name, model, settings.embed_shard_rows, shards) for name in names}
    todo = [shard for _, pending in plans.values() for shard in pending]
    if pool:
        run_on_pool(pool, [Shard.of(s) for s in todo], str(data), model)
    else:
        embed_shards_task(str(data), todo, model, settings.device, settings.embed_batch_size, model_dir,
                          settings.embed_precision, settings.embed_runtime)
    seconds = time.perf_counter() - started
    written = {name: index_set_task(str(data), name, every, pending, model, seconds, model_dir,
                                    settings.embed_precision)
               for name, (every, pending) in plans.items()}
    users = user_vectors_task.with_options(result_storage=result_storage(data))(
        str(processed / "ratings.parquet"), written["media"], str(data / "embeddings" / "users.h5"))
    return {**written, "users": users}


def shard_deployment(pool: str) -> str:
    return f"{SHARD_FLOW}/{pool}"


def check_pool(pool: str):
    """The pool's embed-shard deployment, which must exist on the Prefect server (else the stage would
    wait forever)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(shard_deployment(pool))
        except ObjectNotFound:
            raise PipelineError(f"no deployment {shard_deployment(pool)!r} on the Prefect server: register it with "
                                "`python -m deployments.deploy` (prefect.yaml has one per pool)") from None


def run_on_pool(pool: str, shards: list[Shard], data_dir: str, model: str) -> None:
    """One flow run per shard on the pool, submitted at once; a run that ends Failed or Crashed
    (a lost worker) is submitted again, up to SHARD_ATTEMPTS runs a shard."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    if not shards:
        return
    logger = get_run_logger()
    deployment, name = check_pool(pool), shard_deployment(pool)
    # A deployment whose workers see the data dir elsewhere (a container's volume) names it itself.
    own_data_dir = "data_dir" in deployment.parameters
    with get_client(sync_client=True) as client:
        in_flight = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))))
    attempts: dict[Shard, int] = {}
    running: dict = {}  # flow run id -> shard

    def parameters(shard: Shard) -> dict:
        return {"shard": shard.__dict__, "model": model, **({} if own_data_dir else {"data_dir": data_dir})}

    def submit(shard: Shard) -> None:
        attempts[shard] = attempts.get(shard, 0) + 1
        run = run_deployment(name, parameters=parameters(shard), timeout=0, as_subflow=True,
                             tags=[f"{shard.set}-shard-{shard.index}"])
        running[run.id] = shard

    # A run of the same shard still in flight (this flow was stopped and started again while its
    # shards ran on) is waited for, not doubled: two runs would write one part.
    for shard in shards:
        adopted = next((run for run in in_flight if {k: run.parameters.get(k) for k in parameters(shard)}
                        == parameters(shard)), None)
        if adopted:
            attempts[shard], running[adopted.id] = 1, shard
            logger.info("%s shard %s: flow run %s is still in flight; waiting for it", shard.set, shard.index,
                        adopted.name)
        else:
            submit(shard)
    logger.info("%s shard(s) on %s", len(shards), name)
    done, finished_runs = 0, []
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(POLL_S)
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(running)))):
                if not run.state or not run.state.is_final():
                    continue
                shard = running.pop(run.id)
                label = f"{shard.set} shard {shard.index}"
                if run.state.is_completed():
                    done += 1
                    finished_runs.append(str(run.id))
                    logger.info("%s done (flow run %s); %s/%s shards", label, run.name, done, len(shards))
                elif attempts[shard] < SHARD_ATTEMPTS:
                    logger.warning("%s: flow run %s ended %s; submitted again", label, run.name, run.state.name)
                    submit(shard)
                else:
                    raise PipelineError(f"{label} ended {run.state.name} in {attempts[shard]} runs on pool {pool} "
                                        f"(last: flow run {run.name}): see its logs in the Prefect UI")
    per_worker: dict[str, int] = {}
    for worker in shard_workers(list(finished_runs)).values():
        per_worker[worker] = per_worker.get(worker, 0) + 1
    logger.info("shards per worker: %s", ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items())) or "unknown")


def shard_workers(flow_runs: list) -> dict[str, str]:
    """flow run id -> the name of the worker that started it, from the workers' own events."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    if not flow_runs:
        return {}
    related = [f"prefect.flow-run.{run}" for run in flow_runs]
    workers: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.worker.submitted-flow-run"]),
                                              related=EventRelatedFilter(id=related)), limit=50)
        while True:
            for event in page.events:
                run = next((r.id.removeprefix("prefect.flow-run.") for r in event.related if r.id in related), None)
                if run:
                    workers[run] = event.resource.name or event.resource.id
            if not page.next_page:
                break
            page = client.read_events_page(page.next_page)
    return workers


@flow(name=SHARD_FLOW, log_prints=True)
def embed_shard_flow(shard: dict, model: str | None = None, data_dir: str | None = None,
                     device: Literal["auto", "cpu", "cuda"] | None = None, batch_size: int | None = None) -> dict:
    """One shard of an embedding set into its part file (embeddings/<set>/part-NNNNN.h5). Started by
    the embed flow on a work pool; a rerun resumes a partial part and skips nothing it need not."""
    settings = load_settings(data_dir=data_dir, model=model, device=device, embed_batch_size=batch_size)
    piece = Shard.of(shard)
    logger = get_run_logger()
    model_obj = load_model(settings.model, settings.device, settings.model_dir, settings.embed_precision,
                           settings.embed_runtime)
    label = f"{piece.set} shard {piece.index} ({piece.rows:,} texts)"
    counts = embed_shard(settings.data_dir / "embeddings", piece, model_obj, settings.model,
                         settings.embed_batch_size, Progress(lambda text: logger.info("%s: %s", label, text), "texts"))
    logger.info("%s: %s encoded (%s, %s), %s carried over, %s resumed", label, f"{counts['encoded']:,}",
                counts["device"], counts["precision"], f"{counts['carried_over']:,}", f"{counts['resumed']:,}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.embed", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--model", help=f"one of {', '.join(MODELS)}, or a local model folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="texts per encode call (default 256, MG_EMBED_BATCH_SIZE)")
    parser.add_argument("--no-catalog", action="store_true", help="do not embed the synthetic catalog")
    parser.add_argument("--on", metavar="POOL", help="embed the shards on this work pool's embed-shard deployment")
    parser.add_argument("--shards", type=int, help="split each set into N shards (default: MG_EMBED_SHARD_ROWS texts each)")
    args = parser.parse_args(argv)
    if args.shards is not None and args.shards < 1:
        parser.error("--shards must be at least 1")
    settings = cli_settings(data_dir=args.data_dir, model=args.model, device=args.device,
                            embed_batch_size=args.batch_size)

    def run() -> int:
        preflight(settings, embed=not args.on)
        with prefect_api(settings):
            written = embed_flow(str(settings.data_dir), settings.model, settings.device, settings.embed_batch_size,
                                 not args.no_catalog, args.on, args.shards)
        for name, path in written.items():
            print(f"{name:8} {path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
