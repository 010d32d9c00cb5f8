"""labgrid places as farm devices.

A place is acquired from the labgrid coordinator for the duration of its runs
(`LabgridDevice.hold`), its NetworkService resource names the board's ssh address, and the runs
go through fwedge's ssh device (argument lists, timeouts, a remote temp folder, a hash check of
what runs). The place is always released: after the last run, after a failed one, and on
Ctrl-C or SIGTERM.

labgrid's client library (`labgrid.remote.client.start_session`) keeps one gRPC session with
the coordinator; it is asyncio code, so each coordinator's session runs its event loop on a
thread of its own, and the farm's device threads call into it (`_Client`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm.device import Device, DeviceRunError, device_kind
from fwedge.device_farm.results import DeviceRun
from fwedge.device_farm.ssh import SshDevice
from fwedge.errors import DeviceError, MissingDependencyError, missing_dependency

log = logging.getLogger(__name__)

DEFAULT_PORT = 20408
# HOST:PORT, the coordinator's gRPC address; host as in the ssh device (no option-like or shell
# characters), or a bracketed IPv6 address.
COORDINATOR = re.compile(r"^(?!-)[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
# Place names fwedge accepts from a coordinator: they become device names in results and reports.
PLACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# labgrid's own tag syntax (labgrid.remote.common.TAG_KEY and TAG_VAL), as key=value.
TAG = re.compile(r"^[a-z][a-z0-9_]+=[a-z0-9_]*$")
NETWORK_SERVICE = "NetworkService"
POLL_SECONDS = 1.0
RPC_TIMEOUT = 30.0

FREE = "free"
OFFLINE = "offline"


def check_coordinator(address: str, where: str) -> str:
    """`address` as HOST:PORT (labgrid's default port added when missing).

    Raises:
        DeviceError: empty, or not a host name or address with an optional port.
    """
    if not address:
        raise DeviceError(f"{where}: no labgrid coordinator: give coordinator = \"HOST:PORT\" (or "
                          "--labgrid-coordinator), or set LG_COORDINATOR")
    if not isinstance(address, str) or not COORDINATOR.fullmatch(address):
        raise DeviceError(f"{where}: labgrid coordinator {str(address)[:120]!r} is not HOST:PORT")
    if address.startswith("["):
        _, _, rest = address.partition("]")
        port = rest[1:]
    else:
        _, _, port = address.partition(":")
    if port and not 0 < int(port) < 65536:
        raise DeviceError(f"{where}: labgrid coordinator {address!r}: port must be 1..65535")
    return address if port else f"{address}:{DEFAULT_PORT}"


def check_tags(tags: list[str], where: str) -> dict[str, str]:
    """["board=rpi4", ...] as a dict.

    Raises:
        DeviceError: a tag is not key=value in labgrid's syntax.
    """
    parsed = {}
    for tag in tags:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise DeviceError(f"{where}: place tag {str(tag)[:80]!r} is not key=value "
                              "(key [a-z][a-z0-9_]+, value [a-z0-9_]*, as labgrid's set-tags takes)")
        key, value = tag.split("=", 1)
        parsed[key] = value
    return parsed


@dataclass(frozen=True)
class PlaceView:
    """What the coordinator says of one place.

    Attributes:
        name: the place name.
        tags: its tags.
        acquired: "host/user" of the session holding it, or None.
        services: the NetworkService resources its matches find: (resource name, params, avail).
        unmatched: a match that finds no resource (its exporter is gone), or None.
    """

    name: str
    tags: dict[str, str]
    acquired: str | None
    services: tuple[tuple[str, dict, bool], ...]
    unmatched: str | None

    def state(self) -> str:
        """"free", "acquired by HOST/USER", or "offline (...)"."""
        if self.unmatched:
            return f"{OFFLINE} (match {self.unmatched} finds no resource: is its exporter running?)"
        if not self.services:
            return f"{OFFLINE} (no NetworkService resource matched)"
        if not all(avail for _, _, avail in self.services):
            return f"{OFFLINE} (NetworkService not available)"
        if self.acquired:
            return f"acquired by {self.acquired}"
        return FREE


class _RootLogFilter(logging.Filter):
    """labgrid's client logs its connection errors (with tracebacks) on the root logger; fwedge
    turns them into one-line DeviceErrors instead, so below -vv they are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}labgrid{os.sep}" not in record.pathname:
            return True
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_FILTER = _RootLogFilter()


