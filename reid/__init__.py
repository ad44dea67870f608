"""reid: person re-identification training framework."""

from reid.extractor import FeatureExtractor

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "__version__"]
