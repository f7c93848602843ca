"""The team stack (PostgreSQL, S3, a tracking server), shared Optuna studies and sweeps' stores."""
