"""Which epochs validate: --val-every, or the default schedule (every epoch of short runs and of the last third)."""

from retinadet.engine.config import VAL_ALL_EPOCHS, VAL_SPARSE_EVERY, validation_due
from retinadet.utils.files import read_csv


def due(epochs, every=None):
    return [e for e in range(1, epochs + 1) if validation_due(e, epochs, every)]


def test_short_runs_validate_every_epoch_and_long_ones_densely_at_the_end():
    assert due(VAL_ALL_EPOCHS) == list(range(1, VAL_ALL_EPOCHS + 1))
    # 70 epochs: the last 24 (ceil(70 / 3)) each, every 5th before them.
    assert due(70) == [5, 10, 15, 20, 25, 30, 35, 40, 45, *range(47, 71)]
    assert due(16) == [5, 10, *range(11, 17)]
    assert all(e % VAL_SPARSE_EVERY == 0 for e in due(100) if e <= 100 - 34)


def test_val_every_wins_and_the_last_epoch_always_validates():
    assert due(70, every=1) == list(range(1, 71))
    assert due(7, every=3) == [3, 6, 7]
    assert due(70, every=100) == [70]


def test_a_run_records_val_metrics_only_for_the_epochs_it_validated(tiny_data, tmp_path):
    from retinadet.engine.train import train

    res = train(data=str(tiny_data), project=str(tmp_path), epochs=16, batch=8, imgsz=64, workers=0, plots=False,
                progress=False, mosaic=0.0)
    validated = [5, 10, *range(11, 17)]
    header, rows = read_csv(res.save_dir / "results.csv")
    assert [int(r[0]) for r in rows if r[header.index("AP")]] == validated
    assert len(rows) == 16 and all(r[header.index("loss_total")] for r in rows)  # every epoch trained and logged
    log = (res.save_dir / "train.log").read_text().splitlines()
    assert [int(line.split("/")[0].split()[1]) for line in log if line.startswith("epoch ") and "| AP " in line] == validated
