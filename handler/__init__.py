"""gScoreCAM Serve: what is CLIP looking at?

The framework-free core (loading, CAM methods, boxes) and, in ``handler.torchserve_handler``, the thin
TorchServe adapter. Importing this package does no work beyond importing torch and numpy.
"""

from handler.errors import ImageTooLargeError, InputError
from handler.explainer import Explainer, ExplainerConfig, ExplainRequest, Explanation
from handler.loading import ClipModel, load_model

__all__ = [
    "ClipModel",
    "Explainer",
    "ExplainerConfig",
    "ExplainRequest",
    "Explanation",
    "ImageTooLargeError",
    "InputError",
    "load_model",
]
