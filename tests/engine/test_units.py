"""Fast checks of the pieces: splits (never test unless asked; carved val), schedule, param groups, run dirs."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch

from retinadet.engine.datasets import eval_split, train_val_splits
from retinadet.engine.schedule import build_scheduler, lr_factor
from retinadet.engine.train import param_groups
from retinadet.utils.files import increment_run_dir


def test_no_val_split_carves_from_train_not_test(tiny_data, tmp_path):
    ds = tmp_path / "d"
    shutil.copytree(tiny_data / "train", ds / "train")
    shutil.copytree(tiny_data / "test", ds / "test")
    train, val, info = train_val_splits(ds, seed=0)
    assert info["val_split"] == "carved" and len(val) == 1 and len(train) == 7
    assert {int(r.image_id) for r in val.records} == set(info["carved_ids"])
    assert not {str(r.path) for r in val.records} & {str(p) for p in (ds / "test").iterdir()}
    again = train_val_splits(ds, seed=0)[2]
    assert again["carved_ids"] == info["carved_ids"]  # deterministic
    assert [r.image_id for r in eval_split(info).records] == [r.image_id for r in val.records]
    _, test, info_t = train_val_splits(ds, val_split="test")
    assert info_t["val_split"] == "test" and len(test) == 4


def test_val_split_is_val_when_present(tiny_data):
    _, val, info = train_val_splits(tiny_data)
    assert info["val_split"] == "val" and all("valid" in str(r.path) for r in val.records)


def test_schedule_warmup_then_cosine_per_iteration():
    total, warm = 100, 10
    f = [lr_factor(i, total, warm, "cosine", 0.05) for i in range(total)]
    assert f[0] == pytest.approx(0.001) and all(a < b for a, b in zip(f[:warm], f[1:warm + 1]))
    assert f[warm] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[warm:], f[warm + 1:]))
    assert f[-1] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    steps = [lr_factor(i, total, 0, "step") for i in (0, 66, 67, 89)]
    assert steps == pytest.approx([1.0, 1.0, 0.1, 0.01])
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, total, warm)
    for _ in range(warm):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    torch.save(sched.state_dict(), "/dev/null")  # plain data only


def test_no_weight_decay_on_norms_and_biases():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, bn weight and bias, linear bias


def test_optimizer_defaults_follow_the_optimizer():
    from retinadet.engine.config import TrainConfig
    from retinadet.engine.train import build_optimizer

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    adamw = build_optimizer(m, TrainConfig())
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["lr"] == 0.003 and adamw.param_groups[0]["weight_decay"] == 0.05
    sgd = build_optimizer(m, TrainConfig(optimizer="sgd"))
    assert sgd.param_groups[0]["lr"] == 0.01 and sgd.param_groups[0]["weight_decay"] == 1e-4
    assert build_optimizer(m, TrainConfig(optimizer="sgd", weight_decay=0.0)).param_groups[0]["weight_decay"] == 0.0


def test_adamw_uses_the_fused_kernel_and_matches_the_reference_update():
    from retinadet.engine.config import TrainConfig
    from retinadet.engine.train import build_optimizer, param_groups

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ref, start = copy.deepcopy(m), copy.deepcopy(m)
    opt = build_optimizer(m, TrainConfig())
    assert opt.defaults["fused"] is True
    ref_opt = torch.optim.AdamW(param_groups(ref, 0.05), lr=0.003, foreach=False)
    x = torch.randn(2, 3, 8, 8)
    # Both optimizers get the same gradients each step. Recomputing them on each model would compare noise:
    # the conv bias in front of BatchNorm has a true gradient of zero, so its computed gradient is rounding
    # error (~1e-9) that differs between CPU kernels once the weights differ by an ulp, and Adam scales any
    # gradient up to a step of about lr.
    for _ in range(3):
        opt.zero_grad()
        m(x).square().mean().backward()
        for p, q in zip(m.parameters(), ref.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m[0].weight, start[0].weight)  # the weights did move


def test_ema_spans_a_fraction_of_the_run():
    from retinadet.engine.config import TrainConfig
    from retinadet.engine.train_state import ModelEMA

    assert TrainConfig().ema_schedule(900) == (0.99, 100.0)  # the default recipe's 12 x 75 steps
    decay, tau = TrainConfig().ema_schedule(500_000)
    assert decay == 0.9999 and tau == 2000.0
    assert TrainConfig(ema_decay=0.995).ema_schedule(900)[0] == 0.995
    from retinadet.errors import ConfigError

    with pytest.raises(ConfigError, match="ema_decay must be between 0 and 1"):
        TrainConfig.from_dict({"ema_decay": 1.5})
    # Weights that jitter around a fixed point for 900 steps: the short-run schedule averages the jitter
    # away; the long-schedule default is still in its warm-up, where the "average" is the latest weights.
    g = torch.Generator().manual_seed(0)
    for (decay, tau), smoothed in (((0.99, 100.0), True), ((0.9998, 2000.0), False)):
        m = torch.nn.Linear(16, 16, bias=False)
        ema = ModelEMA(m, decay, tau)
        for _ in range(900):
            with torch.no_grad():
                m.weight.copy_(torch.randn(16, 16, generator=g))
            ema.update(m)
        spread = float(ema.module.weight.std())
        assert (spread < 0.3) is smoothed, (decay, spread)


def test_run_dirs_increment(tmp_path):
    a = increment_run_dir(tmp_path, "train")
    b = increment_run_dir(tmp_path, "train")
    c = increment_run_dir(tmp_path, "train", "x")
    d = increment_run_dir(tmp_path, "train", "x", exist_ok=True)
    assert [p.name for p in (a, b, c, d)] == ["exp", "exp2", "x", "x"]


def test_python_api_mirrors_cli():
    import retinadet
    from retinadet.detector import Detector
    from retinadet.engine.train import train

    assert retinadet.train is train and callable(Detector.val)


def test_predict_sources(tiny_data, tmp_path):
    from retinadet.engine.predict import list_sources
    from retinadet.errors import DataError

    imgs = sorted(str(p) for p in (tiny_data / "test").glob("*.jpg"))
    assert list_sources(tiny_data / "test") == imgs
    assert list_sources(str(tiny_data / "test" / "*.jpg")) == imgs
    assert list_sources(imgs[0]) == [imgs[0]]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(imgs[:2]) + "\n")
    assert list_sources(listing) == imgs[:2]
    listing.write_text(str(tmp_path / "gone.jpg"))
    with pytest.raises(DataError, match="do not exist"):
        list_sources(listing)
    with pytest.raises(DataError, match="no images found"):
        list_sources(str(tmp_path / "*.png"))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"clip\.mp4: not a readable video"):
        list_sources(video)


def test_video_round_trip(tmp_path):
    """Frames written by VideoWriter decode back with their size, count, rate and (lossy) content."""
    from retinadet.engine.video import VideoWriter, probe_video, read_video_frames

    frames = [torch.full((3, 48, 64), 40 * i, dtype=torch.uint8) for i in range(5)]
    writer = VideoWriter(tmp_path / "out.mp4", fps=12.0)
    for f in frames:
        writer.write(f)
    assert not (tmp_path / "out.mp4").exists()  # only the temp file until close
    assert writer.close() == tmp_path / "out.mp4"
    assert probe_video(str(tmp_path / "out.mp4")) == pytest.approx(12.0)
    back = list(read_video_frames(str(tmp_path / "out.mp4")))
    assert len(back) == 5 and back[0].shape == (3, 48, 64)
    means = [float(b.float().mean()) for b in back]
    assert all(abs(m - 40 * i) < 8 for i, m in enumerate(means)), means


def test_train_set_overrides_model_fields(tiny_data, tmp_path, cli):
    from retinadet.weights import load_checkpoint

    res = cli(["train", "--data", str(tiny_data), "--epochs", "1", "--batch", "4", "--imgsz", "96", "--workers", "0",
               "--set", "anchors.sizes=[8, 16, 32, 64, 128]", "--set", "head.num_convs=1", "--no-plots",
               "--project", str(tmp_path), "--name", "s"])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "train" / "s" / "weights" / "last.pt")["model_config"]
    assert cfg["anchors"]["sizes"] == [8, 16, 32, 64, 128] and cfg["head"]["num_convs"] == 1
    bad = cli(["train", "--data", str(tiny_data), "--set", "anchors.sizez=[1]", "--project", str(tmp_path)])
    assert bad.exit_code != 0 and "anchors.sizez" in bad.output


def test_cpu_tuning_flushes_denormals_for_the_run_only():
    import sys

    from retinadet.engine import cpu_tuning

    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])  # below float32's smallest normal (1.2e-38)
    assert float(tiny * 1.0) != 0.0 and not cpu_tuning.flushes_denormals()
    try:
        with cpu_tuning.cpu_tuned() as applied:
            assert "denormals flushed to zero" in applied
            assert float(tiny * 1.0) == 0.0 and cpu_tuning.flushes_denormals()
            if sys.platform.startswith("linux"):
                assert "large blocks kept in the heap" in applied
            with cpu_tuning.cpu_tuned() as again:  # a run inside a run: the same settings, and the outer one's
                assert again == applied           # flushing survives the inner one's end
            assert cpu_tuning.flushes_denormals()
        # The run is over: the caller's arithmetic is IEEE again (hypothesis, for one, refuses to run without it).
        assert float(tiny * 1.0) != 0.0
        with cpu_tuning.cpu_tuned(enabled=False) as nothing:
            assert nothing == [] and not cpu_tuning.flushes_denormals()
    finally:
        torch.set_flush_denormal(False)


def test_presets_for_imagenet_backbones_train_everything_from_scratch():
    from retinadet.engine.config import TrainConfig
    from retinadet.engine.train import _model_config

    mcfg, notes, _ = _model_config(TrainConfig(model="retinanet_resnet50_fpn"), 3, None)
    assert (mcfg.backbone.norm, mcfg.backbone.trainable_layers) == ("bn", 5)
    assert notes and "from scratch" in notes[0] and mcfg.preset == "retinanet_resnet50_fpn"
    assert "pass --trainable-layers or --set backbone.norm=" in notes[0]
    kept, _, _ = _model_config(TrainConfig(model="retinanet_resnet50_fpn", trainable_layers=3,
                                        model_overrides={"backbone.norm": "frozen_bn"}), 3, None)
    assert (kept.backbone.norm, kept.backbone.trainable_layers) == ("frozen_bn", 3)
    pretrained, notes, _ = _model_config(TrainConfig(model="retinanet_resnet50_fpn",
                                                  model_overrides={"backbone.weights": "DEFAULT"}), 3, None)
    assert (pretrained.backbone.norm, pretrained.backbone.trainable_layers, notes) == ("frozen_bn", 3, [])
    assert _model_config(TrainConfig(), 3, None)[1] == []


def test_progressive_resizing_epochs_and_sizes(tiny_data):
    import dataclasses

    from retinadet.engine.config import TrainConfig
    from retinadet.engine.loaders import TrainLoader, scaled_preprocess
    from retinadet.errors import ConfigError
    from retinadet.model.presets import get_preset

    assert [TrainConfig(epochs=e, progressive=0.5).small_epochs for e in (1, 2, 3, 13, 15)] == [0, 1, 2, 7, 8]
    assert TrainConfig(epochs=14).small_epochs == 7 and TrainConfig(epochs=14, progressive=0.0).small_epochs == 0
    for bad in ({"progressive": 1.5}, {"progressive_scale": 0.0}):
        with pytest.raises(ConfigError, match="progressive"):
            TrainConfig(**bad).validate()
    pre = get_preset("fast").preprocess
    assert scaled_preprocess(pre, 0.78).fixed_size == 224 and scaled_preprocess(pre, 0.01).fixed_size == 32
    free = dataclasses.replace(pre, fixed_size=None, min_size=800, max_size=1333)
    assert (scaled_preprocess(free, 0.5).min_size, scaled_preprocess(free, 0.5).max_size) == (416, 672)

    pre96 = dataclasses.replace(pre, min_size=96, max_size=96, fixed_size=96)
    loader = TrainLoader(train_val_splits(str(tiny_data), None, 0)[0], pre96, batch_size=4, small=(1, scaled_preprocess(pre96, 0.67)))
    first, second = next(iter(loader.epoch(0))), next(iter(loader.epoch(1)))
    assert first["images"].shape[-2:] == (64, 64) and second["images"].shape[-2:] == (96, 96)
    # Boxes follow the smaller resize: every box fits its (smaller) image.
    valid = first["labels"] >= 0
    assert float(first["boxes"][valid].max()) <= 64 and float(second["boxes"][second["labels"] >= 0].max()) > 64
