"""Device farm: inventory, host runs, faults (segfault, hang, closed port), ssh injection, real sshd."""
from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fwedge.cli import cli
from fwedge.device_farm import inventory
from fwedge.device_farm.local import LocalDevice
from fwedge.device_farm.results import load_results, save_results
from fwedge.device_farm.runner import FarmOptions, run_farm
from fwedge.device_farm.ssh import SshDevice
from fwedge.errors import DeviceError
from tests import farm_helpers as fh

LIMIT = 300
REPEATS = 5


@pytest.fixture(scope="module")
def mlp_model():
    return fh.fashion_mlp()


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory, mlp_model):
    import onnx

    folder = tmp_path_factory.mktemp("mlp")
    onnx.save(mlp_model, folder / "mlp.onnx")
    fh.onnx_bundle(mlp_model, folder / "bundles" / "mlp_onnx")
    return folder


@pytest.fixture(scope="module")
def mlp_int8(tmp_path_factory, mlp_model):
    """The MLP quantized to INT8 QDQ (minmax, 128 calibration images)."""
    from fwedge.quantization import quantize

    folder = tmp_path_factory.mktemp("mlp_int8")
    path = folder / "mlp_int8.onnx"
    onnx.save(quantize(mlp_model, "fashion-mnist:train", method="minmax", num_samples=128).model, path)
    return path


_write_inventory = fh.write_inventory


# -- inventory -----------------------------------------------------------------------------------


@pytest.mark.qemu
def test_auto_detect_finds_host_and_every_qemu():
    names = [device.name for device in inventory.auto_detect()]
    assert names == ["host", "qemu-aarch64", "qemu-riscv64", "qemu-loongarch64"]


def test_inventory_builds_each_kind_and_refuses_bad_entries(tmp_path):
    good = _write_inventory(tmp_path / "good.toml", [
        {"name": "host", "kind": "local"},
        {"name": "rv", "kind": "qemu", "arch": "riscv64", "run_timeout": 5},
        {"name": "pi", "kind": "ssh", "host": "192.0.2.7", "user": "ci", "arch": "aarch64",
         "runtimes": ["c", "onnx"], "port": 2222},
    ])
    devices = inventory.load_inventory(good)
    assert [(d.name, d.kind) for d in devices] == [("host", "local"), ("rv", "qemu"), ("pi", "ssh")]
    assert devices[1].run_timeout == 5 and devices[2].port == 2222
    cases = {
        "kind 'fpga'": [{"name": "x", "kind": "fpga"}],
        "unknown key 'hostname'": [{"name": "x", "kind": "ssh", "hostname": "h"}],
        "port must be int": [{"name": "x", "kind": "ssh", "host": "h", "port": "22"}],
        "arch must be one of": [{"name": "x", "kind": "qemu", "arch": "mips"}],
        "duplicate device names": [{"name": "x", "kind": "local"}, {"name": "x", "kind": "local"}],
    }
    for expected, entries in cases.items():
        with pytest.raises(DeviceError, match=expected):
            inventory.load_inventory(_write_inventory(tmp_path / "bad.toml", entries))


def test_farm_list_shows_devices_state_and_kinds(tmp_path):
    path = _write_inventory(tmp_path / "inv.toml", [
        {"name": "host", "kind": "local", "runtimes": ["onnx", "c"]},
        {"name": "la", "kind": "qemu", "arch": "loongarch64", "qemu": str(tmp_path / "no-such-qemu")},
    ])
    result = CliRunner().invoke(cli, ["farm", "list", "--inventory", str(path)])
    assert result.exit_code == 0, result.output
    assert "onnx, c-x86_64" in result.output or "onnx, c-" in result.output
    assert "missing" in result.output and "c-loongarch64" in result.output
    unknown = CliRunner().invoke(cli, ["farm", "run", str(tmp_path), "--inventory", str(path), "--devices", "nope",
                                       "--data", "fashion-mnist:test", "-o", str(tmp_path / "r.json")])
    assert unknown.exit_code == 2 and "unknown device(s) ['nope']" in unknown.output


