"""napari plugin (``pip install "pdeseg[napari]"``): a dock widget that segments an image layer
with a pdeseg checkpoint, and a reader for pdeseg's outputs. Declared in ``napari.yaml``
(npe2); nothing here is imported unless napari asks for it.
"""
