"""Unsafe, truncated and foreign files are refused with one clear error, and nothing runs."""

import os
import pickle
import zipfile

import pytest
import torch

from retinadet.errors import CheckpointError
from retinadet.weights import import_weights, load_checkpoint, read_weights
from retinadet.weights.unpickler import restricted_load


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_like_zip(path, payload: bytes):
    """A zip laid out like torch.save's: <name>/data.pkl, byteorder, version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/byteorder", "little")
        zf.writestr("evil/version", "3\n")


@pytest.fixture
def evil_files(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"model": {"w": 1}, "x": _Evil(str(marker))}, protocol=2)
    assert b"system" in data
    zipped = tmp_path / "evil.pt"
    _torch_like_zip(zipped, data)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(data)
    return marker, zipped, plain


@pytest.mark.parametrize("which", ["zipped", "plain"])
def test_crafted_pickle_is_refused_and_never_runs(evil_files, which):
    marker, zipped, plain = evil_files
    path = zipped if which == "zipped" else plain
    with pytest.raises(CheckpointError, match=r"(posix|os)\.system") as exc:
        import_weights(path, "auto", "a")
    assert str(path) in str(exc.value)
    with pytest.raises(CheckpointError, match=r"(posix|os)\.system"):
        restricted_load(path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=str(path)):
        read_weights(path)
    assert not marker.exists(), "the pickle's payload ran"


@pytest.mark.parametrize("target", ["builtins.eval", "subprocess.Popen", "posix.system", "builtins.getattr"])
def test_other_dangerous_globals_are_named(tmp_path, target):
    module, name = target.rsplit(".", 1)
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x01\x00\x00\x001\x85R."
    path = tmp_path / "g.pt"
    _torch_like_zip(path, payload)
    with pytest.raises(CheckpointError, match=target.replace(".", r"\.")):
        restricted_load(path)


def test_truncated_file_gives_one_clear_error(tmp_path, seed_ckpt):
    from retinadet.weights import save_checkpoint

    good = tmp_path / "good.pt"
    save_checkpoint(good, seed_ckpt)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for fn in (load_checkpoint, read_weights):
        with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or corrupt") as exc:
            fn(cut)
        assert "\n" not in str(exc.value)


def test_non_checkpoint_files_give_one_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a") as exc:
        load_checkpoint(text)
    assert "\n" not in str(exc.value)
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a weights file"):
        read_weights(text)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_files_point_to_import(tmp_path, seed_dir):
    for name in ("seed_resnet18_module.pt", "seed_resnet18_state_dict.pt"):
        with pytest.raises(CheckpointError, match="retinadet weights import") as exc:
            load_checkpoint(seed_dir / name)
        assert name in str(exc.value)
    other = tmp_path / "tensors.pt"
    torch.save({"a": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=r"tensors\.pt: an unrecognised weights file"):
        load_checkpoint(other)


def test_unknown_class_in_a_pickled_module_is_refused(tmp_path):
    # Write the GLOBAL by hand: the class cannot be imported back, which is the point.
    payload = b"\x80\x02csomepkg.models\nCustom\n)\x81}b."
    path = tmp_path / "custom.pt"
    _torch_like_zip(path, payload)
    with pytest.raises(CheckpointError, match=r"somepkg\.models\.Custom"):
        read_weights(path)