@pytest.mark.ssh
def test_farm_list_shows_an_unreachable_ssh_board(tmp_path):
    path = _write_inventory(tmp_path / "inv.toml", [
        {"name": "gone", "kind": "ssh", "host": "127.0.0.1", "port": fh.closed_port(), "arch": "aarch64",
         "connect_timeout": 3.0, "strict_host_key_checking": "no", "known_hosts": str(tmp_path / "kh")}])
    result = CliRunner().invoke(cli, ["farm", "list", "--inventory", str(path)])
    assert result.exit_code == 0 and "unreachable" in result.output and "c-aarch64" in result.output


# -- host runs -----------------------------------------------------------------------------------


@pytest.mark.fashion_mnist
def test_host_run_measures_accuracy_fidelity_latency(mlp_files):
    from fwedge.eval import evaluate_model

    bundle = mlp_files / "bundles" / "mlp_onnx"
    results = run_farm([bundle], [LocalDevice(name="host")],
                       FarmOptions(data="fashion-mnist:test", limit=LIMIT, repeats=REPEATS,
                                   reference=str(mlp_files / "mlp.onnx")))
    [result] = results.results
    assert result.ok, result.error
    expected = evaluate_model(mlp_files / "mlp.onnx", "fashion-mnist:test", limit=LIMIT)["accuracy"].top1
    assert result.accuracy == pytest.approx(expected, abs=1e-12)
    assert result.accuracy > 0.6, "the ridge-fitted model should be far above chance"
    assert result.fidelity["top1_agreement"] == 1.0 and result.fidelity["max_abs_error"] == 0.0
    assert result.latency.iterations == REPEATS and 0 < result.latency.p50_ms <= result.latency.p95_ms
    assert result.sizes["file_bytes"] > 0 and result.identity["runtimes"]["onnxruntime"]
    # Round trip through the JSON schema; strict JSON has no Infinity, so an identical output's
    # SQNR is stored as "inf".
    path = save_results(results, mlp_files / "results.json")
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    loaded = load_results(path).results[0]
    assert loaded.fidelity["sqnr_db"] == "inf"
    assert dataclasses.replace(loaded, fidelity=None) == dataclasses.replace(result, fidelity=None)


def _check_c_results(results, mlp_int8, expected_devices: dict[str, str]):
    from fwedge.eval import evaluate_model
    from tests.tolerances import INT8_TARGET_ACCURACY_PP

    reference = evaluate_model(mlp_int8, "fashion-mnist:test", limit=LIMIT)["accuracy"].top1
    by_bundle = {r.bundle: r for r in results.results}
    assert set(by_bundle) == set(expected_devices)
    for bundle, device in expected_devices.items():
        result = by_bundle[bundle]
        assert result.ok, f"{bundle} on {result.device}: {result.error}\n{result.stderr_tail}"
        assert result.device == device and result.target == "c"
        assert abs(result.accuracy - reference) * 100 <= INT8_TARGET_ACCURACY_PP, (bundle, result.accuracy, reference)
        assert result.fidelity["top1_agreement"] > 0.9
        assert result.latency.iterations == REPEATS and result.identity["timer"].startswith("clock_gettime")
        assert result.sizes["rom_bytes"] > 0 and result.sizes["ram_bytes"] > 0
    return by_bundle


