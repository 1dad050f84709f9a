# The suite's machinery is the attnsuite package; this loads it as a pytest plugin.
pytest_plugins = ["attnsuite.plugin"]
