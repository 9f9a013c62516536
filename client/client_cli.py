"""``retina-client``: a hospital site joins a federation, or checks it is ready to.

  retina-client check --manifest site.csv [--device auto]
  retina-client --manifest site.csv --server HOST:PORT --name eye-clinic \\
      --root-certificates ca.crt --auth-key site.key [--state-dir DIR] [--device auto] [--port 9094]
  retina-client ... --insecure            (loopback tests only: no TLS, no site key; prints a warning)

Joining validates the manifest, then becomes Flower's SuperNode (same process id, so the site's
service manager or a test can stop it by PID). By default it connects over TLS (the federation's
CA, or the system's CAs without ``--root-certificates``) and proves its identity with the private
key from ``retina-server pki add-site``; a SuperLink that does not know the key refuses the site. The manifest path, state folder and device go to
the SuperNode's node config, read only by this site's ClientApp; they never reach the coordinator.
Runtime dependency installation, update checks and telemetry are off.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import NoReturn

from rich.console import Console


def _check(args: argparse.Namespace) -> int:
    """Validate the manifest, read every image, and report what the site would train on."""
    import torch

    from shared_model.data.manifest import load_manifest
    from shared_model.data.readers import ImageReadError, read_image
    from shared_model.train.trainer import resolve_device

    console = Console()
    manifest = load_manifest(args.manifest)
    unreadable = []
    for record in manifest.records:
        try:
            read_image(record.image, 64)
        except ImageReadError as exc:
            unreadable.append(str(exc))
    splits = Counter(r.split for r in manifest.records)
    modalities = Counter(r.modality for r in manifest.records)
    labels = Counter(label for r in manifest.records for label in r.labels)
    console.print(f"{args.manifest}: {len(manifest.records)} rows, {len({r.patient_id for r in manifest.records})} patients; "
                  f"splits {dict(splits)}; modalities {dict(modalities)}", highlight=False, soft_wrap=True)
    console.print(f"labels: {dict(labels.most_common())}", highlight=False, soft_wrap=True)
    device = resolve_device(args.device)
    detail = ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        detail = f" ({props.name}, {props.total_memory / 2 ** 30:.0f} GiB, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"
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


def _join(args: argparse.Namespace) -> NoReturn:
    """Refuse a bad manifest, then replace this process with the site's SuperNode."""
    from shared_model.data.manifest import load_manifest
    from shared_model.offline_env import offline_env

    if args.insecure:
        Console(stderr=True).print("[yellow]warning: --insecure: no TLS — this site's updates travel unencrypted and "
                                   "it is not authenticated. Use it only for tests on loopback.[/yellow]")
    load_manifest(args.manifest)
    _, _, state_dir = site_paths(args)
    state_dir.mkdir(parents=True, exist_ok=True)
    command = supernode_command(args)
    Console().print(f"joining {args.server} as site {command[command.index('--node-config') + 1]}", highlight=False)
    sys.stdout.flush()
    os.execve(command[0], command, offline_env(state_dir / "flwr-home"))


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
    parser = argparse.ArgumentParser(prog="retina-client", description="Join a RetinaFL federation as a site.")
    parser.add_argument("--manifest", required=True, type=Path, help="this site's manifest (CSV or Parquet)")
    parser.add_argument("--server", required=True, help="the coordinator's SuperLink, HOST:PORT")
    parser.add_argument("--name", help="site name shown to the coordinator (default: the manifest's folder name)")
    parser.add_argument("--state-dir", help="where this site keeps its trainer state (default ~/.retinafl/sites/NAME)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--port", type=int, default=9094, help="local port of the SuperNode's ClientApp API")
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
