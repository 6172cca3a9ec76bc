"""Images: real digits and procedural shapes, detectors, the feature network, shipped UNets/VAE.

Imported on demand (``import mmdg_lite.images``), never by ``import mmdg_lite``. Importing it
needs only what ``import mmdg_lite`` loads (torch, numpy, scipy); scikit-learn, Pillow and
diffusers are imported inside the functions that use them.

- ``digits``: ``load_digit_set`` (scikit-learn's real scans at 16 px, a known thick minority)
- ``shapes``: ``make_shapes`` (32 px RGB shapes, exact attributes, captions)
- ``animals``: ``load_animals`` (the optional animal-mnist wheel's 10,000 28 px silhouettes, read
  with an unpickler that allows numpy arrays only)
- ``detectors``: ``detect_thick``, ``detect_shapes`` (deterministic attribute measurements)
- ``features``: ``load_feature_net``, ``image_features`` (the FD/KD feature space; stands in for
  the paper's DINOv2, it is not Inception)
- ``models``: ``load_digits_unet``, ``load_shapes_vae``, ``load_shapes_unet`` (diffusers folders
  in data/images/)
- ``adapters``: ``UNetDenoiser`` (eps = unet(x_t, t).sample for ``mmdg_lite.sample``)
- ``references``: ``load_reference_folder``, ``references_from_tensors``, ``encode_references``,
  ``decode_latents``
"""
from .adapters import UNetDenoiser
from .animals import ANIMAL_CLASSES, AnimalSet, load_animals
from .detectors import ShapeDetection, detect_shapes, detect_speckle, detect_thick, speckle_score, thickness_score
from .digits import DIGIT_STYLES, DigitSet, load_digit_set, thicken
from .features import (FeatureNet, detect_valid_digit, digit_atypicality, image_features, load_feature_net,
                       predict)
from .models import load_digits_unet, load_shapes_unet, load_shapes_vae
from .references import decode_latents, encode_references, load_reference_folder, references_from_tensors
from .shapes import SHAPE_ATTRIBUTES, ShapeSet, caption, draw_shape, make_shapes

__all__ = ["UNetDenoiser", "ANIMAL_CLASSES", "AnimalSet", "load_animals", "ShapeDetection", "detect_shapes",
           "detect_thick", "thickness_score", "detect_speckle", "speckle_score",
           "DIGIT_STYLES", "DigitSet", "load_digit_set", "thicken", "FeatureNet", "image_features",
           "detect_valid_digit", "digit_atypicality",
           "load_feature_net", "predict", "load_digits_unet", "load_shapes_unet", "load_shapes_vae",
           "decode_latents", "encode_references", "load_reference_folder", "references_from_tensors",
           "SHAPE_ATTRIBUTES", "ShapeSet", "caption", "draw_shape", "make_shapes"]
