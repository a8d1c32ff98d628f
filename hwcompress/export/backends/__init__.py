"""One descriptor per deployment backend: its `Capabilities`, importable without its runtime
(the registry is `hwcompress.export.REGISTRY`; the implementation is the module it names)."""
