"""An Optuna study that many workers share (`hydra.sweeper.storage=postgresql://...`, conf/hparams_search/).

hydra-optuna-sweeper pins optuna<3, and optuna 2.10 sets its schema up in ways SQLAlchemy 2 (required
by the alembic that MLflow uses) no longer commits: its alembic stamp is rolled back, so opening the
storage fails `assert version is not None` (hydra-ecosystem/hydra#2562); and workers that create the
tables at the same moment collide (a duplicate key on PostgreSQL). `set_up` makes the schema in one
committed transaction, tolerating a worker that made it first; optuna then opens the storage as it is.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from optuna.storages._rdb import models  # optuna 2.10 is the last 2.x: its internals no longer change

from pipeline.core.errors import ServiceError

SCHEMA_ATTEMPTS = 3  # a worker that loses the race to create the schema finds it made on the next try
ALEMBIC_DIR = Path(optuna.storages._rdb.__file__).parent / "alembic"


def set_up(url: str) -> None:
    """Optuna's tables in the database at `url` and their alembic stamp, committed, unless there already."""
    engine = sqlalchemy.create_engine(url)
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with engine.begin() as connection:
                    models.BaseModel.metadata.create_all(connection)
                    context = MigrationContext.configure(connection)
                    if context.get_current_revision() is None:
                        context.stamp(ScriptDirectory(str(ALEMBIC_DIR)), "head")
                return
            except sqlalchemy.exc.DBAPIError as err:  # another worker created them meanwhile, or no database
                if attempt == SCHEMA_ATTEMPTS - 1:
                    reason = str(err.orig).strip().splitlines()[0]
                    raise ServiceError(f"Optuna storage {engine.url}: {reason}") from None
    finally:
        engine.dispose()
