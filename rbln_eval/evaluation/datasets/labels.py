"""A dataset's labels matched to a model's, never guessed.

Each dataset label name (after the task's ``label_map``) must name exactly one of the model's ``id2label``
labels, compared without case, spaces, ``_`` or ``-``. ``label_map: by_index`` says the dataset's label i is the
model's label i, for models whose labels carry no names. Anything else stops the run before device work with
one line giving examples of the mismatch and how to map them.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from rbln_eval.errors import ConfigError

BY_INDEX = "by_index"


def normalized(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def model_labels(id2label: Mapping[int, str] | None) -> list[str]:
    """The model's labels in id order."""
    if not id2label:
        raise ConfigError("the model's config has no id2label: its outputs cannot be read as labels")
    return [str(id2label[i]) for i in sorted(int(k) for k in id2label)]


def match_labels(
    task: str, dataset_names: Sequence[str], labels: Sequence[str], label_map: Mapping[str, str] | str | None, bundle: str,
) -> list[int]:
    """The model label id of each dataset label (in the dataset's order)."""
    if label_map == BY_INDEX:
        if len(dataset_names) != len(labels):
            raise ConfigError(
                f"task {task}: label_map by_index needs as many labels as the model's, got {len(dataset_names)} "
                f"for bundle {bundle}'s {len(labels)}"
            )
        return list(range(len(labels)))
    mapping = dict(label_map or {})
    by_name: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_name.setdefault(normalized(label), []).append(index)
    ids: list[int] = []
    missing: list[str] = []
    for name in dataset_names:
        found = by_name.get(normalized(mapping.get(name, name)), [])
        if len(found) == 1:
            ids.append(found[0])
        else:
            missing.append(str(name))
    if missing:
        examples = ", ".join(repr(m) for m in missing[:3])
        theirs = ", ".join(repr(label) for label in labels[:3])
        raise ConfigError(
            f"task {task}: {len(missing)} of its {len(dataset_names)} labels ({examples}…) are not among bundle "
            f"{bundle}'s {len(labels)} labels ({theirs}…): map them with label_map in the task YAML "
            "({dataset label: model label}, or by_index when the model's labels are unnamed)"
        )
    return ids
