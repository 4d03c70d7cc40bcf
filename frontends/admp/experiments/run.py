"""One ADMP experiment on two digit domains: :class:`~edgesparse.frontends.admp.fitting.Experiment` with
its images loaded from the config's domain names (see the package docstring)."""

from __future__ import annotations

from pathlib import Path

import torch

from edgesparse.frontends.admp import fitting
from edgesparse.frontends.admp.experiments.domains import check_domain, load_domain, split
from edgesparse.frontends.admp.experiments.nets import load_net
from edgesparse.frontends.admp.fitting import METHODS, Config
from edgesparse.frontends.errors import FrontendError

__all__ = ["METHODS", "Config", "Data", "Experiment"]


class Data(fitting.Data):
    @classmethod
    def load(cls, config: Config) -> Data:
        check_domain(config.source), check_domain(config.target)
        source = load_domain(config.source, config.size, config.source_limit, config.seed)
        target = load_domain(config.target, config.size, config.target_limit, config.seed)
        if len(target) < 2 * len(set(target.labels.tolist())):
            raise FrontendError(f"target {config.target}: {len(target)} images are too few to split")
        train, test = split(target, config.test_fraction, config.seed)
        tensors = map(torch.from_numpy, (source.images, source.labels, train.images, test.images, test.labels))
        return cls(*tensors)


class Experiment(fitting.Experiment):
    """The images of ``config.source`` and ``config.target`` (loaded before anything is written)."""

    def __init__(self, config: Config, out_dir: Path, shared_dir: Path | None = None, **options):
        options.setdefault("data", None)
        if options["data"] is None:
            options["data"] = Data.load(config)
        if options.get("net") is None and config.model != "residual-cnn":
            torch.manual_seed(config.seed)
            options["net"] = load_net(config.model, int(options["data"].source_y.max()) + 1, config.weights)
        super().__init__(config, out_dir, shared_dir, **options)