@pytest.mark.qemu("aarch64")
@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_c_bundles_run_on_host_and_qemu_aarch64(tmp_path, mlp_files, mlp_int8):
    bundles = fh.c_bundles(mlp_int8, ["x86_64", "aarch64"], tmp_path)
    devices = inventory.select(inventory.auto_detect(), ["host", "qemu-aarch64"])
    results = run_farm(bundles, devices, FarmOptions(data="fashion-mnist:test", limit=LIMIT, repeats=REPEATS,
                                                     reference=str(mlp_files / "mlp.onnx")))
    by_bundle = _check_c_results(results, mlp_int8, {"mlp_int8-x86_64": "host", "mlp_int8-aarch64": "qemu-aarch64"})
    assert by_bundle["mlp_int8-aarch64"].identity["emulator"].startswith("qemu-aarch64 version")
    assert by_bundle["mlp_int8-aarch64"].accuracy == by_bundle["mlp_int8-x86_64"].accuracy


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_c_bundles_run_on_every_qemu_board(tmp_path, mlp_files, mlp_int8):
    arches = ["x86_64", "aarch64", "riscv64", "loongarch64"]
    bundles = fh.c_bundles(mlp_int8, arches, tmp_path)
    results = run_farm(bundles, inventory.auto_detect(), FarmOptions(data="fashion-mnist:test", limit=LIMIT,
                                                                     repeats=REPEATS, reference=str(mlp_files / "mlp.onnx")))
    _check_c_results(results, mlp_int8, {f"mlp_int8-{arch}": "host" if arch == "x86_64" else f"qemu-{arch}"
                                         for arch in arches})


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.fashion_mnist
@pytest.mark.ssh
def test_faults_become_error_results_and_fail_the_gate(tmp_path, mlp_files):
    """A qemu that segfaults, one that hangs past its timeout, and an ssh board on a closed
    loopback port each give an error result; the host result is kept and the gate fails."""
    bundles = tmp_path / "bundles"
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", bundles / "mlp_onnx")
    fh.fake_c_bundle(bundles / "mlp_c_aarch64", "aarch64")
    fh.fake_c_bundle(bundles / "mlp_c_riscv64", "riscv64")
    inv = _write_inventory(tmp_path / "inv.toml", [
        {"name": "host", "kind": "local", "runtimes": ["onnx"]},
        {"name": "crashy-arm", "kind": "qemu", "arch": "aarch64", "qemu": str(fh.fake_qemu_segfault(tmp_path))},
        {"name": "stuck-rv", "kind": "qemu", "arch": "riscv64", "qemu": str(fh.fake_qemu_hang(tmp_path)),
         "run_timeout": 1.0},
        {"name": "gone-board", "kind": "ssh", "host": "127.0.0.1", "port": fh.closed_port(), "arch": "x86_64",
         "runtimes": ["onnx"], "connect_timeout": 3.0, "strict_host_key_checking": "no",
         "known_hosts": str(tmp_path / "known_hosts")},
    ])
    started = time.monotonic()
    output = tmp_path / "results.json"
    run = CliRunner().invoke(cli, ["farm", "run", *(str(p) for p in sorted(bundles.iterdir())),
                                   "--inventory", str(inv), "--data", "fashion-mnist:test",
                                   "--limit", str(LIMIT), "--repeats", str(REPEATS), "--retries", "1",
                                   "--reference", str(mlp_files / "mlp.onnx"), "-o", str(output)])
    elapsed = time.monotonic() - started
    # Results were written, but runs failed: not 0 (nothing failed) nor 1 (a failed gate).
    assert run.exit_code == 3, run.output
    assert "3 of 4 runs failed" in run.output
    assert elapsed < 60, f"the hung qemu must be killed at its timeout; the run took {elapsed:.1f} s"
    results = load_results(output)
    by_device = {(r.bundle, r.device): r for r in results.results}
    assert by_device[("mlp_onnx", "host")].ok
    segv = by_device[("mlp_c_aarch64", "crashy-arm")]
    assert segv.status == "error" and "SIGSEGV" in segv.error and segv.attempts == 2
    assert "uncaught target signal 11" in segv.stderr_tail
    hang = by_device[("mlp_c_riscv64", "stuck-rv")]
    assert hang.status == "error" and "timed out after 1 s" in hang.error and "guest started" in hang.stderr_tail
    refused = by_device[("mlp_onnx", "gone-board")]
    assert refused.status == "error" and "Connection refused" in (refused.error + (refused.stderr_tail or ""))

    # The baseline has every pair working; the gate fails closed and names each failure.
    baseline = dataclasses.replace(results, results=[
        dataclasses.replace(r, status="ok", error=None, stderr_tail=None, accuracy=0.8) for r in results.results])
    save_results(baseline, tmp_path / "baseline.json")
    gate = CliRunner().invoke(cli, ["gate", str(output), "--baseline", str(tmp_path / "baseline.json"),
                                    "--max-latency-increase", "1000%"])
    assert gate.exit_code == 1, gate.output
    for device in ("crashy-arm", "stuck-rv", "gone-board"):
        assert f"on {device}: error on the device" in gate.output.replace("\n", " ") or device in gate.output
    assert "gate: FAIL" in gate.output


