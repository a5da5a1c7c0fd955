"""The `conveyor` command line: worker, enqueue, inspect, demo.

Errors print one line (``error: …``) and exit 2; no traceback for problems the user can fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable

import click
from click.core import ParameterSource

from conveyor.app import App
from conveyor.cli import observe_cmd  # noqa: F401  (registers inspect workers / metrics)
from conveyor.cli.autoscale import ScalePolicy, parse_range
from conveyor.cli.autoscale import autoscale as autoscale_workers
from conveyor.cli.dashboard import dashboard_command
from conveyor.cli.inspect_cmd import inspect_group, visible
from conveyor.cli.load import load_app
from conveyor.cli.worker import run_worker, supervise
from conveyor.cli.worker_metrics import SupervisorMetrics
from conveyor.errors import ConfigError, ConveyorError
from conveyor.producer import JobOptions
from conveyor.serde import MAX_DEPTH

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor", prog_name="conveyor")
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    help="The app as module:attribute (env CONVEYOR_APP).",
)
@click.option(
    "--url",
    envvar="CONVEYOR_URL",
    help="Store URL for inspect when no app is given (env CONVEYOR_URL).",
)
@click.option("-v", "--verbose", count=True, help="-v for info logs, -vv for debug.")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, url: str | None, verbose: int) -> None:
    """Conveyor: durable background jobs for Python."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def get_app() -> App:
        if app_spec:
            return load_app(app_spec)
        return App(url or "sqlite:///conveyor.db")

    ctx.obj = get_app


