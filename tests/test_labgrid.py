"""labgrid places as farm devices, on the real engine: a labgrid-coordinator on 127.0.0.1, a
labgrid-exporter whose NetworkService points at a real sshd on loopback, places made with
labgrid-client, and `fwedge farm run` acquiring, using and always releasing them."""
from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fwedge.bundle import host_arch
from fwedge.cli import cli
from fwedge.device_farm import inventory
from fwedge.device_farm.labgrid_place import LabgridDevice
from fwedge.device_farm.results import load_results
from fwedge.device_farm.runner import FarmOptions, run_farm
from fwedge.errors import DeviceError
from tests import farm_helpers as fh

pytestmark = [pytest.mark.labgrid, pytest.mark.ssh]

LIMIT = 200
EXPORTER = "farm-exporter"
_NAMES = itertools.count()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = fh.Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sshd):
    """The coordinator and one exporter with a NetworkService for the loopback sshd."""
    lab = fh.Lab(tmp_path_factory.mktemp("lab")).start()
    try:
        lab.export(EXPORTER, {"loopback": {"address": "127.0.0.1", "username": sshd.user, "port": sshd.port}})
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def place(lab):
    """A fresh place matching the loopback NetworkService, tagged with the host arch."""
    name = f"board-{next(_NAMES)}"
    lab.place(name, f"{EXPORTER}/loopback/NetworkService", {"arch": host_arch().replace("-", "_"),
                                                            "pool": "loopback"})
    yield name
    lab.client("-p", name, "release", "--kick", check=False)


@pytest.fixture(scope="module")
def mlp_int8(tmp_path_factory):
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("mlp_int8")
    onnx.save(fh.fashion_mlp(), folder / "mlp.onnx")
    onnx.save(quantize(fh.fashion_mlp(), "fashion-mnist:train", method="minmax", num_samples=128).model,
              folder / "mlp_int8.onnx")
    return folder / "mlp_int8.onnx"


@pytest.fixture(scope="module")
def c_bundle(tmp_path_factory, mlp_int8):
    """The MLP's real C bundle for this host's arch (zig cc)."""
    [bundle] = fh.c_bundles(mlp_int8, [host_arch()], tmp_path_factory.mktemp("c"))
    return bundle


def entry(lab, sshd, place: str, **overrides) -> dict:
    """An inventory entry for `place`: ssh settings here, address, user and port from the lab."""
    (sshd.folder / "remote").mkdir(exist_ok=True)
    return {"name": place, "kind": "labgrid", "coordinator": lab.address, "place": place, "runtimes": ["c"],
            "key": str(sshd.folder / "user_key"), "known_hosts": str(sshd.folder / "known_hosts"),
            "strict_host_key_checking": "accept-new", "workdir": str(sshd.folder / "remote"),
            "connect_timeout": 10.0, "run_timeout": 120.0, "acquire_timeout": 60.0, **overrides}


def farm_run(tmp_path: Path, bundle, inventory_path: Path, *extra: str, name: str = "results.json") -> list[str]:
    return [sys.executable, "-m", "fwedge", "farm", "run", str(getattr(bundle, "path", bundle)), "--inventory", str(inventory_path),
            "--data", "fashion-mnist:test", "--limit", str(LIMIT), "--repeats", "3", "-o", str(tmp_path / name),
            *extra]


def remote_left_overs(sshd) -> list[Path]:
    return list((sshd.folder / "remote").iterdir())


# -- a bundle on a held place ---------------------------------------------------------------------


