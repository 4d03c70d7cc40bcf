"""The torchrun test's worker (tests/test_featreg_distributed.py): a tiny gated net trained with featreg.fit,
as one process or as each of several under torchrun.

    python tests/featreg_ddp_worker.py OUT_DIR STEPS [STOP_AFTER]

Every process draws the same global batches; rank 0 writes OUT_DIR/result.pt (the weights and the
controller's running thresholds). STOP_AFTER: the run is cut off once that many steps are done (a resume
test); the checkpoint every 2 steps stays.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from edgesparse.frontends import distributed, featreg

GLOBAL_BATCH = 4


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return x + self.tail(torch.relu(self.body(torch.relu(self.head(x)))))


class Batches:
    """Seeded (input, target) batches, the same on every process; stops the run after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None):
        self.stop_after, self.drawn = stop_after, 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(0)
        for _ in range(8):
            # fit draws one batch first (the gates' call order), then every step draws one
            if self.stop_after is not None and self.drawn > self.stop_after:
                raise SystemExit(3)
            self.drawn += 1
            target = torch.rand(GLOBAL_BATCH, 3, 16, 16, generator=generator)
            yield target + 0.1 * torch.randn(target.shape, generator=generator), target


def main() -> None:
    out_dir, steps = Path(sys.argv[1]), int(sys.argv[2])
    stop_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = Tiny()
    featreg.attach_gates(net, torch.rand(1, 3, 16, 16))
    featreg.fit(net, Batches(stop_after), levels=(0.5, 0.9), steps=steps, out_dir=out_dir, lr=1e-2,
                checkpoint_every=2, progress=False)  # fmt: skip
    if distributed.is_main():
        state = torch.load(out_dir / "checkpoint.pt", weights_only=False)
        torch.save({"model": net.state_dict(), "controller": state["controller"]}, out_dir / "result.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main()
