"""SSH boards: copy a bundle to a per-run temp dir, verify it there, run its harness or the runner script,
fetch, clean up.

Every ssh/scp call is an argument list (no local shell). The remote side of ssh always goes
through the login shell, so every remote command is built with shlex.join from values that
are validated first (host, user, paths) or generated here (the mktemp directory).
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fwedge.bundle import MANIFEST, Bundle
from fwedge.device_farm import harness
from fwedge.device_farm.device import Device, DeviceRunError, device_kind, run_process
from fwedge.device_farm.results import DeviceRun
from fwedge.errors import DeviceError
from fwedge.ir import sha256_file

log = logging.getLogger(__name__)

RUNNER_SCRIPT = Path(__file__).with_name("remote_runner.py")
# Targets the shipped runner script runs with the board's Python (onnxruntime, tflite-runtime).
SCRIPT_TARGETS = ("onnx", "tflite")
JOB_DIR = "job"
# the staged name of another build of a C bundle's sources (run_build), beside the bundle
OTHER_BUILD = "fwedge-build"

_HOST = re.compile(r"^(?!-)[A-Za-z0-9.-]{1,253}$|^\[?[0-9A-Fa-f:.]+\]?$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
_REMOTE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
_PROGRAM = re.compile(r"^[A-Za-z0-9._/+-]+$")
_HOST_KEY_POLICIES = ("yes", "no", "accept-new")
_OPTION_PATH = re.compile(r"[^\s\"'\\%\x00-\x1f\x7f]+")

# ssh_options is an allow-list: options that only tune the connection, each with the values it
# may take. Anything else can run a local program (ProxyCommand, LocalCommand, KnownHostsCommand,
# Match exec), load code (PKCS11Provider, SecurityKeyProvider), read or write local files
# (Include, ControlPath, IdentityFile), hand local resources to the board (ForwardAgent,
# SendEnv, port forwards) or bypass a checked device field (HostName, User, Port). Keys are
# case-insensitive for ssh, so they are compared in lower case.
_YES_NO = re.compile(r"^(yes|no)$")
_COUNT = re.compile(r"^[0-9]{1,6}$")
_ALGORITHMS = re.compile(r"^[+^-]?[A-Za-z0-9][A-Za-z0-9@._+-]*(,[A-Za-z0-9][A-Za-z0-9@._+-]*)*$")
SSH_OPTION_VALUES = {
    "ciphers": _ALGORITHMS, "macs": _ALGORITHMS, "kexalgorithms": _ALGORITHMS, "hostkeyalgorithms": _ALGORITHMS,
    "pubkeyacceptedalgorithms": _ALGORITHMS, "pubkeyacceptedkeytypes": _ALGORITHMS,
    "casignaturealgorithms": _ALGORITHMS, "hostbasedacceptedalgorithms": _ALGORITHMS,
    "connecttimeout": _COUNT, "connectionattempts": _COUNT, "serveraliveinterval": _COUNT,
    "serveralivecountmax": _COUNT, "numberofpasswordprompts": _COUNT,
    "compression": _YES_NO, "tcpkeepalive": _YES_NO, "checkhostip": _YES_NO, "identitiesonly": _YES_NO,
    "pubkeyauthentication": _YES_NO, "passwordauthentication": _YES_NO, "kbdinteractiveauthentication": _YES_NO,
    "gssapiauthentication": _YES_NO, "hostbasedauthentication": _YES_NO,
    "updatehostkeys": re.compile(r"^(yes|no|ask)$"),
    "addressfamily": re.compile(r"^(any|inet|inet6)$"),
    "hostkeyalias": re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"),
    "ipqos": re.compile(r"^[a-z0-9]{1,16}( [a-z0-9]{1,16})?$"),
    "rekeylimit": re.compile(r"^([0-9]{1,12}[KMG]?|default|none)( [0-9]{1,9}[smhdw]?|none)?$"),
    "preferredauthentications": re.compile(r"^[a-z-]+(,[a-z-]+)*$"),
}
# Why the options people reach for most are refused; the rest get the general reason.
_REFUSED_BECAUSE = {
    **dict.fromkeys(("proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "match",
                     "xauthlocation", "proxyusefdpass"), "it runs a local command"),
    **dict.fromkeys(("pkcs11provider", "securitykeyprovider"), "it loads a local library into ssh"),
    "include": "it reads another ssh configuration file",
    "remotecommand": "it replaces the command fwedge runs on the board",
    "proxyjump": "it connects through another host; configure jump hosts in the machine's ~/.ssh/config",
    **dict.fromkeys(("forwardagent", "forwardx11", "forwardx11trusted", "sendenv", "setenv", "localforward",
                     "remoteforward", "dynamicforward", "tunnel", "tunneldevice", "streamlocalbindunlink",
                     "permitremoteopen", "clearallforwardings"), "it hands local resources to the board"),
    **dict.fromkeys(("controlmaster", "controlpath", "controlpersist", "identityagent", "certificatefile",
                     "globalknownhostsfile", "revokedhostkeys", "userknownhostsfile", "identityfile"),
                    "it names a local file or socket (use the device's key and known_hosts fields)"),
    "hostname": "it replaces the device's checked host", "user": "it replaces the device's checked user",
    "port": "use the device's port field",
    "stricthostkeychecking": "use the device's strict_host_key_checking field",
    **dict.fromkeys(("batchmode", "loglevel"), "fwedge sets it"),
}
# An inventory names the ssh and scp programs by name only, found on PATH: a path would let
# the inventory pick any local file to run.
CLIENT_PROGRAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def check_ssh_option(option, device: str) -> None:
    """Refuse an ssh_options entry that is not `Key=Value` with an allowed key and a plain value.

    Raises:
        DeviceError: naming the device, the option and why it is refused.
    """
    if not isinstance(option, str) or "=" not in option:
        raise DeviceError(f"ssh device {device!r}: ssh option {option!r} must be Key=Value")
    key, value = option.split("=", 1)
    lowered = key.lower()
    if lowered not in SSH_OPTION_VALUES:
        why = _REFUSED_BECAUSE.get(lowered, "only options that tune the connection are allowed: "
                                            + ", ".join(sorted(SSH_OPTION_VALUES)))
        raise DeviceError(f"ssh device {device!r}: ssh option {key[:60]!r} is not allowed: {why}")
    if not SSH_OPTION_VALUES[lowered].fullmatch(value):
        raise DeviceError(f"ssh device {device!r}: ssh option {key!r} value {value[:80]!r} is not allowed "
                          f"(expected to match {SSH_OPTION_VALUES[lowered].pattern})")


def _require(pattern: re.Pattern, value: str, device: str, what: str) -> None:
    # fullmatch: with match, "$" also matches before a trailing newline
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value.split("/"):
        raise DeviceError(f"ssh device {device!r}: {what} {value!r} is not allowed "
                          f"(expected to match {pattern.pattern})")


@device_kind("ssh")
@dataclass
class SshDevice(Device):
    """A board reached over ssh.

    Attributes:
        host, port, user: where to connect; host and user are validated (no option-like or
            shell-special characters).
        key: private key file (passed as one argv element to -i).
        arch: the board's architecture (for C bundles).
        runtimes: what the board runs: "c" (harness binaries) and/or "onnx", "tflite" (run by
            the shipped runner script with `python`).
        python: the board's Python for the runner script.
        workdir: parent of the per-run temp dir on the board.
        connect_timeout: seconds for the TCP connect and key exchange (ssh ConnectTimeout).
        run_timeout: seconds for one remote harness run.
        strict_host_key_checking: yes | no | accept-new (ssh StrictHostKeyChecking).
        known_hosts: UserKnownHostsFile, empty for ssh's default.
        ssh_options: extra `-o Key=Value` options (each one argv element), from the allow-list
            SSH_OPTION_VALUES only (check_ssh_option).
        ssh, scp: client programs (an inventory may name them, found on PATH, but not give a
            path: inventory.device_from_entry refuses that).
    """

    host: str = ""
    port: int = 22
    user: str = ""
    key: str = ""
    arch: str = ""
    runtimes: list[str] = field(default_factory=lambda: ["c"])
    python: str = "python3"
    workdir: str = "/tmp"
    connect_timeout: float = 10.0
    run_timeout: float = 600.0
    strict_host_key_checking: str = "yes"
    known_hosts: str = ""
    ssh_options: list[str] = field(default_factory=list)
    ssh: str = "ssh"
    scp: str = "scp"

    def __post_init__(self) -> None:
        _require(_HOST, self.host, self.name, "host")
        if self.user:
            _require(_USER, self.user, self.name, "user")
        _require(_REMOTE_PATH, self.workdir, self.name, "workdir")
        _require(_PROGRAM, self.python, self.name, "python")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise DeviceError(f"ssh device {self.name!r}: port must be 1..65535, got {self.port!r}")
        if self.strict_host_key_checking not in _HOST_KEY_POLICIES:
            raise DeviceError(f"ssh device {self.name!r}: strict_host_key_checking must be one of "
                              f"{', '.join(_HOST_KEY_POLICIES)}, got {self.strict_host_key_checking!r}")
        for option in self.ssh_options:
            check_ssh_option(option, self.name)
        # known_hosts travels inside an `-o UserKnownHostsFile=...` line that ssh tokenizes
        # (quotes, whitespace, %-tokens); key is a separate argv element after -i.
        if self.known_hosts and not _OPTION_PATH.fullmatch(self.known_hosts):
            raise DeviceError(f"ssh device {self.name!r}: known_hosts {self.known_hosts[:120]!r} is not allowed "
                              "(no whitespace, quotes, backslashes, % or control characters)")
        if "\0" in self.key:
            raise DeviceError(f"ssh device {self.name!r}: key path holds a NUL byte")
        self._identity: dict | None = None

    # -- argv builders ---------------------------------------------------------------------

    def _options(self) -> list[str]:
        options = [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o", f"StrictHostKeyChecking={self.strict_host_key_checking}",
            "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
        ]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            options += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        for option in self.ssh_options:
            options += ["-o", option]
        return options

    @property
    def destination(self) -> str:
        host = self.host if ":" not in self.host or self.host.startswith("[") else f"[{self.host}]"
        return f"{self.user}@{self.host}" if self.user else host

    def ssh_argv(self, remote_words: list[str]) -> list[str]:
        """ssh argv running `remote_words` on the board, each word quoted for the remote shell."""
        return [self.ssh, *self._options(), "-p", str(self.port), "--", self.destination,
                shlex.join(remote_words)]

    def ssh_argv_script(self, remote_command: str) -> list[str]:
        """ssh argv for a remote command line already assembled from shlex.join'ed parts."""
        return [self.ssh, *self._options(), "-p", str(self.port), "--", self.destination, remote_command]

    def scp_argv(self, sources: list[str], target: str) -> list[str]:
        return [self.scp, *self._options(), "-q", "-p", "-r", "-P", str(self.port), "--", *sources, target]

    def remote(self, path: str) -> str:
        """scp's remote spec for a validated remote path."""
        _require(_REMOTE_PATH, path, self.name, "remote path")
        return f"{self.destination}:{path}"

    # -- Device interface ------------------------------------------------------------------

    def why_not(self, bundle: Bundle) -> str | None:
        if bundle.target == "c":
            if "c" not in self.runtimes:
                return f"{self.name} has no C runtime listed"
            if bundle.arch != self.arch:
                return f"C bundle for {bundle.arch}; {self.name} is {self.arch or 'of unknown arch'}"
            return None
        if bundle.target not in self.runtimes:
            return f"{self.name} lists runtimes {self.runtimes}, not {bundle.target}"
        if bundle.target not in SCRIPT_TARGETS:
            return f"the ssh runner script runs {', '.join(SCRIPT_TARGETS)} bundles, not {bundle.target}"
        return None

    def bundle_kinds(self) -> list[str]:
        return [f"c-{self.arch}" if runtime == "c" else runtime for runtime in self.runtimes]

    def _timeout(self, seconds: float) -> float:
        return self.connect_timeout + seconds

    def state(self) -> str:
        try:
            run_process(self.ssh_argv(["true"]), timeout=self._timeout(10), what=f"ssh {self.name}")
        except DeviceError as exc:
            return f"unreachable ({str(exc).splitlines()[0][:120]})"
        return "ready"

    def identity(self) -> dict:
        base = {"kind": self.kind, "name": self.name, "arch": self.arch, "host": self.host, "port": self.port}
        if self._identity is None:
            try:
                done = run_process(self.ssh_argv(["uname", "-srm"]), timeout=self._timeout(20),
                                   what=f"ssh {self.name}: uname")
                self._identity = {"uname": done.stdout.strip()}
            except DeviceError:
                self._identity = {}
        return {**base, **self._identity}

    def run(self, bundle: Bundle, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        return self.run_build(bundle, None, inputs, repeats)

    def run_build(self, bundle: Bundle, binary: Path | None, inputs: dict[str, np.ndarray], repeats: int) -> DeviceRun:
        """Run `bundle` on the board; `binary` (C bundles) runs another build of its sources in
        place of its harness: fwedge profile's -DFW_PROFILE build, uploaded beside the bundle
        under a fixed name and hashed on the board like the bundle's own files."""
        reason = self.why_not(bundle) or (None if binary is None or bundle.target == "c" else "only C bundles have builds")
        if reason:
            raise DeviceRunError(f"device {self.name!r} cannot run bundle '{bundle.name}': {reason}")
        with tempfile.TemporaryDirectory(prefix="fwedge-ssh-") as temp:
            staging = Path(temp) / JOB_DIR
            staging.mkdir()
            # The bundle keeps its own directory name on the board (it shows up in `ps` and in
            # left-overs); that name is user-controlled, so it only ever travels shlex-quoted.
            _stage_bundle(bundle, staging / bundle.name)
            if bundle.target == "c":
                job = harness.prepare(bundle, inputs, staging, repeats)
                command = [f"./{bundle.name}/{job.executable}", *job.args]
                if binary is not None:
                    shutil.copy2(binary, staging / OTHER_BUILD)
                    (staging / OTHER_BUILD).chmod(0o755)
                    command[0] = f"./{OTHER_BUILD}"
                output_file = job.output_file
            else:
                np.savez(staging / "inputs.npz", **inputs)
                shutil.copy2(RUNNER_SCRIPT, staging / "runner.py")
                command = [self.python, "runner.py", bundle.name, "inputs.npz", "outputs.npz", str(repeats)]
                output_file = "outputs.npz"
            remote_dir = self._make_remote_dir()
            try:
                what = f"ssh {self.name}"
                run_process(self.scp_argv([str(staging)], self.remote(remote_dir + "/")),
                            timeout=self._timeout(self.run_timeout), what=f"{what}: upload")
                job_dir = f"{remote_dir}/{JOB_DIR}"
                self._verify_remote_copy(bundle, f"{job_dir}/{bundle.name}")
                if binary is not None:
                    self._verify_remote_files(bundle, job_dir, {OTHER_BUILD: sha256_file(staging / OTHER_BUILD)})
                line = f"cd {shlex.quote(job_dir)} && {shlex.join(command)}"
                done = run_process(self.ssh_argv_script(line), timeout=self._timeout(self.run_timeout),
                                   what=f"{what}: run '{bundle.name}'")
                fetched = Path(temp) / "fetched"
                fetched.mkdir()
                run_process(self.scp_argv([self.remote(f"{job_dir}/{output_file}")], str(fetched / output_file)),
                            timeout=self._timeout(self.run_timeout), what=f"{what}: download")
                if bundle.target == "c":
                    outputs, latencies = harness.collect(bundle, job, done.stdout, fetched / output_file)
                    timer = "clock_gettime (harness)"
                else:
                    outputs, latencies = _read_script_results(bundle, done.stdout, fetched / output_file)
                    timer = "time.perf_counter_ns (runner script)"
            finally:
                self._remove_remote_dir(remote_dir)
        return DeviceRun(outputs=outputs, latencies_ms=latencies, stderr=done.stderr, stdout=done.stdout,
                         identity={"timer": timer, "remote_dir": remote_dir})

    def _verify_remote_copy(self, bundle: Bundle, remote_bundle: str) -> None:
        """Hash the uploaded copy on the board (sha256sum) and compare it with the manifest.

        The bundle's file names passed fwedge.bundle.check_bundle_path (no newline, no
        backslash), so sha256sum prints each as is.

        Raises:
            DeviceRunError: sha256sum failed, or a file on the board differs from the manifest.
        """
        self._verify_remote_files(bundle, remote_bundle, {MANIFEST: sha256_file(bundle.path / MANIFEST), **bundle.files})

    def _verify_remote_files(self, bundle: Bundle, remote_dir: str, expected: dict[str, str]) -> None:
        """sha256sum `expected`'s files in `remote_dir` on the board and compare.

        Raises:
            DeviceRunError: sha256sum failed, or a file on the board differs.
        """
        names = list(expected)
        line = f"cd {shlex.quote(remote_dir)} && {shlex.join(['sha256sum', '--', *names])}"
        done = run_process(self.ssh_argv_script(line), timeout=self._timeout(self.run_timeout),
                           what=f"ssh {self.name}: verify '{bundle.name}' on the board")
        found = {}
        for row in done.stdout.splitlines():
            digest, _, name = row.partition("  ")
            found[name.lstrip("*")] = digest.strip()
        for name in names:
            if found.get(name) != expected[name]:
                raise DeviceRunError(f"ssh {self.name}: bundle '{bundle.name}': {name!r} on the board does not match "
                                     f"the verified copy (sha256 {str(found.get(name))[:12]}…, expected "
                                     f"{expected[name][:12]}…); not running it")

    def _make_remote_dir(self) -> str:
        template = f"{self.workdir.rstrip('/')}/fwedge-run.XXXXXXXX"
        done = run_process(self.ssh_argv(["mktemp", "-d", template]), timeout=self._timeout(30),
                           what=f"ssh {self.name}: mktemp")
        path = done.stdout.strip()
        if not _REMOTE_PATH.match(path) or not path.startswith(self.workdir.rstrip("/") + "/fwedge-run."):
            raise DeviceRunError(f"ssh {self.name}: mktemp returned an unexpected path {path!r}")
        return path

    def _remove_remote_dir(self, path: str) -> None:
        try:
            run_process(self.ssh_argv(["rm", "-rf", "--", path]), timeout=self._timeout(30),
                        what=f"ssh {self.name}: clean up", cancellable=False)
        except DeviceError as exc:
            log.warning("ssh %s: could not remove %s on the board: %s", self.name, path, exc)


def _stage_bundle(bundle: Bundle, target: Path) -> None:
    """Copy the manifest and every file it lists (and nothing else) into `target`."""
    from fwedge.device_farm.device import check_within

    target.mkdir()
    shutil.copy2(bundle.path / MANIFEST, target / MANIFEST)
    for relative in bundle.files:
        source = check_within(bundle.path, relative)
        destination = check_within(target, relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _read_script_results(bundle: Bundle, stdout: str, outputs_path: Path) -> tuple[dict[str, np.ndarray], list[float]]:
    latencies = None
    for line in stdout.splitlines():
        if line.startswith("FWEDGE_LATENCIES_MS "):
            latencies = json.loads(line.split(" ", 1)[1])
    if latencies is None:
        raise DeviceRunError(f"runner script for '{bundle.name}' printed no latencies", stderr=stdout[-2000:])
    if not outputs_path.is_file():
        raise DeviceRunError(f"runner script for '{bundle.name}' wrote no outputs")
    with np.load(outputs_path, allow_pickle=False) as archive:
        outputs = {name: archive[name] for name in archive.files}
    return outputs, [float(v) for v in latencies]