def _import_labgrid():
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from labgrid.remote.client import start_session
        from labgrid.remote.generated import labgrid_coordinator_pb2
    except ModuleNotFoundError as exc:
        raise (missing_dependency(exc) or DeviceError(f"labgrid devices: {exc}")) from exc
    return start_session, labgrid_coordinator_pb2


class _Client:
    """One labgrid client session with one coordinator; its event loop runs on its own thread.

    Every method blocks the calling thread until the coordinator answered (or RPC_TIMEOUT).
    """

    def __init__(self, address: str, timeout: float = RPC_TIMEOUT):
        self.address = address
        self._start_session, self._pb2 = _import_labgrid()
        logging.getLogger().addFilter(_FILTER)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.session = None
        self.users = 0
        thread = threading.Thread(target=self._main, name=f"labgrid {address}", daemon=True)
        thread.start()
        if not self._ready.wait(timeout):
            raise DeviceError(f"labgrid coordinator '{address}': no answer within {timeout:g} s")
        if self._error is not None:
            raise DeviceError(f"labgrid coordinator '{address}': cannot connect ({_brief(self._error)})")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)  # grpc.aio binds its channel to the current loop
        try:
            self.session = self._start_session(self.address, loop=self._loop)
        except BaseException as exc:  # noqa: BLE001 - reported by __init__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    @property
    def me(self) -> str:
        """This session's name at the coordinator: "host/user" (LG_HOSTNAME, LG_USERNAME)."""
        return f"{self.session.gethostname()}/{self.session.getuser()}"

    def _call(self, coroutine, what: str):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(RPC_TIMEOUT)
        except TimeoutError as exc:
            future.cancel()
            raise DeviceError(f"labgrid coordinator '{self.address}': {what}: no answer within "
                              f"{RPC_TIMEOUT:g} s") from exc

    def places(self) -> dict[str, PlaceView]:
        """Every place the coordinator knows, as it is now."""

        async def read():
            await self.session.sync_with_coordinator()
            return {name: self._view(place) for name, place in self.session.places.items()}

        return self._call(read(), "list places")

    def _view(self, place) -> PlaceView:
        paths = []
        services = []
        for exporter, groups in sorted(self.session.resources.items()):
            for group_name, group in sorted(groups.items()):
                for resource_name, resource in sorted(group.items()):
                    path = (exporter, group_name, resource.cls, resource_name)
                    paths.append(path)
                    match = place.getmatch(path)
                    if match is None or resource.cls != NETWORK_SERVICE:
                        continue
                    services.append((match.rename or resource_name, dict(resource.params), bool(resource.avail)))
        unmatched = place.unmatched(paths)
        return PlaceView(name=place.name, tags=dict(place.tags), acquired=place.acquired or None,
                         services=tuple(services), unmatched=str(unmatched) if unmatched else None)

    def try_acquire(self, name: str) -> str | None:
        """Acquire place `name`: None when this session holds it now, else why not.

        Raises:
            DeviceError: the place does not exist, or the coordinator refused for another reason
                than the place being held.
        """
        import grpc

        async def acquire():
            await self.session.stub.AcquirePlace(self._pb2.AcquirePlaceRequest(placename=name))
            await self.session.sync_with_coordinator()

        try:
            self._call(acquire(), f"acquire place '{name}'")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return exc.details() or "held"
            raise DeviceError(f"labgrid coordinator '{self.address}': place '{name}': "
                              f"{exc.details() or exc.code().name}") from exc
        return None

    def release(self, name: str) -> None:
        """Release place `name` if this session's user holds it (never somebody else's)."""

        async def release():
            request = self._pb2.ReleasePlaceRequest(placename=name, fromuser=self.me)
            await self.session.stub.ReleasePlace(request)
            await self.session.sync_with_coordinator()

        self._call(release(), f"release place '{name}'")

    def close(self) -> None:
        async def stop():
            await self.session.stop()
            await self.session.close()

        try:
            self._call(stop(), "close the session")
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.debug("labgrid %s: closing the session: %s", self.address, exc)
        self._loop.call_soon_threadsafe(self._loop.stop)


