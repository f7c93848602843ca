"""The config's names that pick a component, checked against the registries the components register in.

`pipeline.core.config` cannot check them itself: every component imports it for its config section. So the
settings are checked here once they are validated (`pipeline.stages.entrypoint.load_settings`, which every
stage, the `check` stage first, and `python -m pipeline` load them with): a bad name or model parameter
still fails before any stage does work, with one line that names the key and the registered choices.
The `data` section is validated here too, by its registered source's config class.
"""

from __future__ import annotations

from pipeline.core.config import Settings
from pipeline.data.sources import check_data
from pipeline.detection.scoring import AUTO, SCORES
from pipeline.detection.thresholds import THRESHOLD_RULES
from pipeline.models import check_params


def check_components(settings: Settings) -> Settings:
    """`settings`, `data` as its source's config class, if `data` is valid, `score.kind` (or `auto`) and
    `threshold.method` are registered and the model takes `model`'s parameters and
    `preprocess.image_size`; else the ConfigError of the first that is not."""
    data = check_data(settings.data)
    if settings.score.kind != AUTO:
        SCORES.check(settings.score.kind)
    THRESHOLD_RULES.check(settings.threshold.method)
    check_params(settings.model.name, settings.model.params, settings.preprocess.image_size)
    return settings.model_copy(update={"data": data})
