"""Stage `check`: the config validated before any other stage runs.

DVC deletes a stage's outputs before it runs the stage, whether or not the stage then fails, so a value
that the stage refuses (`dvc exp run -S train.epochs=-1`) would still cost the workspace its last model.
Every stage depends on this stage's output, so DVC runs it first (it tracks every param) and stops here
on an invalid config, before it deletes anything else. It depends on the components' code too (the
registered names, model parameters and data sources' keys it checks, `pipeline.stages.components`), so a code
change that leaves params.yaml invalid stops here as well. The output never changes with the config, so a
valid change reruns only the stages that use it.
"""

from __future__ import annotations

from pipeline.core.config import Settings
from pipeline.core.io import write_json
from pipeline.stages.entrypoint import stage


def run(settings: Settings) -> None:
    """`stage` has validated the config before calling this: all that is left is to say so."""
    write_json(settings.paths.stage_reports("check") / "valid.json", {"valid": True})


main = stage(run)

if __name__ == "__main__":
    main()