def _brief(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_CLIENTS: dict[str, _Client] = {}
_CLIENTS_LOCK = threading.Lock()


@contextmanager
def client(address: str) -> Iterator[_Client]:
    """The process's session with coordinator `address`, shared by every place on it and closed
    when the last user leaves."""
    with _CLIENTS_LOCK:
        shared = _CLIENTS.get(address)
        if shared is None:
            shared = _CLIENTS[address] = _Client(address)
        shared.users += 1
    try:
        yield shared
    finally:
        with _CLIENTS_LOCK:
            shared.users -= 1
            if shared.users == 0:
                del _CLIENTS[address]
                shared.close()


@device_kind("labgrid")
@dataclass
class LabgridDevice(Device):
    """A labgrid place whose NetworkService is a board reached over ssh.

    Attributes:
        coordinator: the coordinator's HOST:PORT (default port 20408).
        place: the place name; default: the device name.
        tags: instead of `place`, key=value tags; the entry stands for every place that has
            them all (expanded by `expand`).
        network_service: the NetworkService resource's name when the place has several.
        acquire_timeout: seconds to wait for a place someone else holds; then its runs are
            error results.
        arch, runtimes, python, workdir, key, known_hosts, strict_host_key_checking, ssh_options,
            connect_timeout, run_timeout, ssh, scp: as for the ssh device. The address, user and
            port come from the NetworkService; fwedge stores no credentials (ssh finds keys in
            `key`, the ssh agent or ssh's own configuration; the resource's password is never used).
            arch defaults to the place's `arch` tag.
    """

    coordinator: str = ""
    place: str = ""
    tags: list[str] = field(default_factory=list)
    network_service: str = ""
    acquire_timeout: float = 300.0
    arch: str = ""
    runtimes: list[str] = field(default_factory=lambda: ["c"])
    python: str = "python3"
    workdir: str = "/tmp"
    key: str = ""
    known_hosts: str = ""
    strict_host_key_checking: str = "yes"
    ssh_options: list[str] = field(default_factory=list)
    connect_timeout: float = 10.0
    run_timeout: float = 600.0
    ssh: str = "ssh"
    scp: str = "scp"

    def __post_init__(self) -> None:
        where = f"labgrid device {self.name!r}"
        if importlib.util.find_spec("labgrid") is None:
            raise MissingDependencyError("labgrid", "labgrid", f"{where} needs labgrid, which")
        self.coordinator = check_coordinator(self.coordinator or os.environ.get("LG_COORDINATOR", ""), where)
        check_tags(self.tags, where)
        if self.place and self.tags:
            raise DeviceError(f"{where}: give a place or tags, not both")
        if not self.tags:
            self.place = self.place or self.name
            if not PLACE.fullmatch(self.place):
                raise DeviceError(f"{where}: place {self.place[:80]!r} is not a plain name "
                                  f"(expected to match {PLACE.pattern})")
        if self.network_service and not PLACE.fullmatch(self.network_service):
            raise DeviceError(f"{where}: network_service {self.network_service[:80]!r} is not a plain name")
        if not isinstance(self.acquire_timeout, (int, float)) or not 0 <= self.acquire_timeout <= 7 * 86400:
            raise DeviceError(f"{where}: acquire_timeout must be 0..604800 seconds, got {self.acquire_timeout!r}")
        # The ssh settings are checked now, with a stand-in address, so a bad inventory fails
        # at load time and not once the place is held.
        self._board(host="127.0.0.1", user="", port=22)
        self._held: SshDevice | None = None
        self._held_identity: dict = {}

    def _board(self, host: str, user: str, port: int) -> SshDevice:
        return SshDevice(
            name=self.name, host=host, user=user, port=port, key=self.key, arch=self.arch, runtimes=list(self.runtimes),
            python=self.python, workdir=self.workdir, connect_timeout=self.connect_timeout,
            run_timeout=self.run_timeout, strict_host_key_checking=self.strict_host_key_checking,
            known_hosts=self.known_hosts, ssh_options=list(self.ssh_options), ssh=self.ssh, scp=self.scp,
        )

    def _where(self) -> str:
        return f"labgrid place '{self.place}' at {self.coordinator}"

    # -- the place -------------------------------------------------------------------------

    @contextmanager
    def hold(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Acquire the place (waiting up to acquire_timeout while someone else holds it), point
        the ssh runs at its NetworkService, and release it on the way out, whatever happens.

        Raises:
            DeviceError: the coordinator is unreachable, the place is unknown, offline, held
                past the timeout, or its NetworkService is unusable.
        """
        with client(self.coordinator) as lab:
            waited = self._acquire(lab, cancel)
            acquired_at = time.time()
            try:
                view = lab.places().get(self.place)
                self._held = self._board_of(view)
                self._held_identity = {"coordinator": self.coordinator, "place": self.place,
                                       "session": lab.me, "acquired_at": round(acquired_at, 3),
                                       "waited_seconds": round(waited, 3)}
                yield
            finally:
                self._held = None
                try:
                    lab.release(self.place)
                    log.info("%s: released", self._where())
                except Exception as exc:  # noqa: BLE001 - the results stand; say it loudly
                    log.error("%s: could not release the place (%s); release it with "
                              "`labgrid-client -p %s release`", self._where(), _brief(exc), self.place)

    def _acquire(self, lab: _Client, cancel: threading.Event | None) -> float:
        started = time.monotonic()
        deadline = started + self.acquire_timeout
        said = False
        while True:
            view = lab.places().get(self.place)
            if view is None:
                raise DeviceError(f"{self._where()}: the coordinator has no such place")
            state = view.state()
            if state.startswith(OFFLINE):
                raise DeviceError(f"{self._where()}: {state}")
            why = lab.try_acquire(self.place)
            if why is None:
                log.info("%s: acquired", self._where())
                return time.monotonic() - started
            holder = lab.places().get(self.place)
            holder = holder.acquired if holder and holder.acquired else "someone"
            if time.monotonic() >= deadline:
                raise DeviceError(f"{self._where()}: held by {holder}; waited {self.acquire_timeout:g} s "
                                  "(acquire_timeout), not run")
            if not said:
                log.warning("%s is held by %s; waiting up to %g s", self._where(), holder, self.acquire_timeout)
                said = True
            pause = min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
            if (cancel or threading.Event()).wait(pause):
                raise DeviceError(f"{self._where()}: interrupted while waiting for the place")

    def _board_of(self, view: PlaceView | None) -> SshDevice:
        if view is None:
            raise DeviceError(f"{self._where()}: the place vanished after it was acquired")
        services = [s for s in view.services if not self.network_service or s[0] == self.network_service]
        if not services:
            wanted = f" named {self.network_service!r}" if self.network_service else ""
            raise DeviceError(f"{self._where()}: no NetworkService resource{wanted}")
        if len(services) > 1:
            names = sorted(s[0] for s in services)
            raise DeviceError(f"{self._where()}: several NetworkService resources {names}; "
                              "name one with network_service")
        name, params, _ = services[0]
        extra = params.get("extra") or {}
        if isinstance(extra, dict) and extra.get("proxy_required"):
            raise DeviceError(f"{self._where()}: NetworkService {name!r} is reachable only through the "
                              f"exporter's host {str(extra.get('proxy'))[:80]!r}; fwedge connects directly "
                              "and does not tunnel")
        host, user, port = params.get("address"), params.get("username", ""), params.get("port", 22)
        if not isinstance(host, str) or not isinstance(user, str) or isinstance(port, bool) or not isinstance(port, int):
            raise DeviceError(f"{self._where()}: NetworkService {name!r} has an address, username or port "
                              "of the wrong type")
        try:
            return self._board(host=host, user=user, port=port)
        except DeviceError as exc:
            raise DeviceError(f"{self._where()}: NetworkService {name!r}: {exc}") from exc

    # -- Device interface ------------------------------------------------------------------

    def why_not(self, bundle: Bundle) -> str | None:
        return self._board(host="127.0.0.1", user="", port=22).why_not(bundle)

    def bundle_kinds(self) -> list[str]:
        return [f"c-{self.arch}" if runtime == "c" else runtime for runtime in self.runtimes]

    def run(self, bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        return self.run_build(bundle, None, inputs, repeats)

    def run_build(self, bundle: Bundle, binary: Path | None, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        board = self._held
        if board is None:
            raise DeviceRunError(f"{self._where()}: not held; a labgrid place runs bundles only inside hold()")
        run = board.run_build(bundle, binary, inputs, repeats)
        return DeviceRun(outputs=run.outputs, latencies_ms=run.latencies_ms, stderr=run.stderr, stdout=run.stdout,
                         identity={**run.identity, "labgrid": dict(self._held_identity)})

    def state(self) -> str:
        try:
            with client(self.coordinator) as lab:
                view = lab.places().get(self.place)
                return "unknown place" if view is None else view.state()
        except DeviceError as exc:
            return f"unreachable ({_brief(exc)[:160]})"

    def identity(self) -> dict:
        board = self._held
        base = {"kind": self.kind, "name": self.name, "arch": self.arch, "coordinator": self.coordinator,
                "place": self.place}
        if board is None:
            return base
        return {**board.identity(), **base}


def expand(devices: list[Device]) -> list[Device]:
    """Replace each labgrid entry given by tags with one device per place that has every tag,
    named after the place. A labgrid device without an arch takes its place's `arch` tag.

    Raises:
        DeviceError: a tag entry's coordinator is unreachable, or no place has its tags.
    """
    out: list[Device] = []
    views: dict[str, dict[str, PlaceView] | None] = {}

    def places_at(device: LabgridDevice, required: bool) -> dict[str, PlaceView]:
        if device.coordinator not in views:
            try:
                with client(device.coordinator) as lab:
                    views[device.coordinator] = lab.places()
            except DeviceError:
                views[device.coordinator] = None
                if required:
                    raise
        found = views[device.coordinator]
        if found is None and required:
            raise DeviceError(f"labgrid device {device.name!r}: coordinator {device.coordinator} is unreachable")
        return found or {}

    for device in devices:
        if not isinstance(device, LabgridDevice):
            out.append(device)
            continue
        if not device.tags:
            if not device.arch:
                view = places_at(device, required=False).get(device.place)
                device.arch = view.tags.get("arch", "") if view else ""
            out.append(device)
            continue
        wanted = check_tags(device.tags, f"labgrid device {device.name!r}")
        found = []
        for name, view in sorted(places_at(device, required=True).items()):
            if not all(view.tags.get(key) == value for key, value in wanted.items()):
                continue
            if not PLACE.fullmatch(name):
                log.warning("labgrid coordinator %s: place %r has the tags %s but not a plain name; skipped",
                            device.coordinator, name[:80], device.tags)
                continue
            found.append(view)
        if not found:
            raise DeviceError(f"labgrid device {device.name!r}: no place at {device.coordinator} has the tags "
                              f"{', '.join(device.tags)}")
        for view in found:
            fields = {**{f.name: getattr(device, f.name) for f in dataclasses.fields(device)}, "name": view.name,
                      "place": view.name, "tags": [], "arch": device.arch or view.tags.get("arch", "")}
            out.append(LabgridDevice(**fields))
    return out