@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_a_c_bundle_runs_on_a_held_place_and_the_place_is_released(tmp_path, lab, sshd, place, c_bundle):
    """The run happens while this session holds the place; its accuracy equals the host's on the
    same bundle; afterwards the place is free and the board holds no left-overs."""
    devices = inventory.devices_for(fh.write_inventory(tmp_path / "inv.toml", [
        {"name": "host", "kind": "local", "runtimes": ["c"]}, entry(lab, sshd, place)]))
    holders = []

    def during(result):  # called on the device's thread, inside its hold
        holders.append((result.device, lab.acquired_by(place)))

    results = run_farm([c_bundle], devices, FarmOptions(data="fashion-mnist:test", limit=LIMIT, repeats=3),
                       progress=during)
    host, board = (results.find(c_bundle.name, name) for name in ("host", place))
    assert board.ok, f"{board.error}\n{board.stderr_tail}"
    assert board.device_kind == "labgrid" and board.samples == LIMIT
    assert board.accuracy == host.accuracy
    assert board.identity["labgrid"]["place"] == place and board.identity["host"] == "127.0.0.1"
    assert board.identity["port"] == sshd.port and board.identity["uname"].startswith("Linux")
    me = board.identity["labgrid"]["session"]
    assert dict(holders)[place] == me, holders
    assert lab.acquired_by(place) is None, "the place is still acquired after the farm run"
    assert not remote_left_overs(sshd)
    assert "Accepted publickey" in (sshd.folder / "sshd.log").read_text()


@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_places_by_tag_from_the_command_line(tmp_path, lab, sshd, place, c_bundle):
    """`--labgrid-coordinator` with `--place-tag` finds the place; farm list shows it free; an
    inventory entry with tags expands to one device per place, arch from the place's tag."""
    listed = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", lab.address,
                                      "--places", place, "--json", "-"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.output)
    assert row == {"name": place, "kind": "labgrid", "state": "free", "runs": [f"c-{host_arch()}"]}

    tagged = inventory.devices_for(fh.write_inventory(tmp_path / "inv.toml", [
        entry(lab, sshd, "", name="lab", tags=["pool=loopback"])]))
    assert place in [device.name for device in tagged]
    mine = next(device for device in tagged if device.name == place)
    assert isinstance(mine, LabgridDevice) and mine.arch == host_arch() and mine.place == place
    results = run_farm([c_bundle], [mine], FarmOptions(data="fashion-mnist:test", limit=50, repeats=2))
    [result] = results.results
    assert result.ok, result.error
    assert lab.acquired_by(place) is None

    # bench holds the place for its runs too.
    inv = fh.write_inventory(tmp_path / "one.toml", [entry(lab, sshd, place)])
    timed = CliRunner().invoke(cli, ["bench", str(c_bundle), "--inventory", str(inv), "--devices", place,
                                     "--repeats", "5", "--json", "-"])
    assert timed.exit_code == 0, timed.output
    [row] = json.loads(timed.output)
    assert row["device"] == place and row["iterations"] == 5 and row["p50_ms"] > 0
    assert lab.acquired_by(place) is None


@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_the_a_b_interleave_runs_inside_one_hold(tmp_path, lab, sshd, place, c_bundle):
    """With --baseline-bundles, baseline and candidate alternate on the place in one hold: both
    results carry the same acquisition, and the latency ratio is measured."""
    import shutil

    baseline = tmp_path / "baseline"
    shutil.copytree(c_bundle, baseline / c_bundle.name)
    devices = inventory.devices_for(fh.write_inventory(tmp_path / "inv.toml", [entry(lab, sshd, place)]))
    results = run_farm([c_bundle], devices, FarmOptions(data="fashion-mnist:test", limit=50, repeats=8, rounds=4,
                                                        baseline_bundles=str(baseline)))
    base, candidate = results.results
    assert base.role == "baseline" and candidate.role == "candidate"
    assert base.ok and candidate.ok, (base.error, candidate.error)
    assert base.identity["labgrid"] == candidate.identity["labgrid"], "the two roles ran in different holds"
    assert candidate.latency_ratio is not None and candidate.latency_ratio > 0
    assert lab.acquired_by(place) is None


# -- someone else holds the place -----------------------------------------------------------------