@pytest.mark.qemu("riscv64")
@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_a_guest_segfault_under_real_qemu_is_an_error_result(tmp_path):
    bundle = fh.crashing_c_bundle(tmp_path / "bundles" / "crash-riscv64", "riscv64")
    device = inventory.select(inventory.auto_detect(), ["qemu-riscv64"])
    results = run_farm([bundle.path], device, FarmOptions(data="fashion-mnist:test", limit=10, repeats=2, retries=0))
    [result] = results.results
    # Debian's qemu-user 7.2 re-raises the guest's SIGSEGV on itself without a message.
    assert result.status == "error" and "qemu-riscv64" in result.error and "killed by SIGSEGV" in result.error
    assert result.attempts == 1


# -- ssh: argument lists only ----------------------------------------------------------------------

_FAKE_SSH = '''
#!{python}
"""Stand-in for ssh/scp that logs argv, then does what the real tools do: ssh hands its last
argument to a shell on the 'board' (here: sh -c in HOME), scp copies host:path specs."""
import json, os, shutil, subprocess, sys
home = {home!r}
with open(os.path.join(home, "argv.log"), "a") as log:
    log.write(json.dumps(sys.argv) + "\\n")
args = sys.argv[sys.argv.index("--") + 1:]
def local(spec):
    return spec.split(":", 1)[1] if "@" in spec.split("/", 1)[0] else spec
if os.path.basename(sys.argv[0]) == "ssh":
    destination, command = args
    if "runner.py" in command and os.path.exists(os.path.join(home, "hang")):
        import time
        time.sleep(300)  # a board whose run never finishes
    env = dict(os.environ, HOME=home)
    sys.exit(subprocess.run(["sh", "-c", command], cwd=home, env=env).returncode)
*sources, target = [local(a) for a in args]
for source in sources:
    if os.path.isdir(source):
        shutil.copytree(source, os.path.join(target, os.path.basename(source)) if target.endswith("/") else target)
    else:
        shutil.copy2(source, target)
    if os.path.exists(os.path.join(home, "corrupt")):  # a board whose storage flips bits on upload
        for root, _, names in os.walk(target):
            for name in names:
                if name == "model.onnx":
                    with open(os.path.join(root, name), "ab") as handle:
                        handle.write(b"x")
'''


def test_ssh_values_with_shell_metacharacters_are_refused(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("x")
    for bad in ({"host": f"127.0.0.1; rm -rf {canary}"}, {"host": "-oProxyCommand=touch /tmp/x"},
                {"user": "$(touch pwned)"}, {"workdir": f"/tmp/$(rm -rf {canary})"},
                {"workdir": "/tmp/../etc"}, {"python": "python3; rm -rf /"},
                {"ssh_options": ["ProxyCommand=sh -c 'touch pwned'"]}):
        entry = {"name": "b", "kind": "ssh", "host": "127.0.0.1", "arch": "x86_64", **bad}
        with pytest.raises(DeviceError, match="not allowed|must be"):
            inventory.device_from_entry(entry, "test")
    assert (canary / "keep").exists() and not list(tmp_path.rglob("pwned"))


@pytest.mark.fashion_mnist
def test_ssh_device_cannot_inject_through_names_and_paths(tmp_path, mlp_model):
    """Device name, bundle directory, bundle file names and key path hold `; rm -rf` and `$(...)`;
    the fake ssh runs the remote command through a real shell exactly as sshd would."""
    home = tmp_path / "board"
    home.mkdir()
    (home / "canary").mkdir()
    (home / "canary" / "keep").write_text("must survive")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "scp"):
        fh.write_program(bin_dir / tool, _FAKE_SSH.format(python=sys.executable, home=str(home)))
    # `cd` first: an injected command would run in the per-run dir, which is removed afterwards.
    evil = "x; cd; rm -rf canary; touch pwned; $(cd; touch pwned2) `cd; touch pwned3`"
    bundle_dir = tmp_path / f"bundle {evil}"
    _bundle_with_evil_file(mlp_model, bundle_dir, evil)
    key = tmp_path / "key $(touch pwned4)"
    key.write_text("not a key")
    device = SshDevice(name=f"board; rm -rf canary $(touch pwned4)", host="127.0.0.1", port=2222, user="ci",
                       key=str(key), arch="x86_64", runtimes=["onnx"], python=sys.executable,
                       workdir=str(home / "remote"), ssh=str(bin_dir / "ssh"), scp=str(bin_dir / "scp"),
                       strict_host_key_checking="no")
    (home / "remote").mkdir()
    results = run_farm([bundle_dir], [device], FarmOptions(data="fashion-mnist:test", limit=100, repeats=2))
    [result] = results.results
    assert (home / "canary" / "keep").read_text() == "must survive"
    assert not [p for p in tmp_path.rglob("pwned*")], "a shell interpreted an inventory or bundle value"
    assert result.ok, f"{result.error}\n{result.stderr_tail}"
    assert not list((home / "remote").iterdir()), "the per-run remote dir must be removed"
    calls = [json.loads(line) for line in (home / "argv.log").read_text().splitlines()]
    assert calls and all(isinstance(arg, str) for call in calls for arg in call)
    for call in calls:
        assert device.name not in " ".join(call)
        assert call[call.index("-i") + 1] == str(key), "the key path must be one argv element"
    run_line = [c[-1] for c in calls if Path(c[0]).name == "ssh" and "runner.py" in c[-1]][0]
    words = shlex.split(run_line)
    assert words[0] == "cd" and words[2] == "&&" and words[3:5] == [sys.executable, "runner.py"]
    uploaded = next(home.joinpath("remote").parent.rglob("manifest.json"), None)
    assert uploaded is None or uploaded.is_file()


