"""PSNR vs effective MACs per image, from the metrics.json files tools/train_featreg.py writes: the dense
baseline, each level of the multi-sparsity model, and the baseline without a net (bicubic / noisy input).

    python -m edgesparse.frontends.featreg.experiments.plot --sr DENSE SPARSE --denoise DENSE SPARSE \
        -o docs/featreg-psnr-macs.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def test_figures(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["test"]


def panel(axes, title: str, dense_dir: Path, sparse_dir: Path) -> None:
    dense = next(iter(test_figures(dense_dir).values()))
    sparse = test_figures(sparse_dir)
    baseline = "bicubic" if "bicubic" in dense else "noisy"
    axes.scatter(
        [dense["macs_dense"] / 1e9],
        [dense["model"]["psnr"]],
        marker="s",
        color="black",
        label="dense model trained the same way (ReLU gates)",
    )
    levels = sorted(sparse, key=float)
    axes.plot(
        [sparse[level]["macs_effective"] / 1e9 for level in levels],
        [sparse[level]["model"]["psnr"] for level in levels],
        "o-",
        color="tab:blue",
        label="one FeatReg model, per level",
    )
    for level in levels:
        axes.annotate(
            f"{float(level):.0%}",
            (sparse[level]["macs_effective"] / 1e9, sparse[level]["model"]["psnr"]),
            textcoords="offset points",
            xytext=(4, -12),
        )
    axes.axhline(dense[baseline]["psnr"], linestyle="--", color="tab:red", label=baseline)
    axes.set(title=title, xlabel="effective GMACs per test image (mean)", ylabel="PSNR on Y (dB)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sr", nargs=2, type=Path, metavar=("DENSE_DIR", "SPARSE_DIR"), required=True)
    parser.add_argument("--denoise", nargs=2, type=Path, metavar=("DENSE_DIR", "SPARSE_DIR"))
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    panels = [("SR x2", args.sr)] + ([("denoising, sigma 25", args.denoise)] if args.denoise else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, dirs) in zip(axes[0], panels):
        panel(ax, title, *dirs)
    figure.suptitle("FeatReg: PSNR vs effective MACs on the test photos")
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)


if __name__ == "__main__":
    main()
