"""The pure core: decisions as functions of data, time always passed in; no I/O."""
