"""ADMP's stages on any masked net: the source-only model, the adapted teacher, prune-then-adapt and ADMP on
source -> target images, their target accuracies, and the ONNX exports (see the package docstring).

The images come in a :class:`Data`; the digit domains that fill one from a :class:`Config`'s names are in
``experiments.run`` (the only part that needs the ``train`` extra)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import onnx_ir as ir
import torch
from torch.nn.functional import cross_entropy

from edgesparse.frontends import distributed
from edgesparse.frontends.admp.admm import ADMM, keep_count, project_top_k
from edgesparse.frontends.admp.export import export_model
from edgesparse.frontends.admp.groups import attach_masks, group_magnitudes, mask_groups
from edgesparse.frontends.admp.losses import class_balance, distillation, mmd, pseudo_label
from edgesparse.frontends.admp.masks import kept_channel_ratio, mask_parameters, set_mode
from edgesparse.frontends.admp.model import ResidualCNN
from edgesparse.frontends.admp.training import (
    accuracy,
    augment,
    batches,
    predict,
    recolour,
    recompute_batchnorm,
    run_stage,
)
from edgesparse.frontends.errors import FrontendError

METHODS = ("source_only", "teacher", "prune_then_adapt", "admp")


@dataclasses.dataclass
class Config:
    source: str
    target: str
    model: str = "residual-cnn"  # or resnet18, mobilenet_v2, FILE.py:NAME (backbones.load_net)
    weights: str | None = None  # a state dict for --model (imagenet: MobileNetV2's ImageNet weights)
    ratio: float = 0.6  # fraction of the channels of every mask group pruned
    round_to: int = 1  # every hard mask keeps a multiple of this many channels (attach_masks)
    size: int = 16
    width: int = 32
    source_limit: int | None = 3000
    target_limit: int | None = 3000
    test_fraction: float = 0.3  # of the target images: labelled, held out, used only to score
    epochs: int = 8  # source training, and each adaptation
    admp_epochs: int = 8
    finetune_epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    mask_lr: float = 0.01
    threshold: float = 0.9
    balanced: bool = True  # class-balanced pseudo labels
    # Self-training stops, rolled back one epoch, when the target's class balance (losses.class_balance)
    # falls below this fraction of the source model's (0: never).
    collapse: float = 0.8
    temperature: float = 4.0
    rho: float = 0.5
    admm_every: int = 30  # batches between z/u updates
    mmd: float = 0.0  # weight of the MMD term in every adaptation; 0: off
    distill: bool = True
    soft_mask: bool = True
    hard_mask: bool = True
    adversarial: bool = True
    adabn: bool = True
    augment: bool = True  # random affine jitter of the labelled source images
    # Random colours of the labelled source images (training.recolour): for a grayscale source read by an
    # RGB net (mnist -> mnist-m), so that colour is no cue the source model can lean on.
    recolour: bool = False
    seed: int = 0

    # What the source model and the teacher depend on: runs that agree on these can share them.
    SHARED = (
        "source",
        "target",
        "model",
        "weights",
        "size",
        "width",
        "source_limit",
        "target_limit",
        "test_fraction",
        "epochs",
        "batch_size",
        "lr",
        "threshold",
        "balanced",
        "collapse",
        "mmd",
        "adabn",
        "augment",
        "recolour",
        "seed",
    )

    def __post_init__(self):
        if self.source == self.target:
            raise FrontendError(f"source and target are both {self.source!r}: pick two different domains")
        if not 0 < self.ratio < 1:
            raise FrontendError(
                f"ratio {self.ratio}: the fraction of channels pruned must be between 0 and 1 (exclusive)"
            )
        if not (self.soft_mask or self.hard_mask):
            raise FrontendError("ADMP needs the soft mask, the hard mask or both")
        for name in ("size", "width", "epochs", "batch_size", "admm_every", "round_to"):
            if getattr(self, name) < 1:
                raise FrontendError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("source_limit", "target_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FrontendError(f"{name} must be at least 1 (or unset), not {getattr(self, name)}")
        if not 0 < self.test_fraction < 1:
            raise FrontendError(f"test_fraction {self.test_fraction}: must be between 0 and 1 (exclusive)")

    def as_dict(self, keys: tuple[str, ...] | None = None) -> dict:
        values = dataclasses.asdict(self)
        return {key: values[key] for key in keys} if keys else values


@dataclasses.dataclass
class Data:
    source_x: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor  # unlabelled training images
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: str | torch.device, channels: int = 1) -> Data:
        """On ``device``; grayscale images repeated to ``channels`` channels (for a net that reads RGB)."""

        def images(x: torch.Tensor) -> torch.Tensor:
            return (x.expand(-1, channels, -1, -1).contiguous() if x.shape[1] == 1 < channels else x).to(device)

        return Data(
            images(self.source_x),
            self.source_y.to(device),
            images(self.target_x),
            images(self.test_x),
            self.test_y.to(device),
        )


class Experiment:
    """The stages, checkpointed: source-only and teacher under ``shared_dir``, the pruned ones under ``out_dir``.

    ``net``: the network to start from (masked by :func:`attach_masks`, or masked here when it is not);
    default a fresh :class:`ResidualCNN` (``config.model`` names the net, ``experiments.nets`` builds it).
    ``data``: the images."""

    def __init__(
        self,
        config: Config,
        out_dir: Path,
        shared_dir: Path | None = None,
        *,
        net: torch.nn.Module | None = None,
        data: Data,
        device: str = "cpu",
    ):
        distributed.init_from_env(device)
        if config.mmd and distributed.world_size() > 1:
            raise FrontendError("mmd: the MMD term compares whole batches; it has no data-parallel form here")
        self.config, self.out_dir, self.device = config, Path(out_dir), distributed.local_device(device)
        self.shared_dir = Path(shared_dir) if shared_dir is not None else self.out_dir
        if net is None:
            torch.manual_seed(config.seed)
            net = ResidualCNN(config.width, in_channels=max(data.source_x.shape[1], data.target_x.shape[1]))
        first_conv = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
        if first_conv is None:
            raise FrontendError(f"{type(net).__name__} has no Conv2d: ADMP prunes conv channels")
        if max(data.source_x.shape[1], data.target_x.shape[1]) > first_conv.in_channels:
            raise FrontendError(
                f"{type(net).__name__} reads {first_conv.in_channels} channels; the images have "
                f"{max(data.source_x.shape[1], data.target_x.shape[1])}"
            )
        self.data = data.to(self.device, first_conv.in_channels)
        self.example = torch.zeros(1, *self.data.source_x.shape[1:])
        if not hasattr(net, "admp_masks"):
            attach_masks(net, self.example, round_to=config.round_to)
        if not mask_groups(net):
            raise FrontendError(f"{type(net).__name__} has no channel group that can be masked")
        attached = {mask.round_to for mask in mask_groups(net).values()}
        if config.round_to != 1 and attached != {config.round_to}:
            raise FrontendError(
                f"round_to {config.round_to}: the net's masks were attached with round_to "
                f"{', '.join(map(str, sorted(attached)))}; pass it to attach_masks instead"
            )
        self.net = net.to(self.device)
        _claim(self.out_dir / "config.json", config.as_dict())
        _claim(self.shared_dir / "shared.json", config.as_dict(Config.SHARED))

    # ------------------------------------------------------------------------ one epoch of each kind
    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        masks = {id(parameter) for parameter in mask_parameters(model)}
        weights = [parameter for parameter in model.parameters() if id(parameter) not in masks]
        return torch.optim.Adam(
            [{"params": weights}, {"params": mask_parameters(model), "lr": self.config.mask_lr}], lr=self.config.lr
        )

    def _pairs(self):
        """(source batch, target batch indices) over one pass of the target images: this process's share of
        the global batch (every process draws the same ones, see edgesparse.frontends.distributed)."""
        data, size = self.data, self.config.batch_size
        for target_index in batches(len(data.target_x), size):
            source_index = torch.randint(len(data.source_x), (len(target_index),))
            source_x, source_y = self._source_images(source_index), data.source_y[source_index]
            yield tuple(map(distributed.local_slice, (source_x, source_y, target_index)))

    def _source_images(self, index: torch.Tensor) -> torch.Tensor:
        images = self.data.source_x[index]
        images = augment(images) if self.config.augment else images
        return recolour(images) if self.config.recolour else images

    def _objective(
        self, model: torch.nn.Module, source_x, source_y, target_x, labeller: torch.Tensor, *, distill: bool
    ) -> torch.Tensor:
        """Source CE + pseudo-label CE on the target (+ distillation from ``labeller``) (+ MMD); one
        forward of both batches together, so BatchNorm sees both domains."""
        if self.config.mmd:
            features = model.features(torch.cat([source_x, target_x]))
            logits = model.head(features)
        else:
            logits = model(torch.cat([source_x, target_x]))
        source_logits, target_logits = logits[: len(source_x)], logits[len(source_x) :]
        loss = cross_entropy(source_logits, source_y) + pseudo_label(
            target_logits, labeller, self.config.threshold, self.config.balanced
        )
        if distill:
            loss = loss + distillation(target_logits, labeller, self.config.temperature)
        if self.config.mmd:
            loss = loss + self.config.mmd * mmd(features[: len(source_x)], features[len(source_x) :])
        return loss

    def _source_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        model.train()
        for index in batches(len(self.data.source_x), self.config.batch_size):
            images, labels = self._source_images(index), self.data.source_y[index]
            loss = cross_entropy(model(distributed.local_slice(images)), distributed.local_slice(labels))
            optimizer.zero_grad()
            loss.backward()
            distributed.average_gradients(model.parameters())
            optimizer.step()
        return {"loss": loss.item()}

    def _adapt_epoch(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, guard: CollapseGuard
    ) -> dict[str, float]:
        """Self-training: the model's own predictions at the start of the epoch are its pseudo labels.
        When they have collapsed (``guard``), the model goes back to the previous epoch's and stops."""
        if guard.stopped:
            return {"stopped": 1}
        labeller = predict(model, self.data.target_x)
        balance = class_balance(labeller)
        if guard.reference is None:
            guard.reference = balance
        elif self.config.collapse and balance < self.config.collapse * guard.reference:
            model.load_state_dict(guard.previous)
            guard.stopped = True
            return {"stopped": 1, "balance": balance}
        guard.previous = copy.deepcopy(model.state_dict())
        model.train()
        for source_x, source_y, index in self._pairs():
            loss = self._objective(model, source_x, source_y, self.data.target_x[index], labeller[index], distill=False)
            optimizer.zero_grad()
            loss.backward()
            distributed.average_gradients(model.parameters())
            optimizer.step()
        return {"loss": loss.item(), "balance": balance}

    def _admp_epoch(
        self,
        student: torch.nn.Module,
        teacher_logits: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        admm: ADMM,
        finetune: bool,
    ) -> dict[str, float]:
        config = self.config
        soft, hard = config.soft_mask and not finetune, config.hard_mask or finetune
        masks, weights = mask_parameters(student), optimizer.param_groups[0]["params"]  # see _optimizer
        student.train()
        for step, (source_x, source_y, index) in enumerate(self._pairs()):
            losses = {}
            for mode, on in (("soft", soft), ("hard", hard)):
                if on:
                    set_mode(student, mode)
                    losses[mode] = self._objective(
                        student,
                        source_x,
                        source_y,
                        self.data.target_x[index],
                        teacher_logits[index],
                        distill=config.distill,
                    )
            stacked = torch.stack(list(losses.values()))
            if config.adversarial:
                # The worse mask on the global batch (the processes' mean losses), the same on every process.
                weight_loss = stacked[distributed.all_reduce_mean(stacked.detach().clone()).argmax()]
            else:
                weight_loss = stacked.sum()
            optimizer.zero_grad()
            weight_loss.backward(inputs=weights, retain_graph=soft)
            if soft:
                # The soft mask learns from its own loss, whichever mask the weights are fighting.
                (losses["soft"] + admm.penalty()).backward(inputs=masks)
            distributed.average_gradients(student.parameters())
            optimizer.step()
            if soft and (step + 1) % config.admm_every == 0:
                admm.step()
        if soft:
            admm.step()
        set_mode(student, "hard")
        return {name: loss.item() for name, loss in losses.items()}

    # ------------------------------------------------------------------------ the four models
    def source_only(self) -> torch.nn.Module:
        torch.manual_seed(self.config.seed)
        model = distributed.replicate(distributed.sync_batchnorm(copy.deepcopy(self.net)))
        set_mode(model, "off")
        optimizer = self._optimizer(model)
        run_stage(
            self.shared_dir / "source.ckpt",
            self.config.epochs,
            lambda _: self._source_epoch(model, optimizer),
            {"model": model, "optimizer": optimizer},
        )
        return model.eval()

    def adapt(self, model: torch.nn.Module, path: Path, epochs: int) -> torch.nn.Module:
        """The model adapted to the target, starting from ``model`` (its masks' mode kept)."""
        model = copy.deepcopy(model)
        optimizer = self._optimizer(model)
        guard = CollapseGuard()
        run_stage(
            path,
            epochs,
            lambda _: self._adapt_epoch(model, optimizer, guard),
            {"model": model, "optimizer": optimizer, "guard": guard},
        )
        if self.config.adabn:
            recompute_batchnorm(model, self.data.target_x)
        return model.eval()

    def magnitude_pruned(self, model: torch.nn.Module) -> torch.nn.Module:
        """Each mask group keeps its channels of largest summed |BatchNorm gamma|; masks on, hard."""
        model = copy.deepcopy(model)
        masks = mask_groups(model)
        for group, gamma in group_magnitudes(model).items():
            keep = keep_count(gamma.numel(), self.config.ratio, masks[group].round_to)
            masks[group].hard.copy_(project_top_k(gamma, keep))
        set_mode(model, "hard")
        return model

    def admp(self, teacher: torch.nn.Module) -> torch.nn.Module:
        config = self.config
        student = self.magnitude_pruned(teacher)  # z starts as the magnitude choice
        with torch.no_grad():
            masks = mask_groups(student)
            for group, gamma in group_magnitudes(student).items():
                # Soft masks open (sigmoid 0.5..0.98), ordered like the magnitude criterion.
                masks[group].logits.copy_(4 * gamma / gamma.max().clamp_min(1e-12))
        admm = ADMM(masks, config.ratio, config.rho)
        optimizer = self._optimizer(student)
        teacher_logits = predict(teacher, self.data.target_x)
        epochs = config.admp_epochs + config.finetune_epochs
        run_stage(
            self.out_dir / "admp.ckpt",
            epochs,
            lambda epoch: self._admp_epoch(
                student, teacher_logits, optimizer, admm, finetune=epoch >= config.admp_epochs
            ),
            {"model": student, "optimizer": optimizer, "admm": admm},
        )
        set_mode(student, "hard")
        if config.adabn:
            recompute_batchnorm(student, self.data.target_x)
        return student.eval()

    # ------------------------------------------------------------------------ all of it
    def run(self) -> dict:
        """Trains (or resumes) every model; writes teacher.onnx, student.onnx and metrics.json."""
        torch.manual_seed(self.config.seed)
        source = self.source_only()
        teacher = self.adapt(source, self.shared_dir / "teacher.ckpt", self.config.epochs)
        # As many epochs as ADMP trains its student for.
        pruned_epochs = self.config.admp_epochs + self.config.finetune_epochs
        models = {
            "source_only": source,
            "teacher": teacher,
            "prune_then_adapt": self.adapt(
                self.magnitude_pruned(source), self.out_dir / "prune_then_adapt.ckpt", pruned_epochs
            ),
            "admp": self.admp(teacher),
        }
        data = self.data
        metrics = {
            "target_acc": {name: accuracy(model, data.test_x, data.test_y) for name, model in models.items()},
            "source_train_acc": {name: accuracy(model, data.source_x, data.source_y) for name, model in models.items()},
            "kept_channel_ratio": kept_channel_ratio(mask_groups(models["admp"])),
            "images": {
                "source": len(data.source_x),
                "target_train": len(data.target_x),
                "target_test": len(data.test_x),
            },
            "config": self.config.as_dict(),
        }
        if distributed.is_main():
            ir.save(export_model(teacher, self.example, masked=False), self.out_dir / "teacher.onnx")
            ir.save(export_model(models["admp"], self.example, masked=True), self.out_dir / "student.onnx")
            (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        distributed.barrier()
        self.models = models
        return metrics


class CollapseGuard:
    """The self-training's class balance at the start (``reference``), the weights of the last epoch's start
    (``previous``), and whether it stopped; checkpointed with the stage."""

    def __init__(self):
        self.reference: float | None = None
        self.previous: dict | None = None
        self.stopped = False

    def state_dict(self) -> dict:
        return {"reference": self.reference, "previous": self.previous, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.reference, self.previous, self.stopped = state["reference"], state["previous"], state["stopped"]


def _claim(path: Path, settings: dict) -> None:
    """Checkpoints in a directory belong to one configuration: a run with another one is refused (by every
    process, before rank 0 writes the claim)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = json.loads(path.read_text()) if path.exists() else settings
    # A setting added since the run was written: the run had its default.
    defaults = {field.name: field.default for field in dataclasses.fields(Config)}
    if {**{key: defaults.get(key) for key in settings.keys() - stored.keys()}, **stored} != settings:
        raise FrontendError(
            f"{path.parent} holds a run with other settings ({path.name}): use another output directory"
        )
    distributed.barrier()
    if distributed.is_main():
        path.write_text(json.dumps(settings, indent=2) + "\n")
    distributed.barrier()
