"""The applications on top of the library: the `streammind` command (`cli`), the streaming runtime,
the benchmark, the quick start and checkpoint conversion."""
