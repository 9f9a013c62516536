"""``retina-client``: a hospital site joins a federation, or checks it is ready to.

  retina-client check --manifest site.csv [--device auto]
  retina-client --manifest site.csv --server HOST:PORT --name eye-clinic \\
      --root-certificates ca.crt --auth-key site.key [--state-dir DIR] [--device auto] [--port PORT]
  retina-client ... --insecure            (loopback tests only: no TLS, no site key; prints a warning)

Joining validates the manifest, then runs Flower's SuperNode as its child: Flower's lines are
passed through, and the refusals Flower reports only by code (an unregistered key, a key already
online, another federation's CA) end with one line naming the cause and the fix. SIGTERM/SIGINT
reach the SuperNode, and this process exits with it, so a service manager or a test still stops
the site by this PID. By default it connects over TLS (the federation's CA, or the system's CAs
without ``--root-certificates``) and proves its identity with the private key from ``retina-server
pki add-site``; the coordinator attributes its updates to the name that key is registered under.
The SuperNode's local ClientApp port is a free loopback port unless ``--port`` names one (an
occupied one is refused), so several sites can share a host. The manifest path, state folder and
device go to the SuperNode's node config, read only by this site's ClientApp; they never reach
the coordinator. Runtime dependency installation, update checks and telemetry are off.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import NoReturn

from rich.console import Console


def _check(args: argparse.Namespace) -> int:
    """Validate the manifest, read every image, and report what the site would train on."""
    import torch

    from shared_model.data.manifest import load_manifest, unreadable_images
    from shared_model.runtime import resolve_device

    console = Console()
    manifest = load_manifest(args.manifest)
    unreadable = unreadable_images(manifest.records)
    splits = Counter(r.split for r in manifest.records)
    modalities = Counter(r.modality for r in manifest.records)
    labels = Counter(label for r in manifest.records for label in r.labels)
    console.print(f"{args.manifest}: {len(manifest.records)} rows, "
                  f"{len({r.patient_id for r in manifest.records})} patients; "
                  f"splits {dict(splits)}; modalities {dict(modalities)}", highlight=False, soft_wrap=True)
    console.print(f"labels: {dict(labels.most_common())}", highlight=False, soft_wrap=True)
    device = resolve_device(args.device)
    detail = ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        detail = (f" ({props.name}, {props.total_memory / 2 ** 30:.0f} GiB, "
                  f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})")
    console.print(f"device: {device}{detail}", highlight=False)
    for reason in unreadable:
        console.print(f"[red]unreadable: {reason}[/red]", highlight=False)
    if not splits.get("train"):
        console.print("[red]no 'train' rows: this site has nothing to train on[/red]")
        return 2
    if unreadable:
        console.print(f"[red]{len(unreadable)} unreadable images (they would be skipped)[/red]")
        return 2
    console.print("[green]ready to join[/green]")
    return 0


def site_paths(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """(site name, absolute manifest path, absolute state folder) of this site."""
    manifest = Path(args.manifest).resolve()
    name = args.name or manifest.parent.name
    return name, manifest, Path(args.state_dir or Path.home() / ".retinafl" / "sites" / name).resolve()


def supernode_command(args: argparse.Namespace) -> list[str]:
    """The ``flower-supernode`` command line this site runs."""
    name, manifest, state_dir = site_paths(args)
    node_config = {"site-name": name, "manifest": str(manifest), "state-dir": str(state_dir), "device": args.device}
    command = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", args.server,
               "--port", str(args.port), "--node-config", " ".join(f'{k}="{v}"' for k, v in node_config.items())]
    if args.insecure:
        return command + ["--insecure"]
    if args.root_certificates:
        command += ["--root-certificates", str(Path(args.root_certificates).resolve())]
    if not args.auth_key:
        raise ValueError("--auth-key is required over TLS: the site's private key from retina-server pki add-site")
    key = Path(args.auth_key).resolve()
    if not key.is_file():
        raise FileNotFoundError(f"--auth-key {key}: not found")
    if key.stat().st_mode & 0o077:
        raise ValueError(f"--auth-key {key}: readable by other users (mode {key.stat().st_mode & 0o777:o}); "
                         "run chmod 600 on it")
    return command + ["--auth-supernode-private-key", str(key)]


def clientapp_port(requested: int | None) -> int:
    """The SuperNode's local ClientApp port: ``requested`` if it is free (ValueError naming it
    otherwise), else a free loopback port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", requested or 0))
        except OSError as exc:
            raise ValueError(f"--port {requested}: the SuperNode's ClientApp port is in use on this host "
                             f"({exc.strerror}; another site?). "
                             "Give another --port, or leave it out to take a free one") from exc
        return sock.getsockname()[1]