@pytest.mark.fashion_mnist
def test_ssh_run_timeout_kills_the_client_and_still_cleans_up(tmp_path, mlp_files):
    home = tmp_path / "board"
    (home / "remote").mkdir(parents=True)
    (home / "hang").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "scp"):
        fh.write_program(bin_dir / tool, _FAKE_SSH.format(python=sys.executable, home=str(home)))
    device = SshDevice(name="slow-board", host="127.0.0.1", user="ci", arch="x86_64", runtimes=["onnx"],
                       python=sys.executable, workdir=str(home / "remote"), ssh=str(bin_dir / "ssh"),
                       scp=str(bin_dir / "scp"), connect_timeout=1.0, run_timeout=1.0)
    started = time.monotonic()
    results = run_farm([mlp_files / "bundles" / "mlp_onnx"], [device],
                       FarmOptions(data="fashion-mnist:test", limit=50, repeats=2, retries=0))
    [result] = results.results
    assert time.monotonic() - started < 30
    assert result.status == "error" and "timed out after 2 s" in result.error and result.attempts == 1
    assert not list((home / "remote").iterdir()), "the remote dir is removed after a timeout too"


@pytest.mark.fashion_mnist
def test_ssh_board_verifies_its_own_copy_before_running(tmp_path, mlp_files):
    """The copy on the board is hashed there; a file that arrives altered is an error result
    and nothing runs."""
    home = tmp_path / "board"
    (home / "remote").mkdir(parents=True)
    (home / "corrupt").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "scp"):
        fh.write_program(bin_dir / tool, _FAKE_SSH.format(python=sys.executable, home=str(home)))
    device = SshDevice(name="flaky-board", host="127.0.0.1", user="ci", arch="x86_64", runtimes=["onnx"],
                       python=sys.executable, workdir=str(home / "remote"), ssh=str(bin_dir / "ssh"),
                       scp=str(bin_dir / "scp"))
    results = run_farm([mlp_files / "bundles" / "mlp_onnx"], [device],
                       FarmOptions(data="fashion-mnist:test", limit=20, repeats=1, retries=0))
    [result] = results.results
    assert result.status == "error" and "model.onnx" in result.error and "on the board" in result.error, result.error
    calls = [json.loads(line) for line in (home / "argv.log").read_text().splitlines()]
    assert not [c for c in calls if "runner.py" in c[-1]], "nothing may run after a failed check"
    assert not list((home / "remote").iterdir())
    (home / "corrupt").unlink()
    results = run_farm([mlp_files / "bundles" / "mlp_onnx"], [device],
                       FarmOptions(data="fashion-mnist:test", limit=20, repeats=1, retries=0))
    assert results.results[0].ok, results.results[0].error


def _bundle_with_evil_file(model, bundle_dir: Path, evil: str):
    """An ONNX bundle whose directory and one extra listed file carry shell metacharacters."""
    from fwedge import ir
    from fwedge.bundle import write_bundle
    from fwedge.data import Preprocess
    from fwedge.targets.common import io_specs

    inputs, outputs = io_specs(model)

    def files(folder: Path):
        ir.save(model, folder / "model.onnx")
        (folder / f"notes {evil}.txt").write_text("odd name on purpose")

    return write_bundle(bundle_dir, target="onnx", arch="x86_64", precision="fp32", source_sha256="0" * 64,
                        inputs=inputs, outputs=outputs, write_files=files,
                        preprocess=Preprocess(resize=(28, 28), color="grayscale").to_dict())


