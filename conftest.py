# The suite's machinery is the attnsuite package; this loads it as a pytest plugin.
pytest_plugins = ["attnsuite.plugin"]
# pytester drives the suite end to end in the plugin's own tests (tests/test_registry.py, ...).
pytest_plugins.append("pytester")
