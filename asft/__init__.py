"""asft: safety-preserving fine-tuning (AsFT) as a production pipeline.

The library never imports prefect; flows in ``flows/`` wrap it.
"""

__version__ = "0.1.0"
