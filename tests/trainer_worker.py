"""A tiny real training job on the engine, run as a subprocess by the trainer tests.

usage: python trainer_worker.py RESULTS_DIR EPOCHS [--slow SECONDS_PER_STEP] [--ema DECAY] [--clip NORM]
Runs plain or under torchrun (DDP); each rank writes its final weights to
RESULTS_DIR/rank<r>.safetensors so tests can compare ranks.
"""

import sys
import time

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from taoctl.engine import distributed
from taoctl.engine.resultsdir import prepare_results_dir
from taoctl.engine.trainer import EvalHook, Trainer, seed_everything


def main():
    results_dir, epochs = sys.argv[1], int(sys.argv[2])
    slow, ema_decay, clip = (float(sys.argv[sys.argv.index(flag) + 1]) if flag in sys.argv else None
                             for flag in ("--slow", "--ema", "--clip"))
    info = distributed.init_distributed()
    seed_everything(7)
    data = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    target = (data[:, 0] + data[:, 1] > 0).long()
    dataset = TensorDataset(data, target)
    sampler = distributed.distributed_sampler(dataset, shuffle=True, seed=7)
    loader = DataLoader(dataset, batch_size=16, sampler=sampler, shuffle=sampler is None,
                        generator=torch.Generator() if sampler is None else None)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.99 ** step)

    def loss_fn(net, batch):
        if slow:
            time.sleep(slow)
        x, y = batch
        logits = net(x)
        return nn.functional.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}

    def evaluate(net):
        return {"accuracy": (net(data).argmax(1) == target).float().mean().item()}

    if info.is_main:
        prepare_results_dir(results_dir, "tiny spec", task="test")
    distributed.barrier()
    trainer = Trainer(model, optimizer, loader, loss_fn, results_dir, max_epochs=epochs, model_name="tiny",
                      manifest={"task": "test", "arch": {"name": "tiny"}}, scheduler=scheduler,
                      hooks=[EvalHook(evaluate)], seed=7, progress_interval_s=0.0, ema_decay=ema_decay,
                      clip_grad_norm=clip)
    trained = trainer.train()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, f"{results_dir}/rank{info.rank}.safetensors")
    distributed.cleanup()


if __name__ == "__main__":
    main()
