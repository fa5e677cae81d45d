"""The command line's technique commands: thin callers of the library, light to import."""
