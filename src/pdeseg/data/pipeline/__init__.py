"""From found cases to training batches: :mod:`.prepare` (split and cache for a run),
:mod:`.splits` (patient-level splits), :mod:`.preprocess` (normalisation, resampling),
:mod:`.cache` (the on-disk cache of normalised cases), :mod:`.sampling` (slice, patch and
volume datasets), :mod:`.transforms` (augmentation) and :mod:`.label_geometry` (instances
and boundary targets of label images, and the cells of a prediction).
"""
