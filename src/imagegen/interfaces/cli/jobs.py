"""``imagegen cancel`` and ``imagegen worker``: background jobs from the command line.

Importing this module registers them on the ``imagegen`` app (``imagegen.interfaces.cli``
does); ``imagegen generate --background`` queues a job.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any

import typer

from imagegen.interfaces.cli.app import JsonFlag, _emit_json, _run, app, err, out


@app.command()
def cancel(
    generation_id: Annotated[str, typer.Argument(help="A queued or running generation.")],
    as_json: JsonFlag = False,
) -> None:
    """Cancel a queued or running generation; its reserved credits are released."""
    result = _run(lambda client: client.cancel(generation_id))
    if as_json:
        _emit_json(result.to_dict())
    else:
        out.print(f"{result.id} {result.status}")


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Jobs run at once (default: IMAGEGEN_WORKER_CONCURRENCY).", min=1),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run the jobs waiting now, then exit.")
    ] = False,
) -> None:
    """Run background jobs (generate --background, POST /v1/generations with background),
    retry those whose worker died, and sweep expired credit reservations. SIGTERM or Ctrl-C
    stops it after the running jobs finish (or their drain time runs out)."""

    async def work(client: Any) -> int:
        from imagegen.bootstrap.jobs import build_worker

        runner = build_worker(client.container, concurrency=concurrency)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, runner.stop)
        err.print(f"imagegen worker {runner.worker_id} started", markup=False)
        return await runner.run(once=once)

    finished = _run(work)
    err.print(f"worker stopped after {finished} job{'s' if finished != 1 else ''}", markup=False)
