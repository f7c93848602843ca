"""What every other package stands on: the settings, registries, errors, files, the machine."""
