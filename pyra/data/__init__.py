"""Image datasets from untrusted zips, folders and the built-in samples, with the limits on untrusted input."""
