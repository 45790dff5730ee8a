"""Dataset tasks: models that are not language models (classifiers, extractive QA) scored on datasets.

A task is a small YAML file (:mod:`.spec`); its labels are checked against the model's (:mod:`.labels`); its
metrics come from scikit-learn (:mod:`.metrics`); :mod:`.run` evaluates a bundle on it and writes results in
lm_eval's results schema, so ``run``, sweeps and reports treat these tasks like lm_eval's.
"""