@pytest.mark.zig
def _read_until(process: subprocess.Popen, text: str, limit: float = 120.0) -> str:
    """The lines `process` prints (stdout and stderr in one pipe) up to the first holding `text`;
    fails if it ends or `limit` seconds pass first."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if text in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(limit)
    assert found.is_set(), f"no line with {text!r}:\n" + "".join(lines)
    return "".join(lines)


@pytest.mark.fashion_mnist
def test_a_place_held_by_someone_else_waits_then_runs_or_is_an_error_the_gate_fails_on(
        tmp_path, lab, sshd, place, c_bundle):
    lab.client("-p", place, "acquire", user="colleague")
    assert lab.acquired_by(place) == "otherhost/colleague"
    short = fh.write_inventory(tmp_path / "short.toml", [entry(lab, sshd, place, acquire_timeout=2.0)])
    started = time.monotonic()
    done = subprocess.run(farm_run(tmp_path, c_bundle, short, name="held.json"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert time.monotonic() - started >= 2.0
    [held] = load_results(tmp_path / "held.json").results
    assert held.status == "error" and "held by otherhost/colleague" in held.error and place in held.error
    assert "Traceback" not in done.stderr
    assert lab.acquired_by(place) == "otherhost/colleague", "fwedge released a place it did not hold"

    # Released by its holder 2.5 s after the run says it waits, the place is then acquired and
    # the run goes ahead (released on its word, not on a clock: a loaded host starts fwedge slowly).
    waiting = subprocess.Popen(farm_run(tmp_path, c_bundle, fh.write_inventory(tmp_path / "long.toml", [
        entry(lab, sshd, place)]), name="ok.json"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = _read_until(waiting, "waiting up to")
    time.sleep(2.5)
    lab.client("-p", place, "release", user="colleague")
    output = seen + waiting.communicate(timeout=120)[0]
    assert waiting.returncode == 0, output
    [result] = load_results(tmp_path / "ok.json").results
    assert result.ok, result.error
    assert result.identity["labgrid"]["waited_seconds"] >= 2.0
    assert lab.acquired_by(place) is None

    # The gate fails closed on the run that found the place held.
    gate = subprocess.run([sys.executable, "-m", "fwedge", "gate", str(tmp_path / "held.json"),
                           "--baseline", str(tmp_path / "ok.json")], capture_output=True, text=True, timeout=60)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "held by otherhost/colleague" in gate.stdout + gate.stderr


@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_two_concurrent_farm_runs_on_one_place_take_turns(tmp_path, lab, sshd, place, c_bundle):
    """Run A holds the place with a harness that waits for the test's word and fails; run B,
    started while A holds it, waits and then runs; run C, with a 1 s acquire timeout, reports the
    place held. Afterwards the place is free: also after A's failed bundle. Each step waits for
    the one before to be seen (the place held, B's "waiting" line), not for a clock."""
    go = tmp_path / "go"  # A's harness holds the place until this file exists (at most 120 s)
    slow = fh.script_c_bundle(tmp_path / "slow", host_arch(),
                              f"for i in $(seq 1200); do [ -e '{go}' ] && break; sleep 0.1; done\nexit 3")
    inv = fh.write_inventory(tmp_path / "inv.toml", [entry(lab, sshd, place)])
    impatient = fh.write_inventory(tmp_path / "impatient.toml", [entry(lab, sshd, place, acquire_timeout=1.0)])
    first = subprocess.Popen(farm_run(tmp_path, slow, inv, "--retries", "0", name="a.json"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while lab.acquired_by(place) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        holder = lab.acquired_by(place)
        assert holder is not None, first.communicate()[0]
        second = subprocess.Popen(farm_run(tmp_path, c_bundle, inv, name="b.json"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen_b = _read_until(second, "waiting up to")
        third = subprocess.run(farm_run(tmp_path, c_bundle, impatient, name="c.json"), capture_output=True,
                               text=True, timeout=120)
        time.sleep(1.0)  # B has waited at least this long
    finally:
        go.touch()
    out_a, out_b = first.communicate(timeout=120)[0], seen_b + second.communicate(timeout=120)[0]
    assert first.returncode == 3 and second.returncode == 0, out_a + out_b
    [a], [b] = load_results(tmp_path / "a.json").results, load_results(tmp_path / "b.json").results
    assert a.status == "error" and "exit status 3" in a.error
    assert b.ok, b.error
    assert b.identity["labgrid"]["waited_seconds"] >= 1.0, b.identity["labgrid"]
    assert third.returncode == 3, third.stdout + third.stderr
    [c] = load_results(tmp_path / "c.json").results
    assert c.status == "error" and f"held by {holder}" in c.error
    assert lab.acquired_by(place) is None
    assert not remote_left_overs(sshd)


# -- the place is released whatever happens ------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "harness killed on the board"])
def test_the_place_is_released_when_the_run_is_killed(tmp_path, lab, sshd, place, how):
    """A farm run whose harness sleeps 60 s: killing fwedge (SIGTERM, Ctrl-C) or the harness
    on the board ends the run within seconds, and the place is free again."""
    marker = f"sleep 60.{next(_NAMES):03d}"  # a unique command line on the board, for pgrep and pkill
    slow = fh.script_c_bundle(tmp_path / "slow", host_arch(), marker)
    inv = fh.write_inventory(tmp_path / "inv.toml", [entry(lab, sshd, place)])
    run = subprocess.Popen(farm_run(tmp_path, slow, inv, "--retries", "0"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run.poll() is None:
            if lab.acquired_by(place) and subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the harness never started: {run.communicate(timeout=30)[0]}")
        stopped = time.monotonic()
        if how == "harness killed on the board":
            subprocess.run(["pkill", "-KILL", "-f", marker], check=True)
        else:
            run.send_signal(getattr(signal, how))
        output = run.communicate(timeout=60)[0]
    finally:
        if run.poll() is None:
            run.kill()
        subprocess.run(["pkill", "-KILL", "-f", marker], capture_output=True)
    assert time.monotonic() - stopped < 30
    if how == "harness killed on the board":
        assert run.returncode == 3, output
        [result] = load_results(tmp_path / "results.json").results
        assert result.status == "error" and "SIGKILL" in result.error
    else:
        assert run.returncode == 130 and "interrupted" in output, output
    assert "Traceback" not in output
    assert lab.acquired_by(place) is None, output
    assert not remote_left_overs(sshd)


# -- what farm list says --------------------------------------------------------------------------


def test_farm_list_shows_free_acquired_and_offline(tmp_path, lab, sshd):
    """Each place with the coordinator's state; a place whose exporter stopped is offline."""
    lab.export("short-lived", {"gone": {"address": "127.0.0.1", "username": sshd.user, "port": sshd.port}})
    names = [f"list-{next(_NAMES)}" for _ in range(3)]
    lab.place(names[0], f"{EXPORTER}/loopback/NetworkService")
    lab.place(names[1], f"{EXPORTER}/loopback/NetworkService")
    lab.place(names[2], "short-lived/gone/NetworkService")
    lab.client("-p", names[1], "acquire", user="colleague")
    lab.stop_exporter("short-lived")
    try:
        listed = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", lab.address,
                                          "--places", ",".join(names), "--json", "-"])
        assert listed.exit_code == 0, listed.output
        states = {row["name"]: row["state"] for row in json.loads(listed.output)}
        deadline = time.monotonic() + 20
        while not states[names[2]].startswith("offline") and time.monotonic() < deadline:
            time.sleep(0.5)  # the coordinator drops an exporter's resources when its stream ends
            listed = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", lab.address,
                                              "--places", names[2], "--json", "-"])
            states[names[2]] = json.loads(listed.output)[0]["state"]
        assert states[names[0]] == "free"
        assert states[names[1]] == "acquired by otherhost/colleague"
        assert states[names[2]].startswith("offline"), states
        unknown = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", lab.address,
                                           "--places", "no-such-place", "--json", "-"])
        assert json.loads(unknown.output)[0]["state"] == "unknown place"
    finally:
        lab.client("-p", names[1], "release", user="colleague", check=False)


# -- hostile lab data and bad entries -------------------------------------------------------------


def test_a_hostile_network_service_is_an_error_result_and_runs_nothing(tmp_path, lab, sshd):
    """The address and user come from the lab, so they pass the ssh device's checks: an option
    or shell word there is an error result naming the place, and nothing runs."""
    canary = tmp_path / "pwned"
    lab.export("hostile", {
        "option": {"address": f"-oProxyCommand=touch {canary}", "username": sshd.user, "port": sshd.port},
        "shell": {"address": "127.0.0.1", "username": f"x;touch {canary}", "port": sshd.port},
    })
    try:
        for group in ("option", "shell"):
            name = lab.place(f"hostile-{group}-{next(_NAMES)}", f"hostile/{group}/NetworkService")
            slow = fh.script_c_bundle(tmp_path / f"b-{group}", host_arch(), f"touch {canary}")
            devices = inventory.devices_for(fh.write_inventory(tmp_path / f"{group}.toml",
                                                               [entry(lab, sshd, name, arch=host_arch())]))
            [result] = run_farm([slow], devices, FarmOptions(data="fashion-mnist:test", limit=5, repeats=1)).results
            assert result.status == "error" and name in result.error and "not allowed" in result.error, result.error
            assert lab.acquired_by(name) is None
        assert not canary.exists()
    finally:
        lab.stop_exporter("hostile")


@pytest.mark.parametrize("fields, message", [
    ({"coordinator": "lab; rm -rf /"}, "is not HOST:PORT"),
    ({"coordinator": "lab:99999"}, "port must be 1..65535"),
    ({"place": "a b"}, "is not a plain name"),
    ({"tags": ["Board=x"]}, "is not key=value"),
    ({"tags": ["pool=loopback"], "place": "p"}, "a place or tags, not both"),
    ({"acquire_timeout": -1.0}, "acquire_timeout"),
    ({"ssh_options": ["ProxyCommand=sh"]}, "not allowed"),
    ({"ssh": "/tmp/evil"}, "names the client program"),
    ({"password": "x"}, "unknown key 'password'"),
])
def test_bad_labgrid_entries_are_one_line_errors(tmp_path, fields, message):
    path = fh.write_inventory(tmp_path / "inv.toml", [{"name": "p", "kind": "labgrid",
                                                       "coordinator": "127.0.0.1:1", **fields}])
    with pytest.raises(DeviceError, match=message):
        inventory.load_inventory(path)
    done = CliRunner().invoke(cli, ["farm", "list", "--inventory", str(path)])
    assert done.exit_code == 2 and "Traceback" not in done.output


def test_an_unreachable_coordinator_is_one_line(tmp_path):
    port = fh.closed_port()
    done = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", f"127.0.0.1:{port}",
                                    "--place-tag", "pool=x"])
    assert done.exit_code == 2 and "cannot connect" in done.output and "Traceback" not in done.output
    listed = CliRunner().invoke(cli, ["farm", "list", "--labgrid-coordinator", f"127.0.0.1:{port}",
                                      "--places", "p", "--json", "-"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["state"].startswith("unreachable")


# -- fwedge profile on a board ---------------------------------------------------------------------


@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_profile_times_each_layer_on_an_ssh_board_and_on_a_held_place(tmp_path, lab, sshd, place, c_bundle):
    """The -DFW_PROFILE build runs on the board (uploaded and hashed there): one layer per step of
    the lowered graph, and the layer sum within PROFILE_C_SAME_RUNS_RATIO of the same runs."""
    from fwedge.bundle import load_bundle
    from tests.helpers import check_same_runs_profile

    inv = fh.write_inventory(tmp_path / "inv.toml", [sshd.device_entry("ssh-board"), entry(lab, sshd, place)])
    result = CliRunner().invoke(cli, ["profile", str(c_bundle), "--inventory", str(inv), "--devices",
                                      f"ssh-board,{place}", "--repeats", "20", "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["profiles"]
    assert sorted(row["device"] for row in rows) == sorted(["ssh-board", place])
    manifest = load_bundle(c_bundle).extra
    for row in rows:
        assert [layer["name"] for layer in row["layers"]] == ["(inputs)", *manifest["op_names"], "(outputs)"]
        check_same_runs_profile(row)
    assert lab.acquired_by(place) is None
    assert not remote_left_overs(sshd)
