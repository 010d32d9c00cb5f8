"""ssh devices: inventory ssh_options are an allow-list; nothing from an inventory runs locally."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fwedge.device_farm import inventory
from fwedge.errors import DeviceError
from tests import farm_helpers as fh


def _write_inventory(path: Path, entries: list[dict]) -> Path:
    lines = []
    for entry in entries:
        lines.append("[[device]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _board(**overrides) -> dict:
    return {"name": "board-7", "kind": "ssh", "host": "127.0.0.1", "port": fh.closed_port(), "arch": "x86_64",
            "connect_timeout": 1.0, **overrides}


# Options that make ssh run a local program, load code, read or write local files of the
# inventory's choosing, forward local resources to the board, or override what fwedge sets.
REFUSED = [
    "ProxyCommand=touch${IFS}pwned", "proxycommand=touch${IFS}pwned", "PROXYCOMMAND=x", "LocalCommand=touch${IFS}pwned",
    "PermitLocalCommand=yes", "KnownHostsCommand=/bin/true", "RemoteCommand=id", "ProxyJump=evil.example",
    "ProxyUseFdpass=yes", "Match=exec", "Include=/etc/passwd", "PKCS11Provider=/tmp/evil.so",
    "SecurityKeyProvider=/tmp/evil.so", "XAuthLocation=/tmp/evil", "ControlMaster=yes", "ControlPath=/tmp/sock",
    "ForwardAgent=yes", "ForwardX11=yes", "SendEnv=AWS_*", "SetEnv=X=1", "LocalForward=8080:localhost:80",
    "RemoteForward=8080:localhost:80", "DynamicForward=1080", "Tunnel=yes", "HostName=evil.example", "User=root",
    "Port=2222", "IdentityFile=~/.ssh/id_rsa", "IdentityAgent=/tmp/agent", "CertificateFile=/tmp/c",
    "UserKnownHostsFile=/dev/null", "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=no", "BatchMode=no",
    "CanonicalizeHostname=yes", "EscapeChar=~", "LogLevel=DEBUG3", "NoSuchOption=1",
]
# Allowed keys with values that are not plain values of that option.
BAD_VALUES = [
    "Compression=yes\nProxyCommand=touch pwned", "Compression=yes ProxyCommand=x", "ConnectTimeout=5;id",
    "ServerAliveInterval=-1", "ServerAliveInterval=$(id)", "Ciphers=aes128-ctr,%h", "Ciphers=",
    "HostKeyAlias=-oProxyCommand=x", "HostKeyAlias=a/b", "Compression=maybe", "KexAlgorithms=a b",
    "Ciphers=aes128-ctr\r", "Compression", "=yes", "-oProxyCommand=x", "Compression yes",
]
ALLOWED = [
    "Ciphers=aes128-ctr,aes256-gcm@openssh.com", "MACs=hmac-sha2-256", "KexAlgorithms=-diffie-hellman-group1-sha1",
    "HostKeyAlgorithms=+ssh-rsa", "PubkeyAcceptedAlgorithms=^ssh-ed25519", "ServerAliveInterval=7",
    "serveraliveinterval=7", "ServerAliveCountMax=2", "ConnectionAttempts=2", "Compression=yes", "TCPKeepAlive=no",
    "HostKeyAlias=board-7.lab", "AddressFamily=inet", "CheckHostIP=no", "IPQoS=throughput", "RekeyLimit=1G",
    "NumberOfPasswordPrompts=0", "PreferredAuthentications=publickey", "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no", "PubkeyAuthentication=yes", "GSSAPIAuthentication=no", "UpdateHostKeys=no",
]


def _refusal(tmp_path, entry: dict) -> str:
    path = _write_inventory(tmp_path / "farm.toml", [entry])
    with pytest.raises(DeviceError) as caught:
        inventory.load_inventory(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and repr(entry["name"]) in message, message
    return message


@pytest.mark.parametrize("option", REFUSED)
def test_an_ssh_option_outside_the_allow_list_is_refused_naming_file_device_and_option(option, tmp_path):
    message = _refusal(tmp_path, _board(ssh_options=["Compression=no", option]))
    key = option.split("=")[0]
    assert f"ssh option {key!r}" in message and "not allowed" in message, message


@pytest.mark.parametrize("option", BAD_VALUES)
def test_an_ssh_option_value_that_is_not_a_plain_value_is_refused(option, tmp_path):
    message = _refusal(tmp_path, _board(ssh_options=[option]))
    assert "ssh option" in message, message


@pytest.mark.parametrize("option", ALLOWED)
def test_allowed_ssh_options_reach_ssh_as_one_argument_each(option, tmp_path):
    [device] = inventory.load_inventory(_write_inventory(tmp_path / "farm.toml", [_board(ssh_options=[option])]))
    argv = device.ssh_argv(["true"])
    assert argv[argv.index(option) - 1] == "-o"
    # fwedge's own options come first: ssh keeps the first value it sees of an option.
    assert argv.index("BatchMode=yes") < argv.index(option)


def test_an_ssh_option_that_runs_a_local_command_never_runs(tmp_path):
    """ProxyCommand without whitespace passed the old Key=Value check and ran on `farm devices`."""
    marker = tmp_path / "ran"
    path = _write_inventory(tmp_path / "farm.toml", [_board(ssh_options=[f"ProxyCommand=touch${{IFS}}{marker}"])])
    with pytest.raises(DeviceError, match="ProxyCommand"):
        for device in inventory.load_inventory(path):
            device.state()
    assert not marker.exists()


@pytest.mark.parametrize("key,value", [("ssh", "/tmp/evil/ssh"), ("scp", "./scp"), ("ssh", "ssh -oProxyCommand=x"),
                                       ("ssh", "-oProxyCommand=x"), ("scp", "")])
def test_an_inventory_cannot_choose_the_local_ssh_or_scp_program_path(key, value, tmp_path):
    message = _refusal(tmp_path, _board(**{key: value}))
    assert repr(key) in message, message


def test_an_inventory_may_name_ssh_and_scp_programs_found_on_path(tmp_path):
    [device] = inventory.load_inventory(_write_inventory(tmp_path / "farm.toml", [_board(ssh="ssh", scp="scp")]))
    assert device.ssh_argv(["true"])[0] == "ssh"


@pytest.mark.parametrize("field,value", [("host", "-oProxyCommand=x"), ("host", "-J"), ("user", "-oProxyCommand=x"),
                                         ("user", "a b"), ("host", "h\nProxyCommand x"), ("host", "127.0.0.1\n"), ("user", "ci\n")])
def test_host_and_user_can_never_become_ssh_options(field, value, tmp_path):
    message = _refusal(tmp_path, _board(**{field: value}))
    assert "not allowed" in message, message


@pytest.mark.ssh
def test_real_sshd_accepts_a_device_with_allowed_options(tmp_path):
    server = fh.Sshd(tmp_path / "sshd")
    server.folder.mkdir()
    server.start()
    try:
        entry = server.device_entry(ssh_options=["ServerAliveInterval=7", "Compression=no",
                                                 "Ciphers=aes128-ctr,aes256-gcm@openssh.com", "HostKeyAlias=loopback"])
        [device] = inventory.load_inventory(_write_inventory(tmp_path / "farm.toml", [entry]))
        assert device.state() == "ready", (server.folder / "sshd.log").read_text()[-1500:]
        assert device.identity()["uname"].startswith("Linux")
    finally:
        server.stop()
    assert sys.executable  # the device entry runs the runner with this interpreter


@pytest.mark.parametrize("value", ["/tmp/k h", "/tmp/kh\nProxyCommand touch x", '/tmp/"kh', "/tmp/%d/kh", "/tmp/k\\h"])
def test_known_hosts_cannot_add_words_to_its_ssh_option_line(value, tmp_path):
    message = _refusal(tmp_path, _board(known_hosts=value))
    assert "known_hosts" in message, message


def _ssh_config(device) -> dict[str, str] | None:
    """What ssh makes of the device's argv, from `ssh -G` (parses, never connects); None when
    ssh itself refuses the options (then it runs nothing at all)."""
    import subprocess

    argv = device.ssh_argv(["true"])
    options = argv[1:argv.index("--")]
    done = subprocess.run(["ssh", "-G", *options, device.destination], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return None
    return dict(line.split(" ", 1) if " " in line else (line, "") for line in done.stdout.splitlines())


# Settings no inventory may change: a command run locally, a forward, or a checked field.
PINNED = {"proxycommand": None, "localcommand": None, "knownhostscommand": None, "remotecommand": None,
          "proxyjump": None, "permitlocalcommand": "no", "forwardagent": "no", "controlmaster": "false",
          "batchmode": "yes", "hostname": "127.0.0.1", "stricthostkeychecking": "true"}


@pytest.mark.ssh
def test_ssh_option_fuzz_never_sets_a_command_or_forward(tmp_path):
    """Seeded random options: each is refused (DeviceError) or, per `ssh -G`, leaves every
    pinned setting as fwedge wants it."""
    import random

    from fwedge.device_farm.ssh import SSH_OPTION_VALUES

    rng = random.Random(0)
    keys = [*SSH_OPTION_VALUES, *(option.split("=")[0] for option in REFUSED)]
    pieces = ["yes", "no", "1", "-", "+", "^", ",", " ", "\n", "\t", "%h", "$(id)", "`id`", ";", "aes128-ctr", "=",
              "ProxyCommand", "-oProxyCommand=x", "#", "\"", "'", "\\", "inet", "publickey", "1G", "none", "x@y.z"]
    examples = {option.split("=", 1)[0].lower(): option.split("=", 1)[1] for option in ALLOWED}
    tried = refused = accepted = ssh_refused = 0
    for _ in range(250):
        key = rng.choice(keys)
        key = key.upper() if rng.random() < 0.1 else key
        value = examples.get(key.lower(), "yes")
        for _ in range(rng.choice([0, 0, 1, 2, 3])):  # a third stay valid; the rest get pieces spliced in
            at = rng.randint(0, len(value))
            value = value[:at] + rng.choice(pieces) + value[at:]
        option = f"{key}={value}"
        tried += 1
        try:
            [device] = inventory.load_inventory(_write_inventory(tmp_path / "farm.toml", [_board(ssh_options=[option])]))
        except DeviceError as exc:
            assert "\n" not in str(exc)
            refused += 1
            continue
        accepted += 1
        config = _ssh_config(device)
        if config is None:  # e.g. an unknown algorithm name: ssh stops before doing anything
            ssh_refused += 1
            continue
        for setting, wanted in PINNED.items():
            assert config.get(setting) in ((None, "none") if wanted is None else (wanted,)), (option, setting,
                                                                                              config.get(setting))
    assert refused and accepted > ssh_refused
    print(f"ssh option fuzz: {tried} tried, {refused} DeviceError, {accepted} accepted ({ssh_refused} of them "
          "refused by ssh itself), 0 other exceptions")


@pytest.mark.ssh
def test_every_allowed_example_is_an_option_this_ssh_understands(tmp_path):
    for option in ALLOWED:
        [device] = inventory.load_inventory(_write_inventory(tmp_path / "farm.toml", [_board(ssh_options=[option])]))
        assert _ssh_config(device) is not None, option