@cli.command("worker")
@click.argument("app_spec", metavar="APP")
@click.option(
    "-q",
    "--queues",
    default=None,
    help="Queues with weights, e.g. critical=6,default=3,low=1 "
    "[default: every queue the app's tasks declare, plus default].",
)
@click.option("--strict", is_flag=True, help="Take queues strictly in the order given.")
@click.option(
    "-c", "--concurrency", default=16, show_default=True, help="Jobs at once per process."
)
@click.option("-p", "--processes", default=1, show_default=True, help="Worker processes.")
@click.option("--grace", default=10.0, show_default=True, help="Seconds to finish jobs on stop.")
@click.option(
    "--lease",
    "lease_for",
    default=5.0,
    show_default=True,
    help="Lease seconds; a dead worker's jobs rerun after about this long.",
)
@click.option("--burst", is_flag=True, help="Exit when no job is ready.")
@click.option("--name", help="Worker name in leases and logs.")
@click.option("--no-scheduler", is_flag=True, help="Don't run the scheduler of periodic jobs here.")
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    help="Run between MIN and MAX processes, sized to the backlog (instead of -p).",
)
@click.option(
    "--scale-target",
    type=float,
    metavar="SECONDS",
    help="Add a process while the oldest ready job is older than this many seconds [1.0].",
)
@click.option(
    "--scale-idle",
    type=float,
    metavar="SECONDS",
    help="Retire a process after this many seconds idle [30].",
)
@click.option(
    "--scale-interval",
    type=float,
    metavar="SECONDS",
    help="Least seconds between two scaling changes [2.0].",
)
@click.option(
    "--scale-cpu-idle",
    type=float,
    metavar="SHARE",
    help="Least idle CPU share (0-1) to add a process; 0 ignores the CPU [0.2].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve /metrics (Prometheus), /healthz and /readyz on this port (conveyor[metrics]).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="The address the metrics server binds.",
)
@click.pass_context
def worker_cmd(
    ctx: click.Context,
    app_spec: str,
    queues: str | None,
    strict: bool,
    concurrency: int,
    processes: int,
    grace: float,
    lease_for: float,
    burst: bool,
    name: str | None,
    no_scheduler: bool,
    autoscale: str | None,
    scale_target: float | None,
    scale_idle: float | None,
    scale_interval: float | None,
    scale_cpu_idle: float | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run workers for APP (module:attribute)."""
    if processes < 1:
        raise click.BadParameter("must be >= 1", param_hint="--processes")
    if metrics_port is not None and autoscale is not None:
        raise ConfigError(
            "--metrics-port with --autoscale is not supported yet; use -p N or one process"
        )
    scaling = {
        "target": scale_target,
        "idle": scale_idle,
        "interval": scale_interval,
        "cpu_idle": scale_cpu_idle,
    }
    given = {k: v for k, v in scaling.items() if v is not None}
    policy = _scale_policy(ctx, autoscale, burst, given)
    if processes > 1 or policy is not None:
        group = ctx.parent.params if ctx.parent is not None else {}
        head = ["-v"] * int(group.get("verbose") or 0)
        for flag, key in (("--app", "app_spec"), ("--url", "url")):
            if group.get(key):
                head += [flag, str(group[key])]
        child = [app_spec, *(["--queues", queues] if queues else []),
                 "--concurrency", str(concurrency), "--grace", str(grace),
                 "--lease", str(lease_for)]  # fmt: skip
        child += ["--strict"] * strict + ["--burst"] * burst + (["--name", name] if name else [])
        child += ["--no-scheduler"] * no_scheduler
        if policy is not None:
            ctx.exit(autoscale_workers(load_app(app_spec), queues, head, child, policy))
        metrics = None
        if metrics_port is not None:
            metrics = SupervisorMetrics(load_app(app_spec), queues, metrics_host, metrics_port)
        ctx.exit(supervise(head, child, processes, metrics=metrics))
    app = load_app(app_spec)
    options: dict[str, object] = {
        "concurrency": concurrency,
        "strict": strict,
        "grace": grace,
        "lease_for": lease_for,
        "burst": burst,
        "name": name,
        "scheduler": not no_scheduler,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
    }
    run_worker(app, options=options, queues=queues)


def _scale_policy(
    ctx: click.Context, spec: str | None, burst: bool, options: dict[str, float]
) -> ScalePolicy | None:
    """The `--autoscale` policy, or None without it; a click error naming the bad option."""
    if spec is None:
        if options:
            flag = "--scale-" + next(iter(options)).replace("_", "-")
            raise click.UsageError(f"{flag} needs --autoscale MIN:MAX")
        return None
    if ctx.get_parameter_source("processes") is not ParameterSource.DEFAULT:
        raise click.UsageError(
            "--autoscale and -p/--processes don't go together: autoscale decides the "
            "number of processes (drop -p)"
        )
    if burst:
        raise click.UsageError("--autoscale and --burst don't go together")
    try:
        low, high = parse_range(spec)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--autoscale") from None
    if "interval" in options:  # look at least as often as a change may happen
        options = {**options, "poll": min(1.0, max(options["interval"], 0.05))}
    try:
        return ScalePolicy(low, high, **options)
    except ConfigError as exc:
        name = next((k for k in options if f"autoscale {k} " in str(exc)), None)
        hint = "--scale-" + name.replace("_", "-") if name else "--autoscale"
        raise click.BadParameter(str(exc), param_hint=hint) from None


@cli.command("enqueue")
@click.argument("task_name", metavar="TASK")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue")
@click.option("--priority", type=int)
@click.option("--delay", type=float, help="Seconds before it may run.")
@click.option("--key", help="Unique key.")
@click.option("--wait", "wait_for", type=float, help="Wait this many seconds for the result.")
@click.pass_obj
def enqueue_cmd(
    get_app: Callable[[], App],
    task_name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    key: str | None,
    wait_for: float | None,
) -> None:
    """Enqueue one job of TASK (needs --app)."""
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise click.BadParameter(
            f"--args/--kwargs nest deeper than {MAX_DEPTH} levels; pass flatter values"
        ) from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    app = get_app()
    task = app.registry.get(task_name)
    opts = task.defaults.merged(JobOptions(queue=queue, priority=priority, delay=delay, key=key))

    async def main() -> None:
        try:
            handle = await task._enqueue(tuple(args), kwargs, opts)
            click.echo(handle.id + ("" if handle.created else " (existing job with that key)"))
            if wait_for is not None:
                click.echo(json.dumps(await handle.result(timeout=wait_for)))
        finally:
            await app.aclose()

    asyncio.run(main())


@cli.command("demo")
@click.option("--jobs", default=5000, show_default=True, help="How many jobs to enqueue.")
@click.option("-p", "--processes", default=2, show_default=True, help="Worker processes.")
@click.option(
    "-c", "--concurrency", default=32, show_default=True, help="Jobs at once per process."
)
@click.option(
    "--db", default="conveyor-demo.db", show_default=True, help="SQLite file (recreated)."
)
def demo_cmd(jobs: int, processes: int, concurrency: int, db: str) -> None:
    """Run a realistic mixed workload on SQLite with live progress."""
    from conveyor.cli.demo import run_demo

    run_demo(jobs=jobs, processes=processes, concurrency=concurrency, db=db)


cli.add_command(inspect_group)
cli.add_command(dashboard_command)


def main() -> None:
    """Entry point: run the CLI, turning Conveyor errors into one line."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConveyorError as exc:
        # The message may quote stored text (a job's error): no escape codes to the terminal.
        click.echo(f"error: {visible(exc)}", err=True)
        sys.exit(2)
