"""Linear semantics at inference time (Xu & Zheng): sample, segment, fit few-shot heads, SCS, SIE.

One task per module, on the shared `SemanticModels` (models.py):

    sampling.py   sample + segment, split prepare → run → finish for the batcher (forward-only)
    fewshot.py    fit a few-shot LSE/NSE head (App. D)
    scs.py        semantic-conditional sampling (App. H, Algorithm 3)
    sie.py        semantic image editing (App. G, Algorithm 2) and the colour-space baseline
    optimise.py   the latent optimisation SCS and SIE share
    headstore.py  heads on disk: the user heads' folder and the rules for their names
    pipeline.py   `SemanticsPipeline`, every task on one object

A *predictor* turns an image and its generator features into class logits: a semantic head
(LSE/NSE, reads the features) or the segmenter (reads the pixels). SCS and SIE steer the latent
with the cross-entropy between a predictor's logits and a target mask.
"""

from semgen.pipelines.semantics.fewshot import FewShotSchedule, seeded_init
from semgen.pipelines.semantics.headstore import HeadExists, HeadLimit, HeadStore
from semgen.pipelines.semantics.models import LATENT_SPACES, SEGMENTER, Samples, SemanticModels, StepCallback
from semgen.pipelines.semantics.pipeline import SemanticsPipeline
from semgen.pipelines.semantics.scs import CandidatePool

__all__ = ["CandidatePool", "FewShotSchedule", "HeadExists", "HeadLimit", "HeadStore", "LATENT_SPACES", "SEGMENTER",
           "Samples", "SemanticModels", "SemanticsPipeline", "StepCallback", "seeded_init"]
