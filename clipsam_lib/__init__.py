"""clipsam_lib: the logic behind the ClipSAM replication notebooks.

Modules map to the paper's boxes (see docs/architecture.md):
- ``config``: every switch, profiles as data (``configs/*.yaml``).
- ``data``: dataset indexing, download + sha256, the embedded synthetic benchmark.
- ``modeling``: frozen CLIP and SAM wrappers, UMCI, MMR.
- ``features``: the on-disk feature cache of the frozen backbones.
- ``train``: UMCI training from cached features.
- ``pipeline``: ``ClipSAMPredictor`` and the dataset-level map runner.
- ``metrics`` / ``evaluate``: exact pixel metrics and the evaluation protocols.
- ``tables`` / ``provenance`` / ``runner``: results files and notebook execution.
"""

__version__ = "0.1.0"