# -- real sshd on loopback -------------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path):
    server = fh.Sshd(tmp_path / "sshd")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


@pytest.mark.ssh
@pytest.mark.fashion_mnist
def test_real_sshd_runs_bundle_and_cleans_up(tmp_path, sshd, mlp_model):
    """Debian's sshd on 127.0.0.1: copy, run, fetch, clean up, with hostile names on the way."""
    evil = "y; $(cd; touch canary-fwedge-test) `cd; touch canary-fwedge-test`"
    bundle_dir = tmp_path / f"b {evil}"
    _bundle_with_evil_file(mlp_model, bundle_dir, evil)
    inv = _write_inventory(tmp_path / "inv.toml", [
        {"name": "host", "kind": "local", "runtimes": ["onnx"]},
        sshd.device_entry(name="loopback; rm -rf canary $(touch pwned)", runtimes=["onnx"]),
    ])
    canary = Path.home() / "canary-fwedge-test"
    output = tmp_path / "results.json"
    run = CliRunner().invoke(cli, ["farm", "run", str(bundle_dir), "--inventory", str(inv),
                                   "--data", "fashion-mnist:test", "--limit", "200", "--repeats", "3",
                                   "-o", str(output)])
    assert run.exit_code == 0, run.output
    assert not canary.exists(), "the remote shell ran an injected command"
    results = load_results(output).results
    host = next(r for r in results if r.device == "host")
    board = next(r for r in results if r.device != "host")
    assert board.ok, f"{board.error}\n{board.stderr_tail}\n{(sshd.folder / 'sshd.log').read_text()[-1500:]}"
    assert board.accuracy == host.accuracy and board.samples == 200
    assert board.identity["uname"].startswith("Linux") and board.latency.iterations == 3
    assert not list((sshd.folder / "remote").iterdir()), "remote temp dir left behind"
    assert not list(tmp_path.rglob("pwned*")) and not (Path.home() / "pwned").exists()
    assert not canary.exists()
    log = (sshd.folder / "sshd.log").read_text()
    assert "Accepted publickey" in log


@pytest.mark.ssh
@pytest.mark.zig
@pytest.mark.fashion_mnist
def test_real_sshd_runs_a_c_bundle_for_the_host_arch(tmp_path, sshd, mlp_int8):
    """The C harness binary is copied to the board, run there, and its outputs fetched."""
    from fwedge.bundle import host_arch

    [bundle] = fh.c_bundles(mlp_int8, [host_arch()], tmp_path)
    inv = inventory.load_inventory(_write_inventory(tmp_path / "inv.toml", [
        {"name": "host", "kind": "local", "runtimes": ["c"]},
        sshd.device_entry(name="loopback-board", runtimes=["c"]),
    ]))
    results = run_farm([bundle], inv, FarmOptions(data="fashion-mnist:test", limit=LIMIT, repeats=REPEATS))
    host, board = (results.find(bundle.name, name) for name in ("host", "loopback-board"))
    assert host.ok and board.ok, f"{board.error}\n{board.stderr_tail}"
    assert board.accuracy == host.accuracy and board.device_kind == "ssh"
    assert board.identity["timer"].startswith("clock_gettime") and board.latency.iterations == REPEATS
    assert not list((sshd.folder / "remote").iterdir()), "remote temp dir left behind"


# -- check-then-run ------------------------------------------------------------------------------


