"""FeatReg, the training side: hidden features made sparse along the channel axis at each pixel, one model
serving several sparsity levels, exported for the ``featreg`` pass.

On any net: ``attach_gates(net, example_inputs)`` (``attach``: gates placed in the fx-traced graph), ``fit``
and ``export`` (``api``); data-parallel under torchrun through ``edgesparse.frontends.distributed``.

One module per job: ``gate`` (the threshold gate), ``attach`` (gating a net), ``api`` (fit, export),
``nets`` (EDSR-style SR, DnCNN-style denoiser: ReLU nets, gated by ``attach_gates``),
``regularizer`` (the penalty), ``controller`` (target sparsity -> per-gate thresholds), ``multilevel``
(training), ``data`` (photos, patches), ``metrics`` (PSNR/SSIM on Y), ``export`` (ONNX + levels),
``evaluate`` (test-set figures through the pass), ``plot`` (PSNR vs MACs).

The choices where the paper's exact form is not given, each the standard one:
- gate: ``where(x > t, x, 0)``, its gradient the gate's mask (straight through for the kept features);
  thresholds are set, not learned.
- penalty: squared Hoyer measure of each pixel's channel vector of the (positive part of the) gate inputs,
  scale-invariant (an L1 option exists); weight 0.01 by default.
- thresholds: per gate, the level's quantile of its input with the gates before it set (so every layer
  sits at the level, and the mean sparsity is the level); batch quantiles in training, fixed on held-out
  patches after it.
- multi-sparsity: one level drawn uniformly per batch; the exported model's default thresholds are the
  lowest level's. The committed models were fine-tuned from a dense (ReLU) model this way: from scratch,
  levels trained slower (docs/featreg.md has the measurements, with each other choice's effect).
- SR net: EDSR-baseline plus a bicubic skip of the input (without it the high levels lost the image).
- denoiser: DnCNN whose noise estimate is subtracted from a learned 5x5 smoothing of the input rather
  than from the input (without it, the noise, present at every pixel, needed dense features: 90% lost
  all the denoising).
"""

from edgesparse.frontends.featreg.api import export, fit, set_level
from edgesparse.frontends.featreg.attach import GateReport, attach_gates
from edgesparse.frontends.featreg.gate import ThresholdGate

__all__ = ["GateReport", "ThresholdGate", "attach_gates", "export", "fit", "set_level"]
