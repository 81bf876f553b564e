"""``rlhf-entrypoint sshd``: the MPIJob worker. OpenSSH's sshd in the foreground, as the non-root user.

The MPI operator mounts the job's key pair and ``authorized_keys`` at ``~/.ssh`` (a read-only
Secret volume owned by root) and the launcher's mpirun logs in over ssh to start the ranks.
Port 22 needs root, so sshd listens on :data:`DEFAULT_PORT` (2222; the image's client config
``/etc/ssh/ssh_config.d/`` says the same). Everything sshd needs lives under ``~/.sshd``:

* the config, written at start (``StrictModes no``: the mounted ``~/.ssh`` is root's; ``UsePAM
  no``: PAM needs root; logins only for this user, public keys only);
* host keys: the job's mounted key (per job, like the MPI operator's own images), the key the
  image generated at build, or one generated now when neither exists;
* ``SetEnv`` with this container's environment. A login over ssh starts with an empty
  environment, so without it the ranks would lose the image's PATH, CUDA/Habana variables and
  whatever the pod spec sets (RLHF_ACCELERATOR, HF_HOME, ...).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = 2222
#: Host key types the image generates at build time (``ssh-keygen -t TYPE -f ~/.sshd/ssh_host_TYPE_key``).
KEY_TYPES = ("ed25519", "rsa")
#: Variables that describe the login, not the container: sshd sets them itself.
_NOT_FORWARDED = {
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "TERM",
    "MAIL",
    "HOSTNAME",
    "LS_COLORS",
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kubernetes service links (FOO_SERVICE_HOST, FOO_PORT_80_TCP_ADDR, FOO_PORT=tcp://...): one set per
# Service in the namespace, useless to the ranks, and they can make the SetEnv line very long.
_SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$"
)


def state_dir(home: Path) -> Path:
    """``~/.sshd`` when it can be written, else a fresh private temporary directory."""
    path = home / ".sshd"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
        return path
    except OSError:
        return Path(tempfile.mkdtemp(prefix="rlhf-sshd-"))


def host_keys(home: Path, state: Path, keygen: str = "ssh-keygen") -> list[Path]:
    """The host keys to offer: the job's mounted key, the image's build-time keys, else a new one."""
    keys = [p for p in (home / ".ssh" / "id_rsa",) if p.is_file()]
    keys += [
        state / f"ssh_host_{kind}_key" for kind in KEY_TYPES if (state / f"ssh_host_{kind}_key").is_file()
    ]
    if not keys:
        key = state / "ssh_host_ed25519_key"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        keys.append(key)
    return keys


def setenv_directive(environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """One ``SetEnv`` line with the container's environment (sshd honours only the first such line).

    Returns the line (None when there is nothing to pass) and the names left out because
    their values cannot be written in sshd_config (quotes, backslashes, newlines).
    """
    items, skipped = [], []
    for name in sorted(environ):
        value = environ[name]
        if name in _NOT_FORWARDED or name.startswith("SSH_") or not _NAME.match(name):
            continue
        if _SERVICE_LINK.match(name) or (name.endswith("_PORT") and re.match(r"^(tcp|udp|sctp)://", value)):
            continue
        if any(c in value for c in '"\\\n\r'):
            skipped.append(name)
            continue
        items.append(f'"{name}={value}"')
    return ("SetEnv " + " ".join(items) if items else None), skipped


def current_user() -> str | None:
    """This process's user name from the passwd database (None for a uid without an entry)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def sshd_config(
    *, port: int, keys: list[Path], state: Path, home: Path, user: str | None, environ: Mapping[str, str]
) -> tuple[str, list[str]]:
    """The sshd_config text for a foreground, non-root sshd, and the variables it could not pass."""
    lines = [
        "# Written by `rlhf-entrypoint sshd` at start; see rlhf_entrypoint/sshd.py.",
        f"Port {port}",
        *(f"HostKey {key}" for key in keys),
        f"PidFile {state / 'sshd.pid'}",
        f"AuthorizedKeysFile {home / '.ssh' / 'authorized_keys'}",
        *([f"AllowUsers {user}"] if user else []),
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "PrintMotd no",
        "PrintLastLog no",
        "LogLevel INFO",
    ]
    setenv, skipped = setenv_directive(environ)
    if setenv:
        lines.append(setenv)
    return "\n".join(lines) + "\n", skipped


def prepare(
    port: int = DEFAULT_PORT, environ: Mapping[str, str] | None = None, home: Path | None = None
) -> list[str]:
    """Write the config (and a host key if needed); return the sshd command line to exec."""
    environ = dict(os.environ if environ is None else environ)
    home = Path(home or environ.get("HOME") or Path.home())
    sshd = shutil.which(
        "sshd", path=os.pathsep.join([environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    )
    if not sshd:
        raise FileNotFoundError("sshd is not installed (the trainer images install openssh-server)")
    state = state_dir(home)
    config, skipped = sshd_config(
        port=port, keys=host_keys(home, state), state=state, home=home, user=current_user(), environ=environ
    )
    if skipped:
        print(
            "rlhf-entrypoint sshd: not passed to ssh sessions (value not representable): "
            f"{', '.join(skipped)}",
            file=sys.stderr,
        )
    path = state / "sshd_config"
    path.write_text(config)
    path.chmod(0o600)
    # sshd re-executes itself, which needs an absolute path; -D: foreground, -e: log to stderr.
    return [str(Path(sshd).resolve()), "-D", "-e", "-f", str(path)]


def main(port: int = DEFAULT_PORT) -> int:
    """Replace this process with sshd (it becomes the container's main process)."""
    argv = prepare(port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached
