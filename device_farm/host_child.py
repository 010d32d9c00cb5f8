"""Host runtimes in a child process, so that a runtime that crashes (SIGSEGV, SIGFPE) or hangs takes
down only the child: `python -m fwedge.device_farm.host_child {run,serve} ...`.

Arrays travel as .npy files in a private work folder (read with allow_pickle=False); requests
and replies are small JSON documents. A fresh interpreter is started (never fork: onnxruntime
and OpenVINO keep threads that a forked child would inherit in an unknown state).
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fwedge.bundle import Bundle
from fwedge.device_farm.device import DeviceRunError, describe_exit, run_process, tail
from fwedge.errors import FwEdgeError

log = logging.getLogger(__name__)

REQUEST = "request.json"
REPLY = "reply.json"
# Exit status of a child that reports a FwEdgeError in its reply.
ERROR_EXIT = 2


def _save_arrays(folder: Path, prefix: str, arrays: dict[str, np.ndarray]) -> list[dict]:
    listed = []
    for index, (name, value) in enumerate(arrays.items()):
        file = f"{prefix}{index}.npy"
        np.save(folder / file, np.ascontiguousarray(value), allow_pickle=False)
        listed.append({"name": name, "file": file})
    return listed


def _load_arrays(folder: Path, listed, what: str) -> dict[str, np.ndarray]:
    if not isinstance(listed, list):
        raise DeviceRunError(f"{what}: malformed array list")
    arrays = {}
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("file"), str) \
                or "/" in entry["file"] or not entry["file"].endswith(".npy"):
            raise DeviceRunError(f"{what}: malformed array entry {str(entry)[:80]}")
        try:
            arrays[entry["name"]] = np.load(folder / entry["file"], allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DeviceRunError(f"{what}: cannot read {entry['file']} ({exc})") from exc
    return arrays


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def _read_reply(path: Path, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        reply = json.loads(path.read_text())
    except ValueError as exc:
        raise DeviceRunError(f"{what}: malformed reply ({exc})") from exc
    if not isinstance(reply, dict):
        raise DeviceRunError(f"{what}: malformed reply")
    return reply


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fwedge.device_farm.host_child", *args]


def run_isolated(bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int, *, timeout: float, what: str):
    """Run `host_runtime.run_host_runtime` on `bundle` in a fresh child interpreter.

    The child loads (and verifies) the bundle itself, feeds every row, and times the
    single-sample calls on its own clock; only the outputs and latencies come back.

    Returns:
        DeviceRun.

    Raises:
        DeviceRunError: the runtime failed, the child crashed, timed out or replied nonsense.
    """
    from fwedge.device_farm.results import DeviceRun

    with tempfile.TemporaryDirectory(prefix="fwedge-host-") as temp:
        work = Path(temp)
        request = {"bundle": str(bundle.path.resolve()), "repeats": int(repeats),
                   "inputs": _save_arrays(work, "in", inputs)}
        _write_json(work / REQUEST, request)
        done = run_process(_child_argv("run", str(work)), timeout=timeout, what=what, cwd=work, check=False)
        reply = _read_reply(work / REPLY, what)
        if reply is not None and "error" in reply:
            raise DeviceRunError(str(reply["error"]).splitlines()[0] if reply["error"] else what, done.stderr)
        if done.returncode != 0 or reply is None:
            stderr = done.stderr.strip()
            message = f"{what}: runtime process {describe_exit(done.returncode)}"
            raise DeviceRunError(f"{message}; stderr: {tail(stderr, 300)}" if stderr else message, done.stderr)
        outputs = _load_arrays(work, reply.get("outputs"), what)
        latencies = reply.get("latencies_ms")
        if not isinstance(latencies, list) or not all(isinstance(v, (int, float)) for v in latencies):
            raise DeviceRunError(f"{what}: reply holds no latencies")
        identity = reply.get("identity") if isinstance(reply.get("identity"), dict) else {}
    return DeviceRun(outputs=outputs, latencies_ms=[float(v) for v in latencies], stderr=done.stderr,
                     identity=identity)


class HostRuntimeProcess:
    """A child interpreter that keeps one bundle's runtime loaded and serves run() calls.

    Used by `fwedge run`, which calls the runtime once per batch: a crash in the runtime
    becomes a DeviceRunError naming the signal, instead of killing the command.
    """

    def __init__(self, bundle: Bundle, timeout: float = 600.0, exact_int8: bool = False):
        self.bundle = bundle
        self.timeout = timeout
        self._temp = tempfile.TemporaryDirectory(prefix="fwedge-host-")
        self.work = Path(self._temp.name)
        self.calls = 0
        self.child = subprocess.Popen(
            _child_argv("serve", str(bundle.path.resolve()), str(self.work), *(["--exact-int8"] if exact_int8 else [])),
            cwd=self.work,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.work / "stderr.txt", "wb"),
            start_new_session=True,
        )

    def _failure(self, what: str) -> DeviceRunError:
        if self.child.poll() is None:
            self.child.kill()
        returncode = self.child.wait()
        stderr = (self.work / "stderr.txt").read_text(errors="replace").strip()
        message = f"{self.bundle.target} runtime for bundle '{self.bundle.name}' {what} ({describe_exit(returncode)})"
        return DeviceRunError(f"{message}; stderr: {tail(stderr, 300)}" if stderr else message, stderr)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch in the child.

        Raises:
            DeviceRunError: the runtime failed or the child died.
        """
        self.calls += 1
        folder = self.work / f"call{self.calls}"
        folder.mkdir()
        line = json.dumps({"folder": folder.name, "inputs": _save_arrays(folder, "in", feeds)}) + "\n"
        try:
            self.child.stdin.write(line.encode())
            self.child.stdin.flush()
            # The child writes each reply as one flushed line, so a readable pipe holds it whole.
            ready, _, _ = select.select([self.child.stdout], [], [], self.timeout)
            if not ready:
                raise self._failure(f"timed out after {self.timeout:g} s")
            answer = self.child.stdout.readline()
        except OSError:
            answer = b""
        if not answer:
            raise self._failure("crashed")
        try:
            reply = json.loads(answer)
        except ValueError as exc:
            raise self._failure("replied nonsense") from exc
        if not isinstance(reply, dict):
            raise self._failure("replied nonsense")
        if "error" in reply:
            raise DeviceRunError(str(reply["error"]).splitlines()[0])
        outputs = _load_arrays(folder, reply.get("outputs"), f"bundle '{self.bundle.name}'")
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
        return outputs

    def close(self) -> None:
        if self.child.poll() is None:
            try:
                self.child.stdin.close()
                self.child.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.child.kill()
                self.child.wait()
        self._temp.cleanup()