@pytest.mark.fashion_mnist
def test_a_bundle_replaced_while_another_runs_is_an_error_result(tmp_path, mlp_files, mlp_model):
    """The farm loads both bundles at the start; the second one's model is swapped for a
    damaged one after the first finished (the progress hook runs between the two jobs on the
    one device). Verifying right before the run catches it."""
    bundles = tmp_path / "bundles"
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", bundles / "a_onnx")
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", bundles / "b_onnx")
    damaged = fh.zero_layer(mlp_model, "fc2_w")
    tampered = []

    def tamper(result):
        if result.bundle == "a_onnx":
            onnx.save(damaged, bundles / "b_onnx" / "model.onnx")
            tampered.append(result.bundle)

    results = run_farm([bundles / "a_onnx", bundles / "b_onnx"], [LocalDevice(name="host", runtimes=["onnx"])],
                       FarmOptions(data="fashion-mnist:test", limit=50, repeats=2), progress=tamper)
    assert tampered == ["a_onnx"]
    by_bundle = {r.bundle: r for r in results.results}
    assert by_bundle["a_onnx"].ok, by_bundle["a_onnx"].error
    assert by_bundle["b_onnx"].status == "error"
    assert "model.onnx" in by_bundle["b_onnx"].error and "does not match the manifest" in by_bundle["b_onnx"].error


@pytest.mark.fashion_mnist
def test_the_device_runs_a_private_copy_of_the_verified_bundle(tmp_path, mlp_files):
    """What the device gets is a copy outside the original folder, so a later swap of the
    original cannot reach the running bundle."""
    bundle_dir = tmp_path / "mlp_onnx"
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", bundle_dir)
    seen = []

    class Recording(LocalDevice):
        def run(self, bundle, inputs, repeats):
            seen.append(bundle.path)
            assert bundle.name == "mlp_onnx"
            assert not bundle.path.resolve().is_relative_to(bundle_dir.resolve())
            return super().run(bundle, inputs, repeats)

    results = run_farm([bundle_dir], [Recording(name="host", runtimes=["onnx"])],
                       FarmOptions(data="fashion-mnist:test", limit=20, repeats=1))
    assert results.results[0].ok, results.results[0].error
    assert results.results[0].bundle_path == str(bundle_dir)
    assert len(seen) == 1 and not seen[0].exists(), "the private copy is removed after the run"


# -- host runtimes run in a child process ----------------------------------------------------------


def _ncnn_bundle_with_renamed_input(model, out_dir: Path) -> Path:
    """An ncnn bundle whose manifest names an input the .param file does not have (digest
    recomputed, as anyone editing the manifest can). ncnn's Extractor then divides by zero."""
    from fwedge.bundle import seal_manifest
    from fwedge.data import Preprocess
    from fwedge.targets import ExportOptions, get_target

    get_target("ncnn").export(model, out_dir, ExportOptions(
        preprocess=Preprocess(resize=(28, 28), color="grayscale").to_dict()))
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["name"] = "no_such_blob"
    manifest_path.write_text(json.dumps(seal_manifest(manifest)))
    return out_dir


@pytest.mark.ncnn
@pytest.mark.fashion_mnist
def test_a_crashing_host_runtime_is_an_error_result_and_results_survive(tmp_path, mlp_files, mlp_model):
    bundles = tmp_path / "bundles"
    _ncnn_bundle_with_renamed_input(mlp_model, bundles / "crash_ncnn")
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", bundles / "mlp_onnx")
    inv = _write_inventory(tmp_path / "inv.toml", [{"name": "host", "kind": "local", "runtimes": ["onnx", "ncnn"]}])
    output = tmp_path / "results.json"
    run = CliRunner().invoke(cli, ["farm", "run", str(bundles / "crash_ncnn"), str(bundles / "mlp_onnx"),
                                   "--inventory", str(inv), "--data", "fashion-mnist:test", "--limit", "20",
                                   "--repeats", "2", "--retries", "0", "-o", str(output)])
    assert run.exception is None or isinstance(run.exception, SystemExit), run.output
    by_bundle = {r.bundle: r for r in load_results(output).results}
    crashed = by_bundle["crash_ncnn"]
    assert crashed.status == "error" and "killed by SIG" in crashed.error, crashed.error
    assert by_bundle["mlp_onnx"].ok, by_bundle["mlp_onnx"].error


@pytest.mark.ncnn
@pytest.mark.fashion_mnist
def test_fwedge_run_reports_a_crashing_runtime_in_one_line(tmp_path, mlp_model):
    bundle = _ncnn_bundle_with_renamed_input(mlp_model, tmp_path / "crash_ncnn")
    run = CliRunner().invoke(cli, ["run", str(bundle), "--data", "fashion-mnist:test", "--limit", "8"])
    assert run.exit_code == 2, run.output
    assert "killed by SIG" in run.output and "Traceback" not in run.output


