"""The `rod` console script: one group, each service contributes its commands.

A command prints its result on stdout and logs on stderr only at warning and above, unless
`rod -v <command>`; the commands that run the system (`rod up`, `rod distribute`) are servers
and keep their info log.
"""

from __future__ import annotations

import logging
import threading

import click

import services.replayers  # noqa: F401 - installs the dead-letter replays
from services import token_cli
from services.audit import cli as audit_cli
from services.distributor import cli as distributor_cli
from services.extract import cli as extract_cli
from services.kernel import kafka
from services.kernel import logging as rod_logging
from services.kernel.broker import DEFAULT_PORT, LocalBroker, free_port
from services.kernel.settings import Settings, private_data_dir
from services.kernel.text import is_unicode
from services.operations import cli as operations_cli
from services.operations import deadletter_cli
from services.registrar import cli as registrar_cli
from services.registrar.transparency import cli as log_cli


class _Rod(click.Group):
    """The root group: no command ever sees an argument that is not valid text."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # undecodable bytes in argv arrive as lone surrogates; an event or action could not hold them
        broken = [n for n, arg in enumerate(args, 1) if not is_unicode(arg)]
        if broken:
            raise click.UsageError(f"TEXT_NOT_UNICODE: argument {broken[0]} is not valid text (Unicode)", ctx)
        return super().parse_args(ctx, args)


@click.group(cls=_Rod)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the embedded default keeps its files (default: ROD_DATA_DIR or ./var).")
@click.option("-v", "--verbose", is_flag=True,
              help="Also log what the command does (info lines on stderr); by default only warnings.")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None, verbose: bool) -> None:
    """rodchain: the education result register as an event-sourced chain."""
    rod_logging.configure(level=logging.INFO if verbose else logging.WARNING)
    settings = Settings.from_env(data_dir=data_dir)
    private_data_dir(settings.data_dir)
    ctx.obj = {"settings": settings}


COMPONENTS = ("relay", "log", "distributor", "audit", "extract", "monitor", "http", "impact")


def _components(_ctx: click.Context, _param: click.Parameter, text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or not names:
        raise click.BadParameter(f"unknown component {', '.join(unknown) or '(none)'}; "
                                 f"choose from {','.join(COMPONENTS)}")
    return names


@main.command()
@click.option("--port", default=8080, show_default=True, help="HTTP port of the API.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Same as the global --data-dir.")
@click.option("--components", "wanted", default=",".join(COMPONENTS), show_default=True, callback=_components,
              help="Which parts run in this process, comma-separated: run several `rod up` with "
                   "different parts to spread the system over processes (e.g. http,relay,impact,monitor "
                   "and distributor and audit). Without ROD_KAFKA_BOOTSTRAP a process that is not "
                   "given every part joins the local broker another `rod up` started on the data dir.")
@click.option("--metrics-port", type=int, default=None,
              help="Serve this process's /metrics on this port (for a process without http).")
@click.pass_context
def up(ctx: click.Context, port: int, data_dir: str | None, wanted: tuple[str, ...],
       metrics_port: int | None) -> None:
    """Start the system (or the parts named by --components) in the foreground; Ctrl-C stops it cleanly."""
    # the running system's parts are imported here: other commands (rod topics) start faster without them
    from services.app import http_components
    from services.audit.service import AuditService
    from services.distributor.loop import Distributor
    from services.extract.service import ExtractService
    from services.kernel.consume import stop_on_signals
    from services.operations import metrics as operations_metrics
    from services.operations.actions import ActionLog
    from services.operations.overview import Monitor
    from services.operations.store import OperationsStore
    from services.registrar.relay import Relay
    from services.registrar.store import EventStore
    from services.registrar.transparency.service import LogService

    rod_logging.configure(level=logging.INFO)  # a server: its log tells what it does
    settings = ctx.obj["settings"]
    if data_dir:
        settings = Settings.from_env(data_dir=data_dir)
        private_data_dir(settings.data_dir)
    log = rod_logging.get_logger("up")
    if "http" in wanted and free_port(port) != port:
        raise click.ClickException(f"port {port} is taken on 127.0.0.1: choose another with --port")
    if metrics_port is not None and free_port(metrics_port) != metrics_port:
        raise click.ClickException(f"port {metrics_port} is taken on 127.0.0.1: choose another")
    stop = threading.Event()
    asked_to_stop = threading.Event()  # stop without this: a component ended by itself

    stop_on_signals(asked_to_stop, stop)

    broker = None
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None and set(wanted) != set(COMPONENTS) and settings.bootstrap_file.exists():
        bootstrap = settings.bootstrap_file.read_text().strip()  # a part: the broker another rod up runs
        click.echo(f"joining the local broker on {bootstrap} (from {settings.bootstrap_file})")
    if bootstrap is None:
        broker = LocalBroker(free_port(DEFAULT_PORT), log_path=settings.data_dir / "broker.log")
        bootstrap = broker.start()
        settings.bootstrap_file.write_text(bootstrap + "\n")
        click.echo(f"local broker on {bootstrap} (memory storage; written to {settings.bootstrap_file})")
    try:
        kafka.ensure_topics(settings, bootstrap)
        if "http" in wanted:  # the console records actions; publish those taken while it was down
            operations = OperationsStore(settings.database_urls["operations"])
            ActionLog(operations, settings, bootstrap).publish_pending()
        parts: dict[str, object] = {}  # what needs closing after its thread ended
        runs: list[tuple[str, object]] = []
        if "relay" in wanted:
            parts["relay"] = Relay(EventStore(settings.database_urls["registrar"]), settings, bootstrap)
        if "log" in wanted:
            parts["log"] = LogService(settings, bootstrap)
        if "distributor" in wanted:
            parts["distributor"] = Distributor(settings, bootstrap)
        if "audit" in wanted:
            parts["audit"] = AuditService(settings, bootstrap)
        if "extract" in wanted:
            parts["extract"] = ExtractService(settings, bootstrap)
        runs += [(name, part.run) for name, part in parts.items()]  # type: ignore[attr-defined]
        if "monitor" in wanted:
            # samples the groups for `rod topics`' window; /metrics exports its last overview
            monitor = Monitor(settings, bootstrap)
            operations_metrics.install(monitor, settings)
            runs.append(("monitor", monitor.run))
        if "http" in wanted or "impact" in wanted:
            runs += http_components(settings, bootstrap, port, [n for n in ("http", "impact") if n in wanted])
        if metrics_port is not None:  # behind the same limits and Host check as the API
            from prometheus_client import make_asgi_app

            from services.kernel.server import HttpServer

            runs.append(("metrics", HttpServer(make_asgi_app(), metrics_port).run))
        # Each component runs until `stop` is set; add new services here.
        workers = [threading.Thread(target=run, args=(stop,), name=name, daemon=True) for name, run in runs]
        for worker in workers:
            worker.start()
        log.info("rodchain_up", bootstrap=bootstrap, data_dir=str(settings.data_dir), components=list(wanted))
        front = f"HTTP API on http://127.0.0.1:{port}" if "http" in wanted else f"running {','.join(wanted)}"
        click.echo(f"rodchain up: {front}, data in {settings.data_dir}; Ctrl-C to stop")
        while not stop.wait(1):
            pass
        click.echo("stopping")
        for worker in workers:
            worker.join(timeout=30)
        for part in parts.values():
            part.close()  # type: ignore[attr-defined]
    finally:
        if broker:
            broker.stop()
            settings.bootstrap_file.unlink(missing_ok=True)
    if not asked_to_stop.is_set():
        raise click.ClickException("stopped because a component failed; see the log above")
    click.echo("stopped")


for command in (
    registrar_cli.COMMANDS + distributor_cli.COMMANDS + audit_cli.COMMANDS + operations_cli.COMMANDS
    + deadletter_cli.COMMANDS + extract_cli.COMMANDS + token_cli.COMMANDS + log_cli.COMMANDS
):
    main.add_command(command)
