"""HTTP routes, one file per endpoint family."""
