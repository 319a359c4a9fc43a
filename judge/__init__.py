"""placeholder: being built."""
