"""The torchrun test's worker (tests/test_admp_distributed.py): a small BatchNorm net pruned with admp.fit, as
one process or as each of several under torchrun.

    python tests/admp_ddp_worker.py OUT_DIR

Every process draws the same global batches; rank 0 writes OUT_DIR/result.pt (every model's state and the
metrics).
"""

import sys
from pathlib import Path

import torch

from edgesparse.frontends import admp, distributed
from edgesparse.frontends.admp.model import ResidualCNN


def quadrant_digits(generator: torch.Generator) -> torch.Tensor:
    """32 noisy 8x8 images, image i bright in quadrant i % 4: classes the nets learn within a few steps, so
    that the pseudo labels spread over several classes."""
    images = 0.5 * torch.rand(32, 1, 8, 8, generator=generator)
    for index in range(32):
        row, column = divmod(index % 4, 2)
        images[index, :, 4 * row : 4 * row + 4, 4 * column : 4 * column + 4] += 0.5
    return images


def main() -> None:
    out_dir = Path(sys.argv[1])
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    source_x, source_y, target_x = quadrant_digits(generator), torch.arange(32) % 4, quadrant_digits(generator)
    torch.manual_seed(0)
    net = ResidualCNN(width=4, classes=4)
    # threshold 0: every pseudo label counts, so the class-balanced weights depend on the whole batch
    result = admp.fit(
        net, source=(source_x, source_y), target=target_x, ratio=0.5, out_dir=out_dir, test=(target_x, source_y),
        epochs=2, admp_epochs=2, finetune_epochs=1, batch_size=8, threshold=0.0, lr=1e-2,
    )  # fmt: skip
    if distributed.is_main():
        states = {name: model.state_dict() for name, model in result.models.items()}
        torch.save({"models": states, "metrics": result.metrics}, out_dir / "result.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main()
