"""Images: real digits and procedural shapes, detectors, the feature network, shipped UNets/VAE.

Imported on demand (``import mmdg_lite.images``), never by ``import mmdg_lite``: it needs
scikit-learn / scipy / diffusers, and the 2-D toys should not pay for them.
"""
from .digits import DIGIT_STYLES, DigitSet, load_digit_set, thicken
from .shapes import SHAPE_ATTRIBUTES, ShapeSet, caption, draw_shape, make_shapes