# Flower's words for a refusal -> the cause and the fix, in one sentence.
REFUSALS = (
    ("Failed to activate SuperNode", "the SuperLink refused this site's key: either it is not registered (the "
     "coordinator registers site.pub with: retina-server pki add-site NAME --public-key site.pub "
     "--superlink HOST:PORT) or a SuperNode with this key is already online (stop the other one)"),
    ("CERTIFICATE_VERIFY_FAILED", "the coordinator's TLS certificate is not signed by the CA given with "
     "--root-certificates: use the ca.crt of this federation's bundle"),
    ("SuperLink is unavailable", "the coordinator's SuperLink cannot be reached: check --server (host and port) "
     "and that outbound TCP to it is allowed"),
)


def run_supernode(command: list[str], env: dict[str, str]) -> int:
    """Run the SuperNode, pass its output through, forward SIGTERM/SIGINT to it; returns its exit
    status, after one line naming the cause of a refusal it reported. Its output is read in a
    thread and the SuperNode's own exit ends the wait: a helper process it started may keep the
    pipe open after it."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    causes: list[str] = []

    def relay() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            causes.extend(cause for words, cause in REFUSALS if words in line and cause not in causes)

    def forward(signum, frame):  # noqa: ARG001 — the signal handler signature
        proc.send_signal(signum)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    reader.join(timeout=2)  # the last lines, unless a helper still holds the pipe
    code = 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
    if code != 0 and causes:
        Console(stderr=True).print(f"[red]error:[/red] {causes[0]}", highlight=False, soft_wrap=True)
        return 2
    return code


def _join(args: argparse.Namespace) -> NoReturn:
    """Refuse a bad manifest or an occupied port, then run the site's SuperNode until it ends."""
    from shared_model.data.manifest import load_manifest
    from shared_model.offline_env import offline_env

    if args.insecure:
        Console(stderr=True).print("[yellow]warning: --insecure: no TLS — this site's updates travel unencrypted and "
                                   "it is not authenticated. Use it only for tests on loopback.[/yellow]")
    load_manifest(args.manifest)
    _, _, state_dir = site_paths(args)
    state_dir.mkdir(parents=True, exist_ok=True)
    args.port = clientapp_port(args.port)
    command = supernode_command(args)
    Console().print(f"joining {args.server} as site {command[command.index('--node-config') + 1]}", highlight=False)
    sys.stdout.flush()
    sys.exit(run_supernode(command, offline_env(state_dir / "flwr-home")))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="retina-client check", description=_check.__doc__)
        parser.add_argument("--manifest", required=True, type=Path)
        parser.add_argument("--device", default="auto")
        args = parser.parse_args(argv[1:])
        from shared_model.cli.errors import user_errors

        with user_errors():
            sys.exit(_check(args))
    parser = argparse.ArgumentParser(
        prog="retina-client", description="Join a RetinaFL federation as a site.",
        epilog="Before joining: retina-client check --manifest site.csv [--device auto] validates every row and "
               "image, prints the modality and label mix and the device, and ends with 'ready to join' or the "
               "problems found.")
    parser.add_argument("--manifest", required=True, type=Path, help="this site's manifest (CSV or Parquet)")
    parser.add_argument("--server", required=True, help="the coordinator's SuperLink, HOST:PORT")
    parser.add_argument("--name", help="this site's name: the one the coordinator registered its key under "
                        "(updates under another name are rejected; default: the manifest's folder name)")
    parser.add_argument("--state-dir", help="where this site keeps its trainer state (default ~/.retinafl/sites/NAME)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--port", type=int, help="local (loopback) port of the SuperNode's ClientApp API "
                        "(default: a free one)")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--root-certificates", help="the federation's CA certificate (default: the system's CAs)")
    security.add_argument("--insecure", action="store_true", help="no TLS, no site key (loopback tests only)")
    parser.add_argument("--auth-key", help="this site's private key (OpenSSH format, from retina-server pki add-site)")
    args = parser.parse_args(argv)
    from shared_model.cli.errors import user_errors

    with user_errors():
        _join(args)


if __name__ == "__main__":
    main()
