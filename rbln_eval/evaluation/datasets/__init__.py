"""Dataset tasks: models that are not language models (classifiers, extractive QA) scored on datasets.

A task is a small YAML file (:mod:`.spec`); a classification task's labels are checked against the model's
(:mod:`.labels`, :mod:`.classify`), a QA task's gold answers read (:mod:`.answers`); metrics come from
scikit-learn and transformers' SQuAD functions (:mod:`.metrics`); :mod:`.run` evaluates a bundle on it and writes results in
lm_eval's results schema, so ``run``, sweeps and reports treat these tasks like lm_eval's.
"""
