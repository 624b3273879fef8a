"""``retinadet serve``: an HTTP inference server around one loaded model."""

from __future__ import annotations

import ipaddress

import click


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--weights", required=True, help="Weights (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind: this machine only by default; 0.0.0.0 serves the network (set --token).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", envvar="RETINADET_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but the health checks "
                   "[env: RETINADET_SERVE_TOKEN, which keeps it out of the process list].")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most images per forward pass when requests arrive together (1: one at a time).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10, show_default=True,
              help="How long the first image of a batch waits for others.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=32, show_default=True,
              help="Largest image upload accepted (larger: 413).")
@click.option("--review-dir", type=click.Path(file_okay=False), default=None,
              help="A folder of images (and predictions) to review in the browser; requests may read files in it.")
@click.option("--data-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="The folder local image paths in requests are resolved under (Label Studio: its "
                   "LOCAL_FILES_DOCUMENT_ROOT); no other file is read.")
@click.option("--model-name", default="retinadet", show_default=True, help="The model's name in the v2 protocol's URLs.")
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
def command(weights, host, port, token, max_batch, batch_wait_ms, max_upload_mb, review_dir, data_root, model_name,
            device) -> None:
    """Serve WEIGHTS over HTTP: POST /detect (an image -> boxes in its pixels), the KServe/Triton v2 protocol
    (/v2/models/NAME/infer) and a Label Studio ML backend (/health, /setup, /predict).

    Requests that arrive together are batched into one forward pass. Everything is answered offline: image
    URLs are never fetched, and local paths only under --data-root or --review-dir."""
    # Imported here: `retinadet --help` loads every command module, and should not load torch or FastAPI.
    from retinadet.errors import ConfigError

    try:
        import uvicorn

        from retinadet.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"retinadet serve needs FastAPI and uvicorn ({exc}): pip install 'retinadet[serve]'") from None
    from retinadet.detector import load

    if not is_loopback(host) and not token:
        click.echo(f"warning: serving on {host} without --token: anyone who can reach port {port} can use the model",
                   err=True)
    detector = load(weights, device=device)
    app = create_app(detector, token=token, max_upload_bytes=int(max_upload_mb * 2**20), max_batch=max_batch,
                     batch_wait_ms=batch_wait_ms, review_dir=review_dir, data_root=data_root, model_name=model_name)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {weights} ({detector.cfg.preset}, classes: {', '.join(detector.class_names)}) on "
               f"http://{shown}:{port} (max batch {max_batch}, device {detector.device})")
    uvicorn.run(app, host=host, port=port, log_level="info")
