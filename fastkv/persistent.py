"""fastkv.persistent (placeholder: being written)."""
