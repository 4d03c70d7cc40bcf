"""ADMP: Adversarial Double Masks based Pruning for unsupervised cross-domain compression.

A CNN trained on a labelled *source* domain is pruned for an unlabelled *target* domain. The exact
equations of the paper are not reproduced here; each piece is the standard form named below, and each
can be switched off (:class:`~edgesparse.frontends.admp.experiments.run.Config`, ``tools/train_admp.py``
flags) so that its effect can be measured.

Teacher (``teacher``)
    The full-size model trained on the source (cross-entropy), then adapted to the target by
    pseudo-label self-training: ``CE(source) + CE(confident own predictions on target)`` (confidence
    above ``threshold``), optionally ``+ lambda * MMD(source features, target features)``
    (multi-bandwidth Gaussian MMD on the pooled features). Frozen afterwards. Guarded against a collapse
    of the self-training (one class taking over the pseudo labels): the pseudo labels are class-balanced
    (``balanced``: each class present weighs the same), and the self-training stops, rolled back one
    epoch, when the class balance of its target predictions (entropy of the arg-max histogram over
    log(classes)) falls below ``collapse`` times the source model's.
Domain divergence (``distill``)
    The teacher-student output difference on target images, ``T^2 * KL(softmax(t/T) || softmax(s/T))``,
    is minimised (knowledge distillation), plus CE on the teacher's confident pseudo labels and CE on
    the labelled source.
Double masks (``soft_mask``, ``hard_mask``)
    Every channel group (:func:`attach_masks`: the groups of strip-channels' coupling analysis; channels
    tied by a residual add or a depthwise conv share one mask) has a *soft* mask
    ``s = sigmoid(theta)`` in (0, 1), learned, and a *hard* mask ``z`` in {0, 1} with exactly
    ``keep = max(1, round(C * (1 - ratio)))`` ones. The student is run under both on every batch;
    ``L_soft`` and ``L_hard`` are the losses above under each mask.
Adversarial (``adversarial``)
    The two masks are the two players the weights must beat: the weights minimise
    ``max(L_soft, L_hard)`` (the worst of the two masks), the soft mask minimises ``L_soft`` plus the
    ADMM term, pulled towards the hard mask. Off: the weights minimise ``L_soft + L_hard``.
ADMM (the {0, 1} constraint)
    ``min L_soft(s) + rho/2 * ||s - z + u||^2`` over s; every ``admm_every`` batches
    ``z = Proj(s + u)`` (the nearest {0, 1} vector with ``keep`` ones: the top-``keep`` entries) and
    ``u = u + s - z`` (scaled dual update). ``z`` starts as the BatchNorm-gamma magnitude choice.
    After ``epochs`` ADMP epochs the student is fine-tuned under ``z`` alone for ``finetune_epochs``.
Target BatchNorm statistics (``adabn``)
    Every adapted model (teacher, prune-then-adapt, ADMP) gets its BatchNorm statistics re-estimated on
    the target training images at the end (AdaBN); the source-only baseline does not.

Baselines: ``source_only`` (source CE only), ``teacher`` (above, unpruned), ``prune_then_adapt``
(the source model pruned to the ratio by BatchNorm-gamma magnitude per channel group, then adapted
like the teacher under that fixed mask, for as many epochs as ADMP trains its student). Labelled source
images get a random affine jitter (``augment``) in every stage. Exported students carry their hard masks as per-channel
``Mul`` constants after each conv (BatchNorm is folded into the conv at export), which the
``strip-channels`` pass removes.

Data-parallel under ``torchrun`` (:mod:`edgesparse.frontends.distributed`): each process trains on its share
of the global batch, with gradients, BatchNorm statistics, balanced pseudo-label counts and the worse mask
taken over the global batch, so that N processes train as one does.
"""

from edgesparse.frontends.admp.api import FitResult, export, fit
from edgesparse.frontends.admp.groups import MaskGroup, attach_masks

__all__ = ["FitResult", "MaskGroup", "attach_masks", "export", "fit"]
