"""The `creditsync` command line: the only place that wires core, API and operator."""
