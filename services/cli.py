"""The `rod` console script: one group, each service contributes its commands."""

from __future__ import annotations

import signal
import threading

import click

from services.audit import cli as audit_cli
from services.distributor import cli as distributor_cli
from services.kernel import kafka
from services.kernel import logging as rod_logging
from services.kernel.broker import DEFAULT_PORT, LocalBroker, free_port
from services.kernel.settings import Settings
from services.operations import cli as operations_cli
from services.operations import deadletter_cli
from services.registrar import cli as registrar_cli


@click.group()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the embedded default keeps its files (default: ROD_DATA_DIR or ./var).")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None) -> None:
    """rodchain: the education result register as an event-sourced chain."""
    rod_logging.configure()
    settings = Settings.from_env(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ctx.obj = {"settings": settings}


@main.command()
@click.option("--port", default=8080, show_default=True, help="HTTP port of the API.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Same as the global --data-dir.")
@click.pass_context
def up(ctx: click.Context, port: int, data_dir: str | None) -> None:
    """Start the whole system in the foreground; Ctrl-C stops it cleanly."""
    # the running system's parts are imported here: other commands (rod topics) start faster without them
    from services.audit.service import AuditService
    from services.distributor.loop import Distributor
    from services.operations import metrics as operations_metrics
    from services.operations.actions import ActionLog
    from services.operations.overview import Monitor
    from services.operations.store import OperationsStore
    from services.registrar import serve as registrar_serve
    from services.registrar.relay import Relay
    from services.registrar.store import EventStore

    settings = Settings.from_env(data_dir=data_dir) if data_dir else ctx.obj["settings"]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = rod_logging.get_logger("up")
    if free_port(port) != port:
        raise click.ClickException(f"port {port} is taken on 127.0.0.1: choose another with --port")
    stop = threading.Event()
    asked_to_stop = threading.Event()  # stop without this: a component ended by itself

    def on_signal(*_: object) -> None:
        asked_to_stop.set()
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)

    broker = None
    bootstrap = settings.kafka_bootstrap
    if bootstrap is None:
        broker = LocalBroker(free_port(DEFAULT_PORT), log_path=settings.data_dir / "broker.log")
        bootstrap = broker.start()
        settings.bootstrap_file.write_text(bootstrap + "\n")
        click.echo(f"local broker on {bootstrap} (memory storage; written to {settings.bootstrap_file})")
    try:
        kafka.ensure_topics(settings, bootstrap)
        operations = OperationsStore(settings.database_urls["operations"])
        ActionLog(operations, settings, bootstrap).publish_pending()  # actions taken while it was down
        relay = Relay(EventStore(settings.database_urls["registrar"]), settings, bootstrap)
        distributor = Distributor(settings, bootstrap)
        audit = AuditService(settings, bootstrap)

        # samples the groups for `rod topics`' window; /metrics exports its last overview
        monitor = Monitor(settings, bootstrap)
        operations_metrics.install(monitor, settings)
        # Each component runs until `stop` is set; add new services here.
        workers = [
            threading.Thread(target=relay.run, args=(stop,), name="relay", daemon=True),
            threading.Thread(target=distributor.run, args=(stop,), name="distributor", daemon=True),
            threading.Thread(target=audit.run, args=(stop,), name="audit", daemon=True),
            threading.Thread(target=monitor.run, args=(stop,), name="monitor", daemon=True),
            *(threading.Thread(target=run, args=(stop,), name=name, daemon=True)
              for name, run in registrar_serve.components(settings, bootstrap, port)),
        ]
        for worker in workers:
            worker.start()
        log.info("rodchain_up", bootstrap=bootstrap, data_dir=str(settings.data_dir))
        click.echo(f"rodchain up: HTTP API on http://127.0.0.1:{port}, data in {settings.data_dir}; "
                   "Ctrl-C to stop")
        while not stop.wait(1):
            pass
        click.echo("stopping")
        for worker in workers:
            worker.join(timeout=30)
        relay.close()
        distributor.close()
        audit.close()
    finally:
        if broker:
            broker.stop()
            settings.bootstrap_file.unlink(missing_ok=True)
    if not asked_to_stop.is_set():
        raise click.ClickException("stopped because a component failed; see the log above")
    click.echo("stopped")


for command in (
    registrar_cli.COMMANDS + distributor_cli.COMMANDS + audit_cli.COMMANDS + operations_cli.COMMANDS
    + deadletter_cli.COMMANDS
):
    main.add_command(command)
