"""The paper's modules: the two frozen backbones, UMCI and MMR (one file each)."""

from collections import Counter

# How many times each backbone was built in this process ("clip", "sam"): the stages share
# one of each per identity (clipsam_lib.workspace); benchmarks and tests read this.
BACKBONE_BUILDS: Counter[str] = Counter()
