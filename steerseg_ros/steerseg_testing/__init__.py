"""Fixtures for the tests, benchmarks and demos: tiny random models built in code, the synthetic
RGB-D scene, a random SAM2 checkpoint in Meta's layout. Runtime code never imports this package
(test/unit/test_layout.py checks it), and a robot's build does not install it."""
