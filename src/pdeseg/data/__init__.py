"""Data: where cases come from and how they become training batches.

* :mod:`.readers`: one module per data format's reader;
* :mod:`.phantoms`: synthetic data sets in the real formats' layouts;
* :mod:`.pipeline`: split, preprocess, cache, sample, augment, label geometry;
* top level, shared by all of these: :mod:`.case` (the loaded case), :mod:`.formats` (the
  registry of data formats), :mod:`.detect` (which format a folder holds), :mod:`.files`
  (atomic writes, output folders), and the data-set level tools :mod:`.fingerprint` and
  :mod:`.export_nnunet`.
"""
