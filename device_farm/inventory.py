"""Device inventory: a TOML file of [[device]] tables, or auto-detection of host plus qemu-<arch>.

    [[device]]
    name = "host"
    kind = "local"

    [[device]]
    name = "qemu-riscv64"
    kind = "qemu"
    arch = "riscv64"

    [[device]]
    name = "rpi4-01"              # a labgrid place (docs/labgrid.md)
    kind = "labgrid"
    coordinator = "lab.example.com:20408"
    arch = "aarch64"

    [[device]]
    name = "board"
    kind = "ssh"
    host = "192.0.2.10"
    user = "ci"
    key = "~/.ssh/farm_ed25519"
    arch = "aarch64"
    runtimes = ["c", "onnx"]
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tomllib
import typing
from pathlib import Path

# Importing the device modules fills DEVICE_KINDS.
from fwedge.device_farm import labgrid_place, local, qemu, ssh  # noqa: F401
from fwedge.device_farm.device import DEVICE_KINDS, Device
from fwedge.errors import DeviceError

_PATH_FIELDS = ("key", "known_hosts")
# Fields naming a local program to run: an inventory may only give a bare name looked up on PATH.
_PROGRAM_FIELDS = {"ssh": ("ssh", "scp"), "labgrid": ("ssh", "scp")}


def auto_detect() -> list[Device]:
    """The host plus one QemuDevice per qemu-<arch> found on PATH."""
    devices: list[Device] = [local.LocalDevice(name="host")]
    for arch in qemu.QEMU_ARCHES:
        if shutil.which(f"qemu-{arch}"):
            devices.append(qemu.QemuDevice(name=f"qemu-{arch}", arch=arch))
    return devices


def _check_type(value, annotation: str, where: str, key: str) -> None:
    expected = {"str": str, "int": int, "float": (int, float), "list[str]": list, "bool": bool}
    kind = expected.get(annotation.replace(" ", ""))
    if kind is None:
        return
    if isinstance(value, bool) and annotation != "bool" or not isinstance(value, kind):
        raise DeviceError(f"{where}: {key} must be {annotation}, got {type(value).__name__} {value!r}")
    if annotation == "list[str]" and not all(isinstance(item, str) for item in value):
        raise DeviceError(f"{where}: {key} must be a list of strings, got {value!r}")


def device_from_entry(entry: dict, where: str) -> Device:
    """Build one device from an inventory table.

    Raises:
        DeviceError: missing name/kind, unknown kind or key, a value of the wrong type, or a
            value the device kind refuses (e.g. a host with shell metacharacters).
    """
    if not isinstance(entry, dict):
        raise DeviceError(f"{where}: each [[device]] must be a table, got {type(entry).__name__}")
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str) or not name:
        raise DeviceError(f"{where}: a device has no name")
    if kind not in DEVICE_KINDS:
        raise DeviceError(f"{where}: device {name!r} has kind {kind!r}; known kinds: {', '.join(sorted(DEVICE_KINDS))}")
    cls = DEVICE_KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in entry.items():
        if key == "kind":
            continue
        if key not in fields:
            known = ", ".join(sorted(k for k in fields))
            raise DeviceError(f"{where}: device {name!r} ({kind}) has unknown key {key!r}; known: {known}")
        _check_type(value, _annotation_name(hints[key]), f"{where}: device {name!r}", key)
        if key in _PATH_FIELDS and isinstance(value, str) and value:
            value = str(Path(os.path.expanduser(value)))
        if key in _PROGRAM_FIELDS.get(kind, ()) and not ssh.CLIENT_PROGRAM.fullmatch(value):
            raise DeviceError(f"{where}: device {name!r}: {key!r} {value[:80]!r} is not allowed: an inventory names "
                              "the client program (found on PATH), never a path or arguments")
        values[key] = value
    try:
        return cls(**values)
    except DeviceError as exc:
        raise DeviceError(f"{where}: {exc}") from exc


def _annotation_name(hint) -> str:
    if hint in (str, int, float, bool):
        return hint.__name__
    if typing.get_origin(hint) is list:
        return "list[str]"
    return str(hint)


def load_inventory(path: str | os.PathLike) -> list[Device]:
    """Read an inventory TOML file.

    Raises:
        DeviceError: the file is missing or not TOML, holds no devices, or a device is invalid
            (see device_from_entry); names must be unique.
    """
    path = Path(path)
    if not path.is_file():
        raise DeviceError(f"inventory '{path}': not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"inventory '{path}': not valid TOML ({exc})") from exc
    entries = data.get("device")
    if not isinstance(entries, list) or not entries:
        raise DeviceError(f"inventory '{path}': no [[device]] tables")
    devices = [device_from_entry(entry, f"inventory '{path}'") for entry in entries]
    names = [device.name for device in devices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DeviceError(f"inventory '{path}': duplicate device names {duplicates}")
    return devices


def devices_for(inventory: str | os.PathLike | None, lab: list[Device] | None = None) -> list[Device]:
    """The inventory's devices, or auto-detected ones when neither `inventory` nor `lab` is
    given, then `lab` (labgrid places named on the command line); labgrid entries given by tags
    become one device per matching place.

    Raises:
        DeviceError: a bad inventory, an unreachable coordinator, or duplicate device names.
    """
    devices = load_inventory(inventory) if inventory else [] if lab else auto_detect()
    devices = labgrid_place.expand(devices + list(lab or []))
    names = [device.name for device in devices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DeviceError(f"duplicate device names {duplicates} (an inventory device and a labgrid place "
                          "may not share a name)")
    return devices


def select(devices: list[Device], names: list[str] | tuple[str, ...]) -> list[Device]:
    """Pick devices by name; "all" (or nothing) selects every device.

    Raises:
        DeviceError: a name is not in the inventory.
    """
    if not names or list(names) == ["all"]:
        return list(devices)
    by_name = {device.name: device for device in devices}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise DeviceError(f"unknown device(s) {unknown}; the inventory has {sorted(by_name)}")
    return [by_name[name] for name in names]
