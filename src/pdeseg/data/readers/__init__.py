"""Readers, one module per data format: each finds the cases of one kind of data set on disk
(BraTS, MSD, LGG, LIVECell, DSB 2018, ISBI/DRIVE/image folders) and loads a case as a
:class:`~pdeseg.data.case.LoadedCase` (image ``(C, *spatial)``, contiguous classes), checking
what it reads and naming the file when something is wrong. :mod:`.nifti` holds the volume
I/O the volumetric readers share, :mod:`.cells` the image case the 2D microscopy readers
share. Which reader serves a data set is decided in :mod:`pdeseg.data.formats`, not here.
"""
