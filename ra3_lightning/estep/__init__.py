"""The E-step: a latent policy ``q`` inserts rationale comments into expert code, scored by the frozen ``π``.

One file per role, each depending only on the ones above it:

============== ==========================================================================================
``format``     :class:`LatentFormat`: how a rationale is written; its THINK / continuation / end tokens
``text``       lines of a trace; inserting and stripping rationale lines, byte for byte
``vocab``      each line tokenized on its own; :class:`LatentVocab`, the token facts the rollout needs
``layout``     :class:`TokenLayout`: the annotated token sequences and a teacher-forced pass over them
``engines``    :class:`KVCacheEngine` (one batched KV cache), :class:`WaveEngine`, the naive :class:`ReencodeEngine`
``scoring``    ``P(THINK)``, ``log q(z_t)``, ``log π(a_t | …)``: pure tensor functions
``config``     the knob groups: :class:`LatentRL` (rollout and scoring), :class:`Annotation`
``sampler``    :func:`rollout`: ``q`` walks the line boundaries (or in waves), THINK/ACT, rationales, hindsight
``core``       :class:`EStep`: rollout with ``q`` → scoring with ``π`` → rewards / ELBO, for training and annotation
``annotation`` :func:`annotate`: a trace dataset in, the annotated-trace dataset for the M-step out
============== ==========================================================================================

The Lightning side (training ``q``, the EM loop) lives in :mod:`ra3_lightning.modules.latent_policy`,
:mod:`ra3_lightning.modules.ra3` and the EM scheduler callback; they use this package through the names below.
"""

from ra3_lightning.estep.annotation import ANNOTATION_FEATURES, annotate, annotate_batch
from ra3_lightning.estep.config import Annotation, Choose, LatentRL
from ra3_lightning.estep.core import EStep, Scores
from ra3_lightning.estep.engines import ENGINES, KVCacheEngine, ReencodeEngine, WaveEngine, resolve_engine
from ra3_lightning.estep.format import (
    LatentFormat,
    comment_token_mask,
    newline_token_mask,
    think_token_mask,
    token_texts,
)
from ra3_lightning.estep.layout import (
    TokenLayout,
    forward_logits,
    hindsight_attention_mask,
    layout_inputs,
    plain_layout,
)
from ra3_lightning.estep.sampler import Draws, Rollout, ThinkBias, inverse_cdf, rollout
from ra3_lightning.estep.scoring import (
    ACT_LIKELIHOODS,
    ActLikelihood,
    PolicyTerms,
    act_log_normaliser,
    body_start_positions,
    comment_logp,
    expert_line_logp,
    indent_lengths,
    layout_stats,
    log_act,
    p_think,
    policy_logq,
    score_lines,
)
from ra3_lightning.estep.text import (
    Annotated,
    insert_lines,
    insert_rationales,
    line_indent,
    line_newline,
    split_lines,
    strip_rationales,
)
from ra3_lightning.estep.vocab import EncodedTrace, LatentVocab, encode_line, encode_trace, split_boundaries

__all__ = [
    "ACT_LIKELIHOODS",
    "ANNOTATION_FEATURES",
    "ENGINES",
    "ActLikelihood",
    "Annotated",
    "Annotation",
    "Choose",
    "Draws",
    "EStep",
    "EncodedTrace",
    "KVCacheEngine",
    "LatentFormat",
    "LatentRL",
    "LatentVocab",
    "PolicyTerms",
    "ReencodeEngine",
    "Rollout",
    "Scores",
    "ThinkBias",
    "TokenLayout",
    "WaveEngine",
    "act_log_normaliser",
    "annotate",
    "annotate_batch",
    "body_start_positions",
    "comment_logp",
    "comment_token_mask",
    "encode_line",
    "encode_trace",
    "expert_line_logp",
    "forward_logits",
    "hindsight_attention_mask",
    "indent_lengths",
    "insert_lines",
    "insert_rationales",
    "inverse_cdf",
    "layout_inputs",
    "layout_stats",
    "line_indent",
    "line_newline",
    "log_act",
    "newline_token_mask",
    "p_think",
    "plain_layout",
    "policy_logq",
    "resolve_engine",
    "rollout",
    "score_lines",
    "split_boundaries",
    "split_lines",
    "strip_rationales",
    "think_token_mask",
    "token_texts",
]