@pytest.mark.fashion_mnist
def test_host_runtime_runs_in_a_child_process(tmp_path, mlp_files, monkeypatch):
    """The runtime is never imported into the farm's own process; outputs and latencies come
    back from the child."""
    import os

    from fwedge.targets.onnx import OnnxTarget

    pids = []
    original = OnnxTarget.run
    monkeypatch.setattr(OnnxTarget, "run", lambda *a, **k: (pids.append(os.getpid()), original(*a, **k))[1])
    results = run_farm([mlp_files / "bundles" / "mlp_onnx"], [LocalDevice(name="host", runtimes=["onnx"])],
                       FarmOptions(data="fashion-mnist:test", limit=20, repeats=3))
    [result] = results.results
    assert result.ok, result.error
    assert pids == [], "the onnx runtime ran inside the farm process"
    assert result.latency.iterations == 3 and result.identity["child_pid"] != os.getpid()


def test_the_c_harness_copy_is_hashed_before_it_runs(tmp_path):
    """run_native is also called with a bundle loaded long before (qemu, local C); a binary
    swapped in the meantime is refused instead of run."""
    from fwedge.device_farm import harness
    from fwedge.device_farm.device import DeviceRunError
    from fwedge.targets.c import BINARY

    bundle = fh.fake_c_bundle(tmp_path / "c_bundle", "x86_64")
    swapped = fh.write_program(tmp_path / "c_bundle" / BINARY, f"""
        #!/bin/sh
        touch {shlex.quote(str(tmp_path / "ran"))}
    """)
    with pytest.raises(DeviceRunError, match="does not match the manifest"):
        harness.run_native(bundle, {"input": np.zeros((1, 1, 28, 28), np.float32)}, 1, timeout=10, what="test")
    assert swapped.exists() and not (tmp_path / "ran").exists()


@pytest.mark.fashion_mnist
def test_a_baseline_changed_before_its_job_fails_both_roles(tmp_path, mlp_files, mlp_model, monkeypatch):
    from fwedge.device_farm import runner

    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", tmp_path / "A" / "mlp")
    shutil.copytree(mlp_files / "bundles" / "mlp_onnx", tmp_path / "B" / "mlp")
    original = runner._eval_set

    def tamper_then_load(shared, bundle):  # runs inside the job, after the farm loaded both bundles
        onnx.save(fh.zero_layer(mlp_model, "fc2_w"), tmp_path / "A" / "mlp" / "model.onnx")
        return original(shared, bundle)

    monkeypatch.setattr(runner, "_eval_set", tamper_then_load)
    results = run_farm([tmp_path / "B" / "mlp"], [LocalDevice(name="host", runtimes=["onnx"])],
                       FarmOptions(data="fashion-mnist:test", limit=20, repeats=2, baseline_bundles=str(tmp_path / "A")))
    baseline, candidate = results.results
    assert baseline.role == "baseline" and baseline.status == "error" and "does not match the manifest" in baseline.error
    assert candidate.status == "error" and "failed verification" in candidate.error


@pytest.mark.fashion_mnist
def test_farm_run_says_when_agreement_cannot_be_computed(tmp_path, mlp_files):
    """A bundle with no recorded reference and no --reference: a note, not a silently blank column."""
    inv = _write_inventory(tmp_path / "inv.toml", [{"name": "host", "kind": "local", "runtimes": ["onnx"]}])
    argv = ["farm", "run", str(mlp_files / "bundles" / "mlp_onnx"), "--inventory", str(inv), "--data",
            "fashion-mnist:test", "--limit", "16", "--repeats", "2", "-o", str(tmp_path / "r.json")]
    bare = CliRunner().invoke(cli, argv)
    assert bare.exit_code == 0, bare.output
    assert "note: no FP32 reference for mlp_onnx: agreement and SQNR vs FP32 stay blank" in bare.output
    given = CliRunner().invoke(cli, argv + ["--reference", str(mlp_files / "mlp.onnx")])
    assert given.exit_code == 0 and "no FP32 reference" not in given.output
    result = load_results(tmp_path / "r.json").results[0]
    assert result.fidelity["top1_agreement"] == 1.0
    # The reference is the bundle's own model: its accuracy on the same 16 labelled samples is the bundle's.
    assert result.fidelity["reference_accuracy"] == result.accuracy
