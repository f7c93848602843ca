"""dvc.yaml against the code it runs: the stages in `pipeline.stages` order, each running its own
module and depending on exactly the files of `pipeline/` its entry point imports (derived from the
source by `pipeline.core.codebase`), so that a code change reruns every stage it can affect and no other; the
data stages on exactly the config they read (`pipeline.stages.DATA_INPUTS`)."""

from __future__ import annotations

import pytest
import yaml

from pipeline.core import codebase
from pipeline.core.config import flatten
from pipeline.core.params import PARAMS_FILE, ROOT
from pipeline.stages import CHECK_STAGE, DATA_INPUTS, DATA_STAGES, STAGES, packaging

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_files(stage: str) -> set[str]:
    skip = frozenset() if stage == CHECK_STAGE else frozenset({codebase.VALIDATION})
    modules, _ = codebase.closure(f"pipeline.stages.{stage}", skip=skip)
    if stage == "package":  # the packaged detector ships the inference modules: its bytes depend on them
        modules |= codebase.closure(packaging.ENTRY_MODULE)[0]
    return {file.relative_to(ROOT).as_posix() for file in codebase.files(modules)}


def covered(deps: list[str]) -> set[str]:
    """The pipeline source files a stage's deps name (a folder covers every .py under it)."""
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith(f"{codebase.PACKAGE}/"):
            found = path.rglob("*.py") if path.is_dir() else [path]
            files |= {file.relative_to(ROOT).as_posix() for file in found}
    return files


def test_stages_run_in_the_pipelines_order() -> None:
    assert list(DVC_YAML) == list(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_runs_its_own_module(stage: str) -> None:
    assert DVC_YAML[stage]["cmd"].split()[:3] == ["python", "-m", f"pipeline.stages.{stage}"]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_code_it_imports(stage: str) -> None:
    needed, listed = imported_files(stage), covered(DVC_YAML[stage]["deps"])
    assert not needed - listed, f"dvc.yaml stage {stage} misses deps it imports: {sorted(needed - listed)}"
    assert not listed - needed, (
        f"dvc.yaml stage {stage} lists deps it does not import: {sorted(listed - needed)}"
    )


@pytest.mark.parametrize("stage", DATA_STAGES)
def test_each_data_stage_depends_on_exactly_its_inputs(stage: str) -> None:
    """dvc.yaml's `params` of a data stage are `stages.DATA_INPUTS`, which sweeps share data by."""
    assert sorted(DVC_YAML[stage]["params"]) == sorted(DATA_INPUTS[stage])


def test_only_the_check_stage_depends_on_the_settings_check() -> None:
    """Every stage loads its settings through `pipeline.stages.components` (registered names), but only
    `check` reruns when it changes: the models it imports are no dependency of `download`."""
    assert "pipeline/stages/components.py" in imported_files(CHECK_STAGE)
    assert not {"pipeline/stages/components.py", "pipeline/models/unet.py"} & imported_files("download")
    assert "pipeline/models/unet.py" in imported_files("train")


def test_lazy_imports_and_discovered_models_count() -> None:
    """An import inside a function and a model found by the registry's discovery are dependencies too."""
    modules, _ = codebase.closure("pipeline.stages.check")
    assert "pipeline.core.hardware" in modules  # imported inside entrypoint.stage
    assert "pipeline.stages.components" in modules  # imported inside entrypoint.load_settings
    assert "pipeline.models.unet" in modules  # discovered by the MODELS registry, imported by no one


def test_the_locked_params_still_exist() -> None:
    """dvc.lock records each stage's params; one the config no longer has means a stale lock
    (regenerate it with `dvc repro` and commit it)."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    params = flatten(yaml.safe_load(PARAMS_FILE.read_text()))
    sections = {key.split(".")[0] for key in params}
    for stage, entry in lock.items():
        assert stage in DVC_YAML, f"dvc.lock has a stage dvc.yaml does not: {stage}"
        for key in flatten(entry.get("params", {}).get("params.yaml", {})):
            assert key in params or key in sections, (
                f"dvc.lock stage {stage} locks '{key}', which params.yaml lacks"
            )
