"""Instance representations: what a cell network is trained to put out so that touching
nuclei come apart, and how its output becomes instances again. Chosen per run by the
microscopy formats' ``data.format_options.targets`` and stored in every checkpoint's task
spec (``instance_targets``, ``boundary_width``, ``maps``).

=============  ==============================  =========================  ================================
``targets``    classes (softmax / sigmoid)     extra maps (after classes) instances from
=============  ==============================  =========================  ================================
``semantic``   background, cell                none                       connected components
``boundary``   background, interior, boundary  none                       watershed from the interiors
``distance``   background, cell                ``distance``               watershed on the distance peaks
``flows``      background, cell                ``flow_0``, ``flow_1``     following the flows (Cellpose)
=============  ==============================  =========================  ================================

* ``boundary``: the object pixels within ``boundary_width`` pixels of another label are the
  boundary class (:func:`~pdeseg.data.pipeline.label_geometry.boundary_targets`); a cell's
  interior is a marker, flooded over interior + boundary.
* ``distance``: each cell pixel's distance to the nearest pixel outside its cell, divided by
  the cell's largest (:func:`~pdeseg.data.pipeline.instance_maps.distance_targets`), so
  every cell has a peak of 1 and touching cells meet in a valley; markers are the regions
  above :data:`DISTANCE_MARKER`.
* ``flows``: the unit gradient of a heat diffusion from each cell's centre (Stringer et al.,
  Nat. Methods 2021; :func:`~pdeseg.data.pipeline.instance_maps.flow_targets`), trained as
  ``FLOW_SCALE * flow`` with a mean squared error; pixels that follow the flows to the same
  sink form one cell. Map ``flow_k`` is the component along spatial axis ``k`` of the
  slice, so mirroring axis ``k`` negates it (test-time augmentation knows this rule,
  :func:`pdeseg.nn.output.map_flip_signs`).

Targets are made from the *instance image* after augmentation and cropping
(:meth:`Representation.targets`): a 1-pixel boundary or a flow field resampled by nearest
neighbour would be broken, a rotated instance image is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``format_options.targets`` values; every one but ``semantic`` separates touching cells.
TARGETS = ("semantic", "boundary", "distance", "flows")
#: Extra maps per representation (network channels after the class logits).
MAPS = {"semantic": (), "boundary": (), "distance": ("distance",), "flows": ("flow_0", "flow_1")}
#: Class names per representation.
CLASS_NAMES = {"semantic": ("background", "cell"), "boundary": ("background", "interior", "boundary"),
               "distance": ("background", "cell"), "flows": ("background", "cell")}
#: Flows are trained at this scale (unit vectors x 5, as Cellpose does) so that their squared
#: error weighs about as much as the cell probability's cross-entropy.
FLOW_SCALE = 5.0
#: ``distance`` markers: cell pixels whose normalised distance exceeds this.
DISTANCE_MARKER = 0.5


@dataclass(frozen=True)
class Representation:
    """One instance representation (see the module docstring).

    Attributes:
        name: one of :data:`TARGETS`.
        boundary_width: ``boundary`` only: boundary thickness in pixels (>= 1).
        min_size: instances below this many pixels are dropped when decoding.
    """

    name: str
    boundary_width: int = 1
    min_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {self.name!r}")
        if isinstance(self.boundary_width, bool) or not isinstance(self.boundary_width, (int, np.integer)) \
                or self.boundary_width < 1:
            raise ValueError(f"boundary_width must be an integer >= 1 (pixels), got {self.boundary_width!r}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.name]

    @property
    def maps(self) -> tuple[str, ...]:
        """Names of the regression maps the network puts out after its class logits."""
        return MAPS[self.name]

    @classmethod
    def of(cls, spec, objects: bool = False) -> Representation | None:
        """The representation of a task spec; None for a task without objects. A cell
        checkpoint from before representations were stored (``objects`` true, no
        ``instance_targets``) has its rule read off its classes: ``boundary`` when it has a
        boundary class, else ``semantic``."""
        name = getattr(spec, "instance_targets", None)
        if name:
            return cls(name, int(getattr(spec, "boundary_width", 1) or 1))
        if objects:
            return cls("boundary" if "boundary" in list(getattr(spec, "class_names", ())) else "semantic")
        return None

    # ------------------------------------------------------------------ training targets

    def classes(self, instances: np.ndarray) -> np.ndarray:
        """The class target ``(H, W)`` uint8 of an instance image ``(H, W)``."""
        if self.name == "boundary":
            from pdeseg.data.pipeline.label_geometry import boundary_targets

            return boundary_targets(instances, self.boundary_width)
        return (np.asarray(instances) > 0).astype(np.uint8)

    def targets(self, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training targets of an instance image ``(H, W)``: ``(classes (H, W) int64,
        maps (M, H, W) float32)`` with ``M = len(self.maps)`` (``(0, H, W)`` for none)."""
        inst = np.asarray(instances)
        classes = self.classes(inst).astype(np.int64)
        if self.name == "distance":
            from pdeseg.data.pipeline.instance_maps import distance_targets

            maps = distance_targets(inst)[None]
        elif self.name == "flows":
            from pdeseg.data.pipeline.instance_maps import flow_targets

            maps = FLOW_SCALE * flow_targets(inst)
        else:
            maps = np.zeros((0, *inst.shape), np.float32)
        return classes, maps.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ decoding

    def instances(self, cell_probability: np.ndarray, classes: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """Instances ``(H, W)`` int32 (0 background, cells 1..N) of one predicted image.

        Args:
            cell_probability: ``(H, W)`` float, ``1 - P(background)``.
            classes: ``(H, W)`` the predicted class map (after post-processing).
            maps: ``(M, H, W)`` the predicted extra maps (unscaled network output).
        """
        from pdeseg.data.pipeline.label_geometry import MIN_OBJECT_PIXELS, instances_from_boundary_classes, instances_from_mask

        min_size = MIN_OBJECT_PIXELS if self.min_size is None else self.min_size
        cls = np.asarray(classes)
        if self.name == "boundary":
            return instances_from_boundary_classes(cls.astype(np.int64), min_size=min_size)
        foreground = cls > 0
        if self.name == "semantic":
            return instances_from_mask(foreground, min_size=min_size)
        if self.name == "distance":
            from pdeseg.data.pipeline.instance_maps import instances_from_distance

            return instances_from_distance(foreground, np.asarray(maps[0], np.float32), DISTANCE_MARKER, min_size)
        from pdeseg.data.pipeline.instance_maps import instances_from_flows

        return instances_from_flows(foreground, np.asarray(maps, np.float32) / FLOW_SCALE, min_size=min_size)
