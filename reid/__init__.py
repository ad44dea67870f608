"""reid: person re-identification training framework."""

from typing import Any

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import reid.config` (or reid.losses...) stays light.
    if name == "FeatureExtractor":
        from reid.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
