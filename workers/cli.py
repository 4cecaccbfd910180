"""The ``tts-worker`` command line: enqueue jobs, follow them, read them, cancel them, simulate,
demo.

Commands only: enqueueing and job state live in :mod:`tasks.client`, the live view in
:mod:`workers.progress`, the demo in :mod:`workers.demo`. Arguments are checked with the same
:mod:`tasks.nanogpt.validation` functions the tasks use, so the CLI refuses exactly what a worker
would. Enqueueing needs the broker only, never ``NANOGPT_API_KEY``.

Exit codes: 0 done; 1 the job failed, is unknown, or the broker/Redis is unreachable; 2 bad
input or configuration; 130 interrupted. Errors are one line on stderr; with ``--json`` stdout
holds one JSON document and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import uuid
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import pydantic
import typer
from rich.console import Console
from typer.core import TyperGroup

from tasks.client import CancelNotTaken, Client, Enqueued, Unreachable
from tasks.config.settings import Settings, get_settings
from tasks.errors import InvalidInput
from tasks.nanogpt import validation
from tasks.record.states import UNKNOWN_JOB, Status
from tasks.sweeps import granting
from workers import demo as demo_module
from workers import simulator
from workers.progress import WAIT_SLACK_S, WaitTimeout, follow, outcome_lines

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

T = TypeVar("T")


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing argument, an unknown option) as one line on stderr, exit code 2."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except typer.TyperException as exc:  # Click's errors; typer exports it from 0.27.2
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "tts-worker"
            hint = f" (see {where} --help)" if ctx is not None else ""
            typer.echo(f"{where}: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="tts-worker",
    help="Enqueue NanoGPT text-to-speech jobs, follow them, and try the whole pipeline locally.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Model = Annotated[
    str, typer.Option("--model", "-m", help="NanoGPT model, e.g. Elevenlabs-Turbo-V2.5.")
]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")]
NotifyUrl = Annotated[
    str | None, typer.Option("--notify-url", help="Where the signed webhook goes when it ends.")
]
JobIdOption = Annotated[str | None, typer.Option("--job-id", help="Your own job id.")]
Timeout = Annotated[
    float | None,
    typer.Option("--timeout", help="With --wait: give up after this many seconds.", min=0),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document, nothing else.")]


def main() -> None:
    """Entry point of the ``tts-worker`` console script."""
    app()


@app.callback(invoke_without_command=True)
def _top(ctx: typer.Context) -> None:
    # Without a command, show the commands rather than an error.
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
def speak(
    text: Annotated[str, typer.Argument(help="The text to speak.")],
    model: Model,
    voice: Annotated[str | None, typer.Option("--voice", help="Voice name.")] = None,
    wait: Wait = False,
    notify_url: NotifyUrl = None,
    job_id: JobIdOption = None,
    timeout: Timeout = None,
    as_json: AsJson = False,
    no_reuse: Annotated[
        bool,
        typer.Option("--no-reuse", help="Never answered by an identical request's audio."),
    ] = False,
) -> None:
    """Enqueue tts.submit_tts; prints the job id."""
    request = _valid(
        lambda: validation.submit_request(text, model, voice=voice, reuse=not no_reuse)
    )
    url = _valid(lambda: validation.notify_url(notify_url))
    jid = _valid(lambda: validation.job_id(job_id)) if job_id is not None else str(uuid.uuid4())
    with _client() as client:
        sent = _reach(lambda: client.submit(request, notify_url=url, job_id=jid))
        _finish(client, sent, wait=wait, timeout_s=timeout, as_json=as_json)


@app.command()
def poll(
    run_id: Annotated[str, typer.Argument(help="The runId NanoGPT answered with (202).")],
    model: Model,
    cost: Annotated[float | None, typer.Option("--cost", help="The ticket's cost.")] = None,
    payment_source: Annotated[
        str | None, typer.Option("--payment-source", help="The ticket's paymentSource.")
    ] = None,
    wait: Wait = False,
    notify_url: NotifyUrl = None,
    job_id: JobIdOption = None,
    timeout: Timeout = None,
    as_json: AsJson = False,
) -> None:
    """Enqueue tts.poll_tts for a run submitted elsewhere; prints the job id (the run id unless
    --job-id is given)."""
    request = _valid(
        lambda: validation.poll_request(
            run_id, model, cost=cost, payment_source=payment_source, is_api_request=True
        )
    )
    url = _valid(lambda: validation.notify_url(notify_url))
    if job_id is None:  # the task's default too: the run id names the job
        try:
            jid = validation.job_id(run_id)
        except InvalidInput as exc:
            _fail(f"the run id cannot be the job id ({exc.message}); pass --job-id", EXIT_USAGE)
    else:
        jid = _valid(lambda: validation.job_id(job_id))
    with _client() as client:
        sent = _reach(lambda: client.poll(request, notify_url=url, job_id=jid))
        _finish(client, sent, wait=wait, timeout_s=timeout, as_json=as_json)


@app.command()
def status(
    job_id: Annotated[
        str | None, typer.Argument(help="The job id speak or poll printed; none: the budget.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Show a job's stored state (exit code 1 if there is no such job); without a job id, the
    fleet's NanoGPT budget."""
    if job_id is None:
        _budget_status(as_json)
        return
    jid = _valid(lambda: validation.job_id(job_id))
    with _client() as client:
        job = _reach(lambda: client.get_job(jid))
    if job is None:
        _fail(f"no job {jid} (never enqueued, or its record expired)", EXIT_FAILED)
    if as_json:
        _print_json(job.public())
        return
    rows: list[tuple[str, object]] = [
        ("status", job.status),
        ("model", job.model),
        ("run id", job.run_id),
        ("polls", job.polls),
    ]
    if job.status == Status.POLLING and job.queue_position is not None:
        rows.append(("queue", job.queue_position))
    for label, value in rows:
        if value is not None:
            typer.echo(f"{label:<9}{value}")
    if job.outcome is not None:
        for line in outcome_lines(job):
            typer.echo(line)
    if job.notify_url:
        typer.echo(f"{'webhook':<9}{job.notify_state or 'pending'} ({job.notify_url})")


