"""Builders for the farm, gate, report and pipeline tests: a small trained Fashion-MNIST model,
ONNX bundles, fake C bundles, fake qemu/ssh programs, and a throwaway sshd on loopback."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fwedge.bundle import TensorInfo, write_bundle
from fwedge.data import Preprocess, open_dataset

HIDDEN = 64


def fashion_mlp(train_samples: int = 2000, seed: int = 0) -> onnx.ModelProto:
    """input[N,1,28,28] -> Flatten -> Gemm 'fc1' (random features) -> Relu -> Gemm 'fc2' (ridge fit).

    The second layer is a ridge regression on one-hot labels of Fashion-MNIST train images:
    about 75-80 % top-1 on the test set in well under a second, deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    batch = next(open_dataset("fashion-mnist:train").batches(Preprocess(), batch_size=train_samples,
                                                            limit=train_samples, seed=seed))
    x = batch.x.reshape(len(batch.x), -1)
    w1 = (rng.standard_normal((HIDDEN, 784)) / np.sqrt(784) * 4).astype(np.float32)
    b1 = np.zeros(HIDDEN, np.float32)
    hidden = np.maximum(x @ w1.T + b1, 0)
    features = np.hstack([hidden, np.ones((len(hidden), 1), np.float32)])
    targets = np.eye(10, dtype=np.float32)[batch.y]
    solution = np.linalg.solve(features.T @ features + 1e-1 * np.eye(HIDDEN + 1), features.T @ targets)
    w2, b2 = solution[:HIDDEN].T.astype(np.float32), solution[HIDDEN].astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "fc2_w", "fc2_b"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "fashion_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, "fc1_w"), numpy_helper.from_array(b1, "fc1_b"),
         numpy_helper.from_array(w2, "fc2_w"), numpy_helper.from_array(b2, "fc2_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def zero_layer(model: onnx.ModelProto, initializer: str) -> onnx.ModelProto:
    """A copy of `model` with one initializer's values set to zero (a deliberately damaged model)."""
    damaged = onnx.ModelProto()
    damaged.CopyFrom(model)
    for index, tensor in enumerate(damaged.graph.initializer):
        if tensor.name == initializer:
            zeros = np.zeros_like(numpy_helper.to_array(tensor))
            damaged.graph.initializer[index].CopyFrom(numpy_helper.from_array(zeros, initializer))
            return damaged
    raise KeyError(initializer)


def onnx_bundle(model: onnx.ModelProto, out_dir: Path):
    """Export `model` with the ONNX target (Fashion-MNIST preprocessing recorded)."""
    from fwedge.targets import ExportOptions, get_target

    return get_target("onnx").export(model, out_dir, ExportOptions(preprocess=Preprocess(resize=(28, 28), color="grayscale").to_dict()))


def fake_c_bundle(out_dir: Path, arch: str):
    """A C bundle for `arch` whose harness binary never runs (the fake emulators crash or hang first).

    It follows the C target's layout (targets.c.BINARY), so the farm drives it through the real
    harness protocol functions of fwedge.targets.c.
    """
    from fwedge.targets.c import BINARY

    def files(folder: Path) -> dict:
        (folder / BINARY).parent.mkdir(parents=True)
        (folder / BINARY).write_bytes(b"\x7fELF not a real harness\n")
        return {"rom_bytes": 24, "ram_bytes": 0}

    return write_bundle(
        out_dir, target="c", arch=arch, precision="int8", source_sha256="0" * 64,
        inputs=[TensorInfo("input", [1, 1, 28, 28], "float32", "NCHW")],
        outputs=[TensorInfo("logits", [1, 10], "float32")],
        write_files=files, preprocess=Preprocess(resize=(28, 28), color="grayscale").to_dict(),
    )


def crashing_c_bundle(out_dir: Path, arch: str):
    """A C bundle whose harness is a real static binary for `arch` that writes through NULL.

    Built with the C target's own build_binary (same flags, same zig cache). Under the real
    qemu-<arch> the guest dies from SIGSEGV, as a miscompiled kernel would.
    """
    import tempfile

    from fwedge.targets.c import BINARY, build_binary

    bundle = fake_c_bundle(out_dir, arch)
    with tempfile.TemporaryDirectory(prefix="fwedge-crash-") as temp:
        folder = Path(temp)
        # The address depends on argc, so the compiler cannot prove the store faults.
        (folder / "main.c").write_text(
            "#include <stdint.h>\n"
            "int main(int argc, char **argv) {\n"
            "    volatile int *p = (volatile int *)(uintptr_t)(argc > 1000 ? 64 : 0);\n"
            "    *p = argc;\n"
            "    return 0;\n"
            "}\n")
        build_binary(folder, ["main.c"], arch)

        def files(target: Path) -> dict:
            (target / BINARY).parent.mkdir(parents=True)
            shutil.copy(folder / BINARY, target / BINARY)
            return {}

        return write_bundle(out_dir, target="c", arch=arch, precision="int8", source_sha256="0" * 64,
                            inputs=bundle.inputs, outputs=bundle.outputs, write_files=files,
                            preprocess=bundle.preprocess)


def script_c_bundle(out_dir: Path, arch: str, script: str):
    """A C bundle whose harness is a shell script (`script` after #!/bin/sh): on a board it runs
    as the harness binary would, e.g. to sleep and then fail."""
    from fwedge.targets.c import BINARY

    def files(folder: Path) -> dict:
        (folder / BINARY).parent.mkdir(parents=True)
        (folder / BINARY).write_text("#!/bin/sh\n" + script + "\n")
        (folder / BINARY).chmod(0o755)
        return {}

    return write_bundle(
        out_dir, target="c", arch=arch, precision="int8", source_sha256="0" * 64,
        inputs=[TensorInfo("input", [1, 1, 28, 28], "float32", "NCHW")],
        outputs=[TensorInfo("logits", [1, 10], "float32")],
        write_files=files, preprocess=Preprocess(resize=(28, 28), color="grayscale").to_dict(),
    )


def c_bundles(qdq_model: Path, arches: list[str], out_dir: Path) -> list[Path]:
    """Real C bundles (fwedge.targets.c, zig cc) of a QDQ model, one per architecture."""
    from fwedge.export import export_bundle
    from fwedge.targets import ExportOptions

    paths = []
    for arch in arches:
        path = out_dir / f"{Path(qdq_model).stem}-{arch}"
        export_bundle(qdq_model, arch, path, ExportOptions(precision="int8"))
        paths.append(path)
    return paths


def write_program(path: Path, body: str) -> Path:
    """Write an executable script."""
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def fake_qemu_segfault(folder: Path) -> Path:
    """A 'qemu' that reports a guest crash the way qemu-user does and dies from SIGSEGV."""
    return write_program(folder / "qemu-segv", """
        #!/bin/sh
        echo "qemu: uncaught target signal 11 (Segmentation fault) - core dumped" >&2
        kill -SEGV $$
    """)


def fake_qemu_hang(folder: Path) -> Path:
    """A 'qemu' whose guest never finishes (a child sleep keeps the pipes open, as a real hang would)."""
    return write_program(folder / "qemu-hang", """
        #!/bin/sh
        echo "guest started" >&2
        sleep 300
    """)


def closed_port() -> int:
    """A loopback TCP port with nothing listening (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(process: subprocess.Popen, port: int, seconds: float) -> bool:
    """Whether `process` listens on 127.0.0.1:`port` within `seconds` (False once it exits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class Sshd:
    """Debian's sshd on 127.0.0.1:<high port> with a throwaway host key and user key in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.user = os.environ.get("USER") or __import__("getpass").getuser()

    def start(self) -> "Sshd":
        folder = self.folder
        for name in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
        (folder / "authorized_keys").chmod(0o600)
        if os.geteuid() == 0:
            # Debian's sshd, started as root, insists on its privilege-separation directory
            # (normally created by systemd's RuntimeDirectory).
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        for _ in range(5):
            self.port = closed_port()
            argv = [sshd, "-D", "-e", "-f", "/dev/null", "-p", str(self.port),
                    "-o", "ListenAddress=127.0.0.1", "-o", f"HostKey={folder / 'host_key'}",
                    "-o", f"AuthorizedKeysFile={folder / 'authorized_keys'}", "-o", "UsePAM=no",
                    "-o", f"PidFile={folder / 'sshd.pid'}", "-o", "StrictModes=no",
                    "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
                    "-o", "PermitRootLogin=prohibit-password", "-o", "Subsystem=sftp internal-sftp"]
            log = open(folder / "sshd.log", "ab")
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
            if listening(self.process, self.port, 10):
                return self
            self.stop()
        raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def device_entry(self, name: str = "loopback-board", **overrides) -> dict:
        """An inventory entry for this sshd."""
        from fwedge.bundle import host_arch

        entry = {"name": name, "kind": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
                 "key": str(self.folder / "user_key"), "arch": host_arch(), "runtimes": ["c", "onnx"],
                 "python": sys.executable, "workdir": str(self.folder / "remote"),
                 "strict_host_key_checking": "accept-new", "known_hosts": str(self.folder / "known_hosts"),
                 "connect_timeout": 10.0, "run_timeout": 120.0}
        entry.update(overrides)
        (self.folder / "remote").mkdir(exist_ok=True)
        return entry


def write_inventory(path: Path, entries: list[dict]) -> Path:
    """An inventory TOML file of [[device]] tables (string, number and list values)."""
    import json

    def value(item):
        if isinstance(item, list):
            return "[" + ", ".join(json.dumps(v) for v in item) + "]"
        return json.dumps(item)

    text = "\n".join("[[device]]\n" + "\n".join(f"{k} = {value(v)}" for k, v in entry.items()) + "\n"
                     for entry in entries)
    path.write_text(text)
    return path


def labgrid_program(name: str) -> str:
    """A labgrid console script (labgrid-coordinator, -exporter, -client) beside this interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found beside {sys.executable} or on PATH")
    return found


class Lab:
    """A real labgrid coordinator on 127.0.0.1:<high port> (its state in `folder`) and exporters
    whose configs export NetworkService resources; places are made with labgrid-client."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = 0
        self.coordinator: subprocess.Popen | None = None
        self.exporters: dict[str, subprocess.Popen] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Lab":
        for _ in range(5):
            self.port = closed_port()
            log = open(self.folder / "coordinator.log", "ab")
            self.coordinator = subprocess.Popen([labgrid_program("labgrid-coordinator"), "-l", self.address],
                                                cwd=self.folder, stdout=log, stderr=log)
            if listening(self.coordinator, self.port, 20):
                return self
            self._stop(self.coordinator)
        raise RuntimeError(f"labgrid-coordinator did not start: {(self.folder / 'coordinator.log').read_text()[-2000:]}")

    def export(self, name: str, groups: dict[str, dict]) -> None:
        """Start exporter `name` with {group: NetworkService params} and wait until the
        coordinator lists its resources."""
        import json

        config = self.folder / f"exporter-{name}.yaml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(json.dumps({group: {"NetworkService": params} for group, params in groups.items()}))
        log = open(self.folder / f"exporter-{name}.log", "ab")
        self.exporters[name] = subprocess.Popen(
            [labgrid_program("labgrid-exporter"), "-c", self.address, "--name", name, str(config)],
            cwd=self.folder, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = self.client("resources", check=False).stdout
            if all(f"{name}/{group}/NetworkService" in listed for group in groups):
                return
            if self.exporters[name].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"exporter {name} did not register: {(self.folder / f'exporter-{name}.log').read_text()[-2000:]}")

    def stop_exporter(self, name: str) -> None:
        self._stop(self.exporters.pop(name))

    def client(self, *args: str, check: bool = True, user: str | None = None) -> subprocess.CompletedProcess:
        """labgrid-client against this coordinator (as LG_USERNAME `user` when given)."""
        env = {**os.environ, **({"LG_USERNAME": user, "LG_HOSTNAME": "otherhost"} if user else {})}
        done = subprocess.run([labgrid_program("labgrid-client"), "-x", self.address, *args], cwd=self.folder,
                              env=env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def place(self, name: str, match: str, tags: dict[str, str] | None = None) -> str:
        self.client("-p", name, "create")
        self.client("-p", name, "add-match", match)
        if tags:
            self.client("-p", name, "set-tags", *(f"{k}={v}" for k, v in tags.items()))
        return name

    def acquired_by(self, place: str) -> str | None:
        """Who holds `place` now, per the coordinator, or None."""
        for line in self.client("-p", place, "show").stdout.splitlines():
            if line.strip().startswith("acquired:"):
                holder = line.split(":", 1)[1].strip()
                return None if holder == "None" else holder
        raise RuntimeError(f"labgrid-client show {place}: no 'acquired:' line")

    def stop(self) -> None:
        for name in list(self.exporters):
            self.stop_exporter(name)
        if self.coordinator:
            self._stop(self.coordinator)

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
