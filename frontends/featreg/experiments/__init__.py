"""FeatReg experiments, apart from the method: the photo data sets (``data``), PSNR/SSIM (``metrics``),
test-set evaluation through the ``featreg`` pass (``evaluate``), the training run that
``tools/train_featreg.py`` drives (``run``) and the PSNR-vs-MACs plot (``plot``).

Needs the ``train`` extra (scikit-image, matplotlib): ``pip install 'edgesparse[train]'``.
"""
