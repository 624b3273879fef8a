"""Our ResNet-50 RetinaNet preset against torchvision's RetinaNet, side by side in one run.

Both models hold the same weights (torchvision's state_dict mapped into ours), see the same
input size, batch and thread count, and are timed in alternating rounds so drift in machine
load hits both alike. Prints images/s for inference and for a training step (forward,
backward, SGD step), the ratio to torchvision, and peak memory (each measured in a fresh
child process so one model's peak does not mask the other's).

    python benchmarks/bench_model.py --size 512 --batch 2 --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import torch
from torchvision.models import resnet50
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retinadet.model import build_model
from retinadet.utils.device import autocast_context
from retinadet.weights.keymaps import drop_unused_buffers, from_torchvision


def build_torchvision(size: int):
    """torchvision's fine-tuning layout: frozen BN, 3 trainable stages."""
    torch.manual_seed(0)
    body = resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TorchvisionRetinaNet(backbone, num_classes=91, min_size=size, max_size=size)


def build_ours(size: int):
    return build_model("retinanet_resnet50_fpn", overrides={"preprocess.min_size": size, "preprocess.max_size": size})


def build_pair(size: int):
    """Both models, ours holding torchvision's weights."""
    tv, ours = build_torchvision(size), build_ours(size)
    state, _ = from_torchvision(tv.state_dict())
    ours.load_state_dict(drop_unused_buffers(state, ours.state_dict().keys()), strict=True)
    return tv, ours


def make_batch(size: int, batch: int):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[40.0, 60.0, 200.0, 220.0], [250.0, 100.0, 400.0, 380.0], [10.0, 300.0, 90.0, 420.0]])
    labels = torch.tensor([1, 5, 7])
    return images, boxes, labels


class Runner:
    """One model + mode: callables for an inference pass and a training step."""

    def __init__(self, name, model, kind, size, batch, channels_last=False, amp=False):
        self.name, self.model, self.kind, self.amp, self.cl = name, model, kind, amp, channels_last
        self.images, boxes, labels = make_batch(size, batch)
        self.batch = batch
        if kind == "tv":
            self.tv_images = [img.float() / 255 for img in self.images]
            self.tv_targets = [{"boxes": boxes, "labels": labels} for _ in range(batch)]
        else:
            self.targets = {"boxes": boxes.expand(batch, -1, -1).contiguous(), "labels": labels.expand(batch, -1).contiguous()}
            self.sizes = torch.tensor([[size, size]] * batch)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def _input(self):
        x = self.model.normalize(self.images, self.sizes)
        return x.contiguous(memory_format=torch.channels_last) if self.cl else x

    def infer(self):
        self.model.eval()
        with torch.no_grad(), autocast_context(torch.device("cpu"), self.amp):
            if self.kind == "tv":
                return self.model(self.tv_images)
            x = self._input()
            cls, box, anchors, per_level = self.model.forward_raw(x)
            return self.model.postprocess(cls.float(), box.float(), anchors, per_level, self.sizes, x.shape[-2:])

    def train_step(self):
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with autocast_context(torch.device("cpu"), self.amp):
            if self.kind == "tv":
                losses = self.model(self.tv_images, self.tv_targets)
                loss = sum(losses.values())
            else:
                loss = self.model(self._input(), targets=self.targets)["total"]
        loss.backward()
        self.opt.step()


def make_runner(mode, model, size, batch):
    if mode == "tv":
        return Runner("torchvision fp32", model, "tv", size, batch)
    return Runner(f"retinadet {mode}", model, "ours", size, batch, channels_last="cl" in mode, amp="bf16" in mode)


def make_runners(size, batch, modes):
    tv, ours = build_pair(size)
    runners = [make_runner("tv", tv, size, batch)]
    for mode in modes:
        model = ours if mode == "fp32" else build_pair(size)[1]
        runners.append(make_runner(mode, model, size, batch))
    return runners


def _peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM). ru_maxrss would not do: Linux keeps it
    across fork and exec, so every child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_child(args, index, queue):
    """Peak resident memory of a process holding one model, after an inference and after a
    training step (absolute, so it includes the same Python/torch baseline for every model)."""
    torch.set_num_threads(args.threads)
    mode = (["tv"] + list(args.modes))[index]
    model = build_torchvision(args.size) if mode == "tv" else build_ours(args.size)
    runner = make_runner(mode, model, args.size, args.batch)
    runner.infer()
    infer_peak = _peak_rss_mb()
    runner.train_step()
    queue.put((index, infer_peak, _peak_rss_mb()))


def _measure_memory(args) -> list[tuple[float, float]]:
    """(inference, training) peak MB of each model, each in a fresh process."""
    ctx = mp.get_context("spawn")  # fork after OpenMP threads start can deadlock
    out = []
    for i in range(1 + len(args.modes)):
        q = ctx.Queue()
        p = ctx.Process(target=_peak_child, args=(args, i, q))
        p.start()
        _, inf_mb, tr_mb = q.get()
        p.join()
        out.append((inf_mb, tr_mb))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per model (median reported)")
    ap.add_argument("--modes", nargs="+", default=["fp32", "cl", "bf16-cl"],
                    help="our modes: fp32, cl (channels_last), bf16 (autocast), bf16-cl")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory children")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory children, no timing")
    args = ap.parse_args()
    if args.memory_only:
        for mode, (inf_mb, tr_mb) in zip(["tv"] + list(args.modes), _measure_memory(args)):
            print(f"| {mode} | peak RSS MB infer {inf_mb:.0f} | train {tr_mb:.0f} |")
        return
    torch.set_num_threads(args.threads)
    runners = make_runners(args.size, args.batch, args.modes)

    for r in runners:  # warm-up: allocator, oneDNN primitives, anchor caches
        r.infer()
        r.train_step()
    infer_t = {r.name: [] for r in runners}
    train_t = {r.name: [] for r in runners}
    for _ in range(args.rounds):
        for r in runners:
            t0 = time.perf_counter()
            r.infer()
            infer_t[r.name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r.train_step()
            train_t[r.name].append(time.perf_counter() - t0)

    memory = {}
    if not args.no_memory:
        memory = {r.name: m for r, m in zip(runners, _measure_memory(args))}

    base = runners[0].name
    b_inf = args.batch / statistics.median(infer_t[base])
    b_tr = args.batch / statistics.median(train_t[base])
    print(f"\nRetinaNet ResNet-50 FPN, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.rounds} rounds, torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print("| model | inference img/s | ratio | train step img/s | ratio | peak RSS MB (infer / train) |")
    print("|---|---|---|---|---|---|")
    for r in runners:
        inf = args.batch / statistics.median(infer_t[r.name])
        tr = args.batch / statistics.median(train_t[r.name])
        mem = memory.get(r.name)
        mem_s = f"{mem[0]:.0f} / {mem[1]:.0f}" if mem else "-"
        print(f"| {r.name} | {inf:.3f} | {inf / b_inf:.2f}x | {tr:.3f} | {tr / b_tr:.2f}x | {mem_s} |")


if __name__ == "__main__":
    main()