# -- the child side ------------------------------------------------------------------------------


def _child_run(work: Path) -> int:
    from fwedge.bundle import load_bundle
    from fwedge.device_farm.host_runtime import run_host_runtime

    try:
        request = json.loads((work / REQUEST).read_text())
        bundle = load_bundle(request["bundle"])
        inputs = _load_arrays(work, request["inputs"], f"bundle '{bundle.name}'")
        run = run_host_runtime(bundle, inputs, int(request["repeats"]))
    except FwEdgeError as exc:
        _write_json(work / REPLY, {"error": str(exc)})
        return ERROR_EXIT
    _write_json(work / REPLY, {"outputs": _save_arrays(work, "out", run.outputs), "latencies_ms": run.latencies_ms,
                               "identity": {**run.identity, "child_pid": os.getpid()}})
    return 0


def _child_serve(bundle_path: str, work: Path, exact_int8: bool = False) -> int:
    from fwedge.bundle import load_bundle
    from fwedge.device_farm.host_runtime import as_output_dict
    from fwedge.targets import get_target

    reply_to = sys.stdout
    sys.stdout = sys.stderr  # runtimes that print must not corrupt the reply stream
    try:
        bundle = load_bundle(bundle_path)
        target = get_target(bundle.target)
    except FwEdgeError as exc:
        bundle = target = None
        failure = str(exc)
    for line in sys.stdin:
        request = json.loads(line)
        folder = work / request["folder"]
        try:
            if target is None:
                raise DeviceRunError(failure)
            feeds = _load_arrays(folder, request["inputs"], f"bundle '{bundle.name}'")
            outputs = target.run(bundle, feeds, exact_int8=exact_int8)
            reply = {"outputs": _save_arrays(folder, "out", as_output_dict(bundle, outputs))}
        except FwEdgeError as exc:
            reply = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a runtime's own exception types
            reply = {"error": f"{bundle.target} runtime failed on bundle '{bundle.name}': {type(exc).__name__}: {exc}"}
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if len(argv) == 2 and argv[0] == "run":
        return _child_run(Path(argv[1]))
    if len(argv) in (3, 4) and argv[0] == "serve" and argv[3:] in ([], ["--exact-int8"]):
        return _child_serve(argv[1], Path(argv[2]), exact_int8=argv[3:] == ["--exact-int8"])
    sys.stderr.write("usage: python -m fwedge.device_farm.host_child run WORK | serve BUNDLE WORK [--exact-int8]\n")
    return ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
