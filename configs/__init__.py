"""The shipped stage configs (YAML) and DeepSpeed JSONs; installed as the package data `streammind.configs`."""