def _budget_status(as_json: bool) -> None:
    with _client() as client:
        snap = _reach(client.budget)
        lanes, complete = _reach(client.lanes)
    if as_json:
        _print_json(
            {
                **dataclasses.asdict(snap),
                "lanes": [dataclasses.asdict(lane) for lane in lanes],
                "lanes_complete": complete,
            }
        )
        return
    if snap.rate_per_s <= 0:
        typer.echo("budget   off (TTS_UPSTREAM_RATE=0): every NanoGPT call is made at once")
        _lane_lines(lanes, complete)
        return
    lowered = "" if snap.current_rate_per_s >= snap.rate_per_s else " (lowered after 429s)"
    rows = [
        ("budget", f"{snap.rate_per_s:g} calls/s, burst {snap.burst} (TTS_UPSTREAM_RATE)"),
        ("rate now", f"{snap.current_rate_per_s:.3g} calls/s{lowered}"),
        ("tokens", snap.tokens_free),
        ("waiting", f"{snap.polls_due} polls due, {snap.submits_waiting} submits"),
    ]
    for label, value in rows:
        typer.echo(f"{label:<9}{value}")
    _lane_lines(lanes, complete)


def _lane_lines(lanes: list[granting.LaneWaiting], complete: bool) -> None:
    """The waiting jobs by lane (priority, tenant), most urgent first."""
    for lane in lanes:
        who = f"{lane.priority} {lane.tenant or '(no tenant)'}"
        typer.echo(f"{'lane':<9}{who}: {lane.polls_due} polls due, {lane.submits_waiting} submits")
    if not complete:
        typer.echo(f"{'':<9}(the earliest {granting.CANDIDATES} of each kind)")


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job id speak or poll printed.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a worker to take it.", min=0)
    ] = 10.0,
) -> None:
    """Cancel a job that has not ended (it fails with CANCELLED; its webhook goes out). Prints
    cancelled, already ended: <status>, or unknown job (exit code 1)."""
    jid = _valid(lambda: validation.job_id(job_id))
    with _client() as client:
        try:
            said = _reach(lambda: client.cancel(jid, timeout_s=timeout))
        except CancelNotTaken as exc:
            _fail(str(exc), EXIT_FAILED)
    typer.echo(said)
    if said == UNKNOWN_JOB:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def simulate(
    port: Annotated[int, typer.Option("--port", help="TCP port.", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    api_key: Annotated[
        str, typer.Option("--api-key", help="The key the simulator accepts.")
    ] = simulator.DEFAULT_API_KEY,
    rate: Annotated[
        float,
        typer.Option(
            "--rate",
            envvar="TTS_SIM_RATE",
            min=0.0,
            help=(
                "Requests per second answered across /api/*, as NanoGPT's account-wide limit"
                " (25 there); more get 429 with Retry-After: 1. 0 or empty: no limit."
            ),
        ),
    ] = 0.0,
) -> None:
    """Run the NanoGPT simulator in the foreground (Ctrl-C stops it), for your own tests."""
    # Click reads TTS_SIM_RATE (an empty value counts as unset): the simulator is a dev tool
    # configured by its options, not part of the worker's Settings.
    if rate != 0 and not 1 <= rate < math.inf:
        _fail(
            f"--rate (TTS_SIM_RATE) must be 0 for no limit, or at least 1; got {rate}", EXIT_USAGE
        )
    try:
        simulator.serve(host, port, api_key=api_key, rate_limit_per_s=rate or None)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_FAILED)


@app.command()
def demo(
    embedded_redis: Annotated[
        bool,
        typer.Option(
            "--embedded-redis", help="Use a private redis-server even if one is configured."
        ),
    ] = False,
) -> None:
    """One job end to end: Redis, the simulator (or NanoGPT), a worker, live progress, webhook."""
    _settings()  # a bad environment is reported before anything starts
    code = demo_module.run(_console(), _console(stderr=True), embedded_redis=embedded_redis)
    raise typer.Exit(code)


def _finish(
    client: Client, sent: Enqueued, *, wait: bool, timeout_s: float | None, as_json: bool
) -> None:
    """Print what was enqueued, or with ``wait`` follow the job and print how it ended."""
    if as_json and not wait:
        _print_json(sent.as_dict())
        return
    if not as_json:
        typer.echo(sent.job_id)
    if not wait:
        return
    budget_s = timeout_s if timeout_s is not None else client.settings.poll_timeout_s + WAIT_SLACK_S
    try:
        job = follow(
            lambda: _reach(lambda: client.get_job(sent.job_id)),
            timeout_s=budget_s,
            console=None if as_json else _console(),
        )
    except WaitTimeout as exc:
        _fail(f"job {sent.job_id}: {exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        _fail(
            f"stopped following; the job goes on: tts-worker status {sent.job_id}", EXIT_INTERRUPTED
        )
    if as_json:
        _print_json(job.public())
    else:
        for line in outcome_lines(job):
            typer.echo(line)
    if job.status != Status.COMPLETED:
        raise typer.Exit(EXIT_FAILED)


def _console(*, stderr: bool = False) -> Console:
    # Plain text: no markup parsing of job text or URLs, no wrapping of long paths.
    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        return get_settings()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        _fail(f"bad configuration: {where}: {first['msg']}", EXIT_USAGE)


def _client() -> Client:
    return Client(_settings())


def _valid(check: Callable[[], T]) -> T:
    """Run a tasks.nanogpt.validation check; bad input ends the command with exit code 2."""
    try:
        return check()
    except InvalidInput as exc:
        _fail(exc.message, EXIT_USAGE)


def _reach(call: Callable[[], T]) -> T:
    """Call the broker or Redis; if it is not there, end the command with exit code 1."""
    try:
        return call()
    except Unreachable as exc:
        _fail(str(exc), EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"tts-worker: {message}", err=True)
    raise typer.Exit(code)


def _print_json(document: dict[str, Any]) -> None:
    typer.echo(json.dumps(document, sort_keys=True))
