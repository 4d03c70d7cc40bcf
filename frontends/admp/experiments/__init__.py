"""ADMP experiments, apart from the method: the digit domains (``domains``) and the staged run with its
baselines that ``tools/train_admp.py`` and ``tools/admp_table.py`` drive (``run``).

Needs the ``train`` extra (scikit-learn, scikit-image, mlxtend): ``pip install 'edgesparse[train]'``.
"""
