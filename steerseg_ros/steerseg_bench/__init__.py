"""steerseg-bench: every benchmark of the package, its figures for this machine as one table plus
JSON. `cli` holds the command line; `sections` the registry of sections; the other modules one
area each. Runtime code never imports this package."""
