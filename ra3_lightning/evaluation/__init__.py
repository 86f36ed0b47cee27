"""Evaluation as a component: pass@k on coding tasks that any :class:`~ra3_lightning.modules.CausalLMModule` runs.

* :class:`Evaluation` — the config group (``model.evaluation`` in YAML): samples per task, temperature, pass@k,
  THINK bias, samples file, completion budget, backend, latent format, reward;
* :class:`PassAtKEvaluation` — the component built from it: samples, scores (sandbox), updates
  :class:`~ra3_lightning.metrics.PassAtK` and the diagnostics (:mod:`ra3_lightning.eval_diagnostics`), writes the
  samples file and logs ``{val,test}/pass@k`` and the diagnostics;
* :class:`SamplesFile` — the per-sample results file (one JSON line per sample, the ranks' parts merged).
"""

from ra3_lightning.evaluation.config import Evaluation
from ra3_lightning.evaluation.pass_at_k import PassAtKEvaluation, completion_token_lists
from ra3_lightning.evaluation.samples import SamplesFile

__all__ = ["Evaluation", "PassAtKEvaluation", "SamplesFile", "completion_token_lists"]
