"""The detector as an MLflow model: the code shipped inside it, what MLflow loads and runs when it serves."""
