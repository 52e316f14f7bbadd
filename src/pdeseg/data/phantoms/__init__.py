"""Synthetic data sets written to disk in the real formats' layouts, so that every reader,
the pipeline, training and scoring run end to end without downloading anything:
:mod:`.brats` (BraTS-like brain MRI volumes, and the LGG slice layout), :mod:`.msd`
(Medical Segmentation Decathlon-like MRI and CT volumes) and :mod:`.cells` (microscopy
images in the DSB 2018, ISBI, DRIVE, image-folder and LIVECell layouts). Everything is
deterministic given the seed.
"""
