"""``retinadet rank``: the unlabelled images whose labels would teach the model most, best first."""

from __future__ import annotations

import click


@click.command("rank")
@click.option("--weights", required=True, help="Weights (a retinadet .pt, or anything `retinadet.load` reads).")
@click.option("--source", required=True, help="Unlabelled images: a folder, a glob, or a .txt file of paths.")
@click.option("--budget", type=int, default=50, show_default=True, help="How many images to list.")
@click.option("-o", "--output", default="ranking.txt", show_default=True, type=click.Path(dir_okay=False),
              help="The list of paths (ranking.csv with the scores is written beside it).")
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--device", default=None, help="auto, cpu, cuda[:N], mps.")
def command(weights, source, budget, output, batch, device) -> None:
    """List the images to label next: their detections' uncertainty (scores near each class's threshold), with
    images that look like one already listed pushed back, so the budget is not spent on near-copies.

    The output is a plain list of paths (`retinadet predict --source ranking.txt` reads it; so does the review
    page when it sits in the review folder); ranking.csv beside it holds path, score, uncertainty, diversity."""
    # Imported here: `retinadet --help` loads every command module, and should not load torch.
    from retinadet.detector import load
    from retinadet.engine.rank import rank_images, write_ranking
    from retinadet.errors import ConfigError
    from retinadet.utils.sources import list_sources

    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    paths = list_sources(source)  # a bad source fails before the weights are loaded
    ranked = rank_images(load(weights, device=device), paths, budget, batch=batch, log=click.echo)
    listed, table = write_ranking(ranked, output)
    click.echo(f"ranked {len(paths)} image(s); the {len(ranked)} to label first: {listed} (scores: {table})")
    for r in ranked[:5]:
        click.echo(f"  {r.path}  uncertainty {r.uncertainty:.3f}  diversity {r.diversity:.3f}")
