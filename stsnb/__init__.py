"""stsnb: distant-metastasis prediction of soft-tissue sarcoma from multimodal images.

Helper package behind the notebook suite: one module per stage of the study (curation,
registration, preprocessing, training, results, Grad-CAM).
"""

__version__ = "0.1.0"
